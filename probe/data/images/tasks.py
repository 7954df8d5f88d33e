"""Images from anywhere as a :class:`~probe.data.task.TaskData`: the uint8 cache kept as it is, converted per batch.

:func:`load_image_task` reads a folder, ``tv:NAME`` or ``hf:NAME`` spec (or a Dataset pair / ``(x, y)``
tensors, :func:`task_from_images`) once into the memory-mapped uint8 cache and wraps it without a copy: the
splits hold the uint8 arrays with the normalisation, and the trainer converts each batch where it gathers it.
A :class:`Preprocess` says how the images are prepared: the size and filter (``Resize(R)+CenterCrop(S)``,
bilinear unless the model's eval transform names another), the channels
(grey replicated to 3 for a model that takes colour), the mean/std (a pretrained model's own, else the
data's train split) and, for Hugging Face data, the columns to read. Data given already normalised (floats
outside [0, 1], kept in a float32 entry) is used as given: mean 0 and std 1, whatever the Preprocess says. What
was done goes into ``TaskData.meta`` (results.json).
"""

from __future__ import annotations

import os
import pathlib
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ...errors import DataError, SettingsError
from ..augment import NATURAL_AUGMENT
from ..spec import DatasetSpec, parse_spec
from ..task import Split, TaskData
from . import is_hf_folder, load_images
from .cache import ImageData
from .convert import DEFAULT_INTERPOLATION
from .rules import Progress

__all__ = [
    "Preprocess",
    "resized_builtin",
    "check_image_spec",
    "for_spec",
    "image_task_meta",
    "is_hf_data",
    "load_image_task",
    "task_from_images",
    "task_from_python",
    "with_columns",
]


@dataclass(frozen=True)
class Preprocess:
    """How images from anywhere are read and prepared: None everywhere keeps the native size, channels and
    statistics, and finds a Hugging Face dataset's image and label columns by their feature types."""

    image_size: int | None = None  # S of Resize(R) + CenterCrop(S)
    channels: int | None = None  # 3: grey images replicated (a model pretrained on colour)
    mean: tuple[float, ...] | None = None  # in 0..1 units, e.g. ImageNet's; None: the data's own train statistics
    std: tuple[float, ...] | None = None
    origin: str = ""  # where these values come from, e.g. "timm pretrained_cfg of resnet18"
    resize: int | None = None  # R, the shorter side before the crop (a pretrained eval transform's); None: S
    interpolation: str | None = None  # PIL filter of the resize (a pretrained eval transform's); None: bilinear
    image_column: str | None = None  # Hugging Face data only: the image column to read (None: the Image one)
    label_column: str | None = None  # Hugging Face data only: the label column (None: the ClassLabel one)

    @property
    def resize_size(self) -> int | None:
        """R: the shorter side images are resized to before the centre crop (None without a size)."""
        return None if self.image_size is None else (self.resize or self.image_size)

    @property
    def resize_filter(self) -> str | None:
        """The PIL filter name of the resize (None without a size)."""
        return None if self.image_size is None else (self.interpolation or DEFAULT_INTERPOLATION)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "resize": self.resize_size,
            "interpolation": self.resize_filter,
            "channels": self.channels,
            "mean": list(self.mean) if self.mean is not None else None,
            "std": list(self.std) if self.std is not None else None,
            "origin": self.origin,
            **self.columns(),
        }

    def columns(self) -> dict[str, str]:
        """The Hugging Face columns named, as :func:`probe.data.images.huggingface.load_hf` takes them."""
        named = {"image_column": self.image_column, "label_column": self.label_column}
        return {name: value for name, value in named.items() if value is not None}


def is_hf_data(spec: DatasetSpec) -> bool:
    """Whether ``spec`` names Hugging Face data: ``hf:NAME`` or a folder written by ``save_to_disk``."""
    if spec.kind == "folder":
        return is_hf_folder(pathlib.Path(spec.name).expanduser())
    return spec.kind == "hf"


