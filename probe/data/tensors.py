"""Datasets as tensors in memory: :func:`load_task` and what it returns.

In the spirit of airbench94 there is no ``DataLoader``: :func:`load_task` returns every split as one
float tensor (move it to the GPU once with :meth:`Split.to`), and :func:`augment_batch` transforms a
whole batch on its device with one affine grid and one flip mask, with no Python loop over samples.

Datasets are named by a small spec language (:func:`parse_spec`): ``digits``, ``cifar10`` and
``cifar100``, optionally restricted to a class subset, e.g. ``digits[0-4]`` or ``cifar100[0-49]``.

* ``digits``: scikit-learn's 1,797 8×8 grey images (shipped with scikit-learn, no download), split
  once, deterministically and stratified, into train and test (20 % of every class).
* ``cifar10`` / ``cifar100``: read from torchvision's folder layout under :func:`resolve_data_dir`,
  with a restricted unpickler that only rebuilds numpy arrays, so a malicious file cannot run code.

Every split is normalised with the per-channel mean/std of the *full* train split of its base dataset,
so two subsets of one dataset (source and target) see identical pixel values for the same image.
Base datasets are cached in memory per (name, folder); :func:`load_task` builds fresh tensors on
every call, so callers own what they get back.
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass, replace

import torch

from .augment import AugmentConfig, default_augment
from .base import BaseData
from .cifar import check_cifar_present, load_cifar
from .digits import load_digits
from .spec import DatasetSpec, parse_spec


@dataclass
class Split:
    """One split: ``x`` float32 (N, C, H, W), normalised; ``y`` int64 (N,) labels in 0..K-1."""

    x: torch.Tensor
    y: torch.Tensor

    def to(self, device: torch.device | str) -> Split:
        """This split with both tensors on ``device``."""
        return Split(self.x.to(device), self.y.to(device))

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class TaskData:
    """A dataset (or class subset) ready for training: both splits plus what a model needs to know."""

    spec: DatasetSpec
    train: Split
    test: Split
    num_classes: int
    in_chans: int
    input_size: tuple[int, int]  # (H, W)
    class_names: list[str]
    augment: AugmentConfig  # the dataset's sensible default

    def to(self, device: torch.device | str) -> TaskData:
        """This task with both splits on ``device``."""
        return replace(self, train=self.train.to(device), test=self.test.to(device))


_CACHE: dict[tuple[str, str], BaseData] = {}


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> pathlib.Path:
    """The data folder: ``data_dir`` if given, else ``$PROBE_DATA``, else ``~/.cache/quanta-probe/data``."""
    chosen = data_dir if data_dir is not None else os.environ.get("PROBE_DATA") or "~/.cache/quanta-probe/data"
    return pathlib.Path(chosen).expanduser().resolve()


def load_task(
    spec: str | DatasetSpec,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
) -> TaskData:
    """Load a dataset or class subset as in-memory tensors (on the CPU; see :meth:`TaskData.to`).

    The base dataset is read once per (name, folder) and cached; every call returns new tensors.
    ``download=True`` fetches a missing CIFAR archive with torchvision (digits needs no download).
    """
    spec = parse_spec(spec)
    if spec.name == "digits":
        key = ("digits", "")
    else:
        key = (spec.name, str(resolve_data_dir(data_dir)))
    base = _CACHE.get(key)
    if base is None:
        base = load_digits() if spec.name == "digits" else load_cifar(spec.name, pathlib.Path(key[1]), download)
        _CACHE[key] = base
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
        augment=default_augment(spec.name),
    )


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
    """Raise the DataError :func:`load_task` would raise for missing data, without reading or fetching anything."""
    spec = parse_spec(spec)
    if spec.name != "digits" and (spec.name, str(resolve_data_dir(data_dir))) not in _CACHE:
        check_cifar_present(spec.name, resolve_data_dir(data_dir), download)
