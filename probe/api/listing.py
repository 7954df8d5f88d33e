"""What ``probe layers`` lists: the probeable layers of an architecture or a checkpoint's model, with their shapes."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..core.layers import LayerInfo
from ..data import check_available, load_task, parse_spec
from ..data.images.tasks import with_columns
from ..data.spec import input_shape
from ..engine.sources import load_source
from ..models.checkpoint import recorded_info
from ..models.registry import create_model, layer_table


@dataclass
class LayerListing:
    """What ``probe layers`` shows: the architecture, the data the shapes are for, and the probeable layers."""

    arch: str
    data: str | None
    shape: tuple[int, ...]
    layers: list[LayerInfo]


def layer_listing(
    arch: str | None = None,
    *,
    source: str | os.PathLike | None = None,
    data: str | None = None,
    arch_options: dict | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
) -> LayerListing:
    """The probeable layers of a checkpoint's model (``source``) or of ``arch`` (paper-cnn) built for ``data``.

    A checkpoint's own record of its input format wins over ``data`` (default digits); no data is read.
    ``image_column`` / ``label_column`` name the columns of Hugging Face ``data``.
    """
    options = dict(arch_options or {})
    columns = with_columns(None, (data,), image_column, label_column)
    if source is not None:
        model = load_source(source, arch=arch, data=data, **options)
        info = recorded_info(model)
        name = info.arch or arch or type(model).__name__
        if info.in_chans is not None and info.input_size is not None:  # the format the source was built for
            shape: tuple[int, ...] = (info.in_chans, *info.input_size)
            data = info.dataset or data
        else:
            shape = input_shape(data or "digits")
        return LayerListing(name, data, shape, layer_table(model, shape))
    name, spec = arch or "paper-cnn", parse_spec(data or "digits")
    if spec.kind == "builtin":
        shape, classes = input_shape(spec), spec.num_classes
    else:  # images from anywhere: their format is known once read (decoded once into the cache)
        check_available(spec)
        task = load_task(spec, preprocess=columns)
        shape, classes = (task.in_chans, *task.input_size), task.num_classes
    model = create_model(name, num_classes=classes, in_chans=shape[0], input_size=shape[1:], **options)
    return LayerListing(name, str(spec), shape, layer_table(model, shape, arch=name))
