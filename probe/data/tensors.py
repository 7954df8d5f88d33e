"""What a run trains on: :func:`load_task` (a :class:`TaskData` for any spec), :func:`check_available`, the data folder.

In the spirit of airbench94 there is no ``DataLoader``: :func:`load_task` returns a :class:`TaskData` whose
splits the trainer reads a batch at a time (:meth:`Split.take`, :meth:`Split.rows`); augmentation
(:mod:`probe.data.augment`) transforms a whole batch on its device.

Datasets are named by a small spec language (:func:`~probe.data.spec.parse_spec`): a built-in data set of
:mod:`probe.data.registry` (``digits``, ``cifar10``, ``cifar100``, ``fashion``), optionally restricted to a
class subset, e.g. ``digits[0-4]`` or ``cifar100[0-49]``, or images from anywhere (a folder, ``tv:``, ``hf:``).

* **Built-in data sets** are read once per (name, folder) by their module (from under :func:`resolve_data_dir`)
  and kept in memory; each call returns new float32 tensors, normalised with the per-channel mean/std of the
  *full* train split, so two subsets of one data set (source and target) see identical pixel values for the
  same image. With an ``image_size`` other than their own they go through the image cache instead, like
  images from anywhere.
* **Images from anywhere** go to :func:`probe.data.images.tasks.load_image_task`: decoded once into the
  memory-mapped cache on disk and converted per batch (these splits share the mapped cache, not a copy).
"""

from __future__ import annotations

import os
import pathlib
from typing import TYPE_CHECKING

import torch

from ..util.cache import DEFAULT_DATA_DIR
from .base import BaseData
from .registry import get_dataset
from .spec import DatasetSpec, parse_spec
from .task import Split, TaskData

if TYPE_CHECKING:
    from .images.rules import Progress
    from .images.tasks import Preprocess

__all__ = ["Split", "TaskData", "check_available", "load_task", "resolve_data_dir"]


_CACHE: dict[tuple[str, str], BaseData] = {}


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> pathlib.Path:
    """The data folder: ``data_dir`` if given, else ``$PROBE_DATA``, else ``~/.cache/quanta-probe/data``."""
    chosen = data_dir if data_dir is not None else os.environ.get("PROBE_DATA") or DEFAULT_DATA_DIR
    return pathlib.Path(chosen).expanduser().resolve()


def load_task(
    spec: str | DatasetSpec,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    preprocess: Preprocess | None = None,
    progress: Progress | None = None,
) -> TaskData:
    """Load a dataset or class subset as tensors (on the CPU; see :meth:`TaskData.to`).

    Built-in datasets (digits, CIFAR, Fashion-MNIST) are read once per (name, folder), cached in memory and
    normalised up front; every call returns new tensors (with ``preprocess.image_size`` they are resized once into the
    uint8 cache, like images from anywhere, and keep their own statistics). Images from anywhere (a folder,
    ``tv:NAME``, ``hf:NAME``) are decoded once into the uint8 cache on disk and stay uint8 (memory-mapped),
    converted per batch, prepared as ``preprocess`` says (see :mod:`probe.data.images.tasks`).
    ``download=True`` fetches a missing built-in data set or torchvision dataset with torchvision (digits needs
    no download).
    """
    spec = parse_spec(spec)
    if spec.kind != "builtin":
        from .images.tasks import load_image_task

        return load_image_task(spec, resolve_data_dir(data_dir), download, preprocess, progress)
    info = get_dataset(spec.name)
    key = (spec.name, "" if info.embedded else str(resolve_data_dir(data_dir)))
    base = _CACHE.get(key)
    if base is None:
        base = info.load(pathlib.Path(key[1]), download)
        _CACHE[key] = base
    if preprocess is not None and preprocess.image_size is not None and not _is_native(info.input_shape, preprocess):
        from .images.tasks import resized_builtin

        return resized_builtin(spec, key, base, preprocess)
    classes = list(range(len(base.class_names))) if spec.classes is None else list(spec.classes)
    _, c, h, w = base.train_x.shape
    return TaskData(
        spec=spec,
        train=_select(base.train_x, base.train_y, base, spec.classes),
        test=_select(base.test_x, base.test_y, base, spec.classes),
        num_classes=len(classes),
        in_chans=c,
        input_size=(h, w),
        class_names=[base.class_names[i] for i in classes],
        augment=info.augment,
    )


def _is_native(shape: tuple[int, int, int], preprocess: Preprocess) -> bool:
    """Whether ``preprocess`` asks for the data set's own format (then its images are used as they are)."""
    channels, height, width = shape
    return preprocess.image_size == height == width and preprocess.channels in (None, channels)


def _select(x: torch.Tensor, y: torch.Tensor, base: BaseData, classes: tuple[int, ...] | None) -> Split:
    """The samples of ``classes`` (all if None), normalised, with labels re-indexed in subset order."""
    if classes is not None:
        remap = torch.full((len(base.class_names),), -1, dtype=torch.int64)
        remap[list(classes)] = torch.arange(len(classes))
        keep = remap[y] >= 0
        x, y = x[keep], remap[y[keep]]
    else:
        y = y.clone()
    x = (x.float() - base.mean.view(1, -1, 1, 1)) / base.std.view(1, -1, 1, 1)
    return Split(x.contiguous(), y)


def check_available(
    spec: str | DatasetSpec, data_dir: str | os.PathLike[str] | None = None, download: bool = False
) -> None:
    """Raise the DataError :func:`load_task` would raise for missing data, without reading or fetching anything.

    For images from anywhere: the folder exists with at least 2 non-empty class subfolders (train/ and test/
    alike), the class subset fits, torchvision knows the name, ``datasets`` is installed for ``hf:``.
    """
    spec = parse_spec(spec)
    if spec.kind != "builtin":
        from .images.tasks import check_image_spec

        check_image_spec(spec, resolve_data_dir(data_dir))
        return
    info = get_dataset(spec.name)
    if not info.embedded and (spec.name, str(resolve_data_dir(data_dir))) not in _CACHE:
        info.check(resolve_data_dir(data_dir), download)
