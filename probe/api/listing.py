"""What ``probe layers`` lists: the probeable layers of an architecture or a checkpoint's model, with their shapes."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..core.layers import LayerInfo
from ..data import check_available, load_task, parse_spec
from ..data.images.tasks import with_columns
from ..data.spec import input_shape
from ..engine.sources import load_source
from ..errors import SettingsError
from ..models.checkpoint import recorded_info
from ..models.pretrained import pretrained_input_config
from ..models.registry import create_model, layer_table
from ..settings import DEFAULT_ARCH

DEFAULT_DATA = "digits"  # the embedded data set: its input size is what `probe layers` shows without --data


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
    image_size: int | None = None,
    pretrained: bool = False,
) -> LayerListing:
    """The probeable layers of a checkpoint's model (``source``) or of ``arch`` (paper-cnn) built for ``data``.

    A checkpoint's own record of its input format wins over ``data`` (default digits); no data is read for a
    built-in data set. ``pretrained`` lists ``arch`` at its pretrained weights' own input (3×224×224 for most
    ImageNet models; the weights are not read), ``image_size`` at that square size with the data's channels.
    ``image_column`` / ``label_column`` name the columns of Hugging Face ``data``.
    """
    options = dict(arch_options or {})
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise SettingsError(f"--image-size {image_size} is invalid; give a positive number of pixels, e.g. 224")
    if pretrained and arch is None:
        raise SettingsError("--pretrained needs --arch, e.g. --arch vit_tiny_patch16_224")
    columns = with_columns(None, (data,), image_column, label_column)
    if source is not None:
        model = load_source(source, arch=arch, data=data, **options)
        info = recorded_info(model)
        name = info.arch or arch or type(model).__name__
        if info.in_chans is not None and info.input_size is not None:  # the format the source was built for
            shape: tuple[int, ...] = (info.in_chans, *info.input_size)
            data = info.dataset or data
        else:
            shape = input_shape(data or DEFAULT_DATA)
        return LayerListing(name, data, shape, layer_table(model, shape))
    name = arch or DEFAULT_ARCH
    if pretrained and data is None:  # the weights' own input, no data set involved
        config = pretrained_input_config(name)
        size = image_size or config["image_size"]
        shape, classes, described = (config["channels"], size, size), 1000, f"{name}'s pretrained input"
    else:
        spec = parse_spec(data or DEFAULT_DATA)
        if spec.kind == "builtin":
            shape, classes = input_shape(spec), spec.num_classes
        else:  # images from anywhere: their format is known once read (decoded once into the cache)
            check_available(spec)
            task = load_task(spec, preprocess=columns)
            shape, classes = (task.in_chans, *task.input_size), task.num_classes
        if pretrained or image_size is not None:
            size = image_size or pretrained_input_config(name)["image_size"]
            shape = (shape[0], size, size)
        described = str(spec)
    model = create_model(name, num_classes=classes, in_chans=shape[0], input_size=shape[1:], **options)
    return LayerListing(name, described, shape, layer_table(model, shape, arch=name))