def with_columns(
    pre: Preprocess | None, data: Iterable[Any], image_column: str | None = None, label_column: str | None = None
) -> Preprocess | None:
    """``pre`` with the Hugging Face columns to read; a SettingsError when one is given but no spec among ``data``
    (specs, tasks, data in Python, None) names Hugging Face data."""
    given = {k: v for k, v in {"image_column": image_column, "label_column": label_column}.items() if v is not None}
    if not given:
        return pre
    for name, value in given.items():
        if not isinstance(value, str) or not value.strip():
            raise SettingsError(f"{name}={value!r} is invalid; give a column name, e.g. {name}='coarse_label'")
    specs = [parse_spec(d) for d in data if isinstance(d, (str, DatasetSpec))]
    if not any(is_hf_data(spec) for spec in specs):
        name = next(iter(given))
        what = ", ".join(str(s) for s in specs) or "data given in Python"
        raise SettingsError(
            f"{name}= (--{name.replace('_', '-')}) names a Hugging Face column, but the request has no Hugging Face "
            f"data ({what}); drop it, or give hf:NAME or a save_to_disk folder"
        )
    base = pre or Preprocess()
    return replace(base, image_column=image_column or base.image_column, label_column=label_column or base.label_column)


def for_spec(pre: Preprocess | None, spec: DatasetSpec) -> Preprocess | None:
    """``pre`` as it applies to ``spec``: without the Hugging Face columns for other data, None when empty."""
    if pre is None or is_hf_data(spec):
        return pre
    bare = replace(pre, image_column=None, label_column=None)
    return None if bare == Preprocess() else bare


# In-process memo of tv: and hf: data: (source, data_dir, size, resize, filter, channels) -> ImageData (mapped).
# Folders are looked up in the cache on every call (a stat of each file), so an edited folder is read again.
_IMAGES: dict[tuple, ImageData] = {}


def _source_key(spec: DatasetSpec, data_dir: pathlib.Path) -> str:
    if spec.kind == "folder":
        return str(pathlib.Path(spec.name).expanduser().resolve())
    return spec.name if spec.kind == "hf" else f"{spec.name}@{data_dir}"


def read_images(
    spec: DatasetSpec,
    data_dir: pathlib.Path,
    download: bool = False,
    preprocess: Preprocess | None = None,
    progress: Progress | None = None,
) -> ImageData:
    """The images of ``spec`` (a folder, tv: or hf: spec), read once per process and once into the cache."""
    pre = for_spec(preprocess, spec) or Preprocess()
    columns = pre.columns()
    sizes = (pre.image_size, pre.resize_size, pre.resize_filter, pre.channels)
    key = (_source_key(spec, data_dir), *sizes, *sorted(columns.items()))
    cached = _IMAGES.get(key) if spec.kind != "folder" else None  # a folder is re-checked: its files may change
    if cached is not None:
        return cached
    options: dict[str, Any] = {**_sizes(pre), **columns, "progress": progress}
    if spec.kind == "tv":
        options.update(data_dir=data_dir, download=download)
    images = load_images(spec.name, **options)
    _IMAGES[key] = images
    return images


def _sizes(pre: Preprocess) -> dict[str, Any]:
    """The loaders' size options of ``pre``: image_size S, resize R, interpolation, channels."""
    return {
        "image_size": pre.image_size,
        "resize": pre.resize_size,
        "interpolation": pre.resize_filter,
        "channels": pre.channels,
    }


def load_image_task(
    spec: DatasetSpec,
    data_dir: pathlib.Path,
    download: bool = False,
    preprocess: Preprocess | None = None,
    progress: Progress | None = None,
) -> TaskData:
    """A folder / tv: / hf: spec as a TaskData over the uint8 cache (class subsets checked against the data)."""
    images = read_images(spec, data_dir, download, preprocess, progress)
    return task_from_images(images, spec, for_spec(preprocess, spec))


def _stats(images: ImageData, pre: Preprocess) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(mean, std) per channel in the cache's units, and how they were chosen, for the batch conversion."""
    chans = images.in_chans
    if is_normalised(images):  # (x - 0) / 1: the values as given, bit for bit
        unused = f"; {pre.origin or 'the given'} mean/std not applied" if pre.mean is not None else ""
        return torch.zeros(chans), torch.ones(chans), f"already normalised: used as given{unused}"
    if pre.mean is not None and pre.std is not None:
        mean, std = list(pre.mean), list(pre.std)
        if len(mean) != chans:
            mean, std = [float(np.mean(mean))] * chans, [float(np.mean(std))] * chans
        how = f"mean/std {_fmt(mean)}/{_fmt(std)} ({pre.origin or 'given'})"
        return torch.tensor(mean) * 255.0, torch.tensor(std) * 255.0, how
    stats = images.meta.get("pixel_stats", {}).get("train")
    if stats is None:  # pragma: no cover - every cache entry records its statistics
        raise DataError("the image cache entry records no pixel statistics; delete it and run again")
    std = [s if s > 0 else 1.0 for s in stats["std"]]
    return torch.tensor(stats["mean"]), torch.tensor(std), "the data's own train-split mean/std per channel"


def is_normalised(images: ImageData) -> bool:
    """Whether ``images`` hold already-normalised floats (used as given) rather than uint8 pixels."""
    return images.train_x.dtype != np.uint8


def _fmt(values: list[float]) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def _tensor(array: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a read-only map: it is never written
        return torch.from_numpy(array)


def task_from_images(images: ImageData, spec: DatasetSpec, preprocess: Preprocess | None = None) -> TaskData:
    """Wrap ``images`` (uint8, memory-mapped) as a TaskData for ``spec``'s class subset, without a copy."""
    pre = preprocess or Preprocess()
    n = images.num_classes
    classes = list(range(n)) if spec.classes is None else list(spec.classes)
    for c in classes:
        if c >= n:
            raise DataError(f"class {c} is out of range: {spec.name} has classes 0-{n - 1}; pick classes in that range")
    if len(classes) < 2:
        raise DataError(f"'{spec}' selects a single class; a classification task needs at least 2")
    mean, std, how = _stats(images, pre)
    splits = {}
    for name, x, y in (("train", images.train_x, images.train_y), ("test", images.test_x, images.test_y)):
        labels = torch.from_numpy(np.asarray(y, dtype=np.int64))
        index = None
        if spec.classes is not None:
            remap = torch.full((n,), -1, dtype=torch.int64)
            remap[classes] = torch.arange(len(classes))
            keep = remap[labels] >= 0
            index = torch.nonzero(keep).flatten()
            labels = remap[labels[keep]]
        cache = images.meta.get("cache")
        path = str(pathlib.Path(cache) / f"{name}_x.npy") if cache else None
        splits[name] = Split(_tensor(x), labels, mean.clone(), std.clone(), index, path)
    meta = image_task_meta(images, pre, how)
    return TaskData(
        spec=spec,
        train=splits["train"],
        test=splits["test"],
        num_classes=len(classes),
        in_chans=images.in_chans,
        input_size=images.input_size,
        class_names=[images.class_names[i] for i in classes],
        augment=NATURAL_AUGMENT,
        meta=meta,
    )


def image_task_meta(images: ImageData, pre: Preprocess, normalisation: str) -> dict[str, Any]:
    """What results.json records about images from anywhere: source, split, skipped files, preprocessing."""
    meta = {k: v for k, v in images.meta.items() if k != "pixel_stats"}
    c, h, w = images.train_x.shape[1:]
    size = pre.image_size
    resized = f"Resize({pre.resize_size}, {pre.resize_filter})+CenterCrop({size}) → " if size is not None else ""
    meta["preprocessing"] = {
        **pre.to_dict(),
        "applied": f"{resized}{w}×{h}, {c} channel(s); {normalisation}",
        **({"already_normalised": True} if is_normalised(images) else {}),
    }
    meta["sizes"] = {"train": int(len(images.train_y)), "test": int(len(images.test_y))}
    return meta


def check_image_spec(spec: DatasetSpec, data_dir: str | os.PathLike[str] | pathlib.Path) -> None:
    """The checks of a folder / tv: / hf: spec that need no decoding (missing folder, no classes, ...)."""
    if spec.kind == "folder":
        from .folder import check_image_folder

        folder = pathlib.Path(spec.name).expanduser()
        if not is_hf_folder(folder):
            classes = check_image_folder(folder)
            for c in spec.classes or ():
                if c >= len(classes):
                    raise DataError(
                        f"class {c} is out of range: {spec.name} has classes 0-{len(classes) - 1} "
                        f"({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}); pick classes in that range"
                    )
    elif spec.kind == "tv":
        from .torchvision_sets import check_torchvision_name

        check_torchvision_name(spec.name)
    elif spec.kind == "python":
        raise DataError(f"'{spec.name}' names data given in Python; pass the data itself (a Dataset pair or tensors)")
    elif spec.kind == "hf":
        from .huggingface import check_hf_available

        check_hf_available(spec.name)


def _is_array(obj: Any) -> bool:
    return isinstance(obj, (torch.Tensor, np.ndarray))


def task_from_python(obj: Any, preprocess: Preprocess | None = None) -> TaskData | None:
    """Data handed over in Python as a TaskData (None when ``obj`` is none of these):

    * ``(train_dataset, test_dataset)``: map-style Datasets returning ``(image, int)``;
    * ``((x_train, y_train), (x_test, y_test))``: tensors or arrays;
    * ``(x, y)``: one set of tensors, split per class (seeded, stratified, 20 % to test).
    """
    from .pairs import load_dataset_pair, load_tensors
    from .rules import stratified_split

    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        return None
    pre = preprocess or Preprocess()
    sizes = _sizes(pre)
    first, second = obj
    if _is_array(first) and _is_array(second) and len(np.shape(second)) == 1:
        labels = second.detach().cpu().numpy() if isinstance(second, torch.Tensor) else np.asarray(second)
        if len(first) != len(labels):
            raise DataError(f"the data has {len(first)} images but {len(labels)} labels; give one label per image")
        train_idx, test_idx = stratified_split(labels.astype(np.int64))
        pick = (lambda a, i: a[torch.from_numpy(i)]) if isinstance(first, torch.Tensor) else (lambda a, i: a[i])
        images = load_tensors(
            (pick(first, train_idx), labels[train_idx]), (pick(first, test_idx), labels[test_idx]), **sizes
        )
        images.meta["split"] = {"layout": "(x, y) split per class", "seed": 0, "test_fraction": 0.2}
        name = "python:tensors"
    elif all(isinstance(part, (tuple, list)) for part in obj):
        images, name = load_tensors(first, second, **sizes), "python:tensors"
    elif all(hasattr(part, "__getitem__") and hasattr(part, "__len__") for part in obj):
        images, name = load_dataset_pair(first, second, **sizes), "python:dataset"
    else:
        return None
    return task_from_images(images, DatasetSpec(name), pre)


def resized_builtin(spec: DatasetSpec, key: tuple, base: Any, preprocess: Preprocess) -> TaskData:
    """A built-in dataset (digits, CIFAR) resized to ``preprocess.image_size`` through the uint8 cache, with its
    own statistics (digits keep their 0..16 pixel range) and its default augmentation."""
    from dataclasses import replace

    from ..registry import default_augment
    from .pairs import load_tensors

    own = Preprocess(image_size=preprocess.image_size, channels=preprocess.channels, origin=preprocess.origin)
    memo = ("builtin", *key, own.image_size, own.channels)
    images = _IMAGES.get(memo)
    if images is None:
        images = load_tensors(
            (base.train_x, base.train_y), (base.test_x, base.test_y), class_names=list(base.class_names),
            image_size=own.image_size, channels=own.channels,
        )  # fmt: skip
        images.meta["source"] = spec.name
        _IMAGES[memo] = images
    task = task_from_images(images, spec, own)
    return replace(task, augment=default_augment(spec.name))
