"""Any ``torch.utils.data.Dataset`` pair or ``(x, y)`` tensors, decoded once into the uint8 cache."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from ...errors import DataError
from .cache import ImageData, Part, build_cache, lookup
from .cache import cache_key as _cache_key
from .convert import GREY_MODES, BadImage, are_normalised, as_pil, check_tensor_filter, image_array
from .rules import Progress, check_size, resize_basis, too_many_bad, workers_of

__all__ = ["load_dataset_pair", "load_tensors"]


def _dataset_reader(datasets: dict[str, Any]) -> Callable[[tuple[str, int]], tuple[Any, int]]:
    def read(item: tuple[str, int]) -> tuple[Any, int]:
        split, i = item
        try:
            sample = datasets[split][i]
        except (DataError, BadImage):
            raise
        except Exception as e:
            raise DataError(
                f"reading item {i} of the {split} dataset failed "
                f"({type(e).__name__}: {' '.join(str(e).split())[:160]}); "
                "fix the dataset or its files"
            ) from e
        if not isinstance(sample, (tuple, list)) or len(sample) != 2:
            raise DataError(
                f"the {split} dataset returned {_describe(sample)} for item {i}, not (image, label); "
                "make __getitem__ return (PIL image or tensor, int)"
            )
        image, label = sample
        try:
            label = int(label)
            if label < 0:
                raise ValueError
        except (TypeError, ValueError, RuntimeError):
            raise DataError(
                f"the {split} dataset returned label {_describe(label)} for item {i}; labels must be ints >= 0 "
                "(a 0-dimensional tensor is fine); make __getitem__ return (image, int)"
            ) from None
        return image, label

    return read


def _describe(obj: Any) -> str:
    if isinstance(obj, (tuple, list)):
        return f"a {type(obj).__name__} of {len(obj)} ({', '.join(type(o).__name__ for o in obj[:4])})"
    shape = getattr(obj, "shape", None)
    return f"{type(obj).__name__}" + (f" of shape {tuple(shape)}" if shape is not None else f" {obj!r:.40}")


def _probe_items(read, parts: list[Part], channels: int | None, image_size: int | None, normalised: bool | None):
    """(channels, (H, W), normalised) from up to 16 items spread over the data: grey only if all of them are grey;
    already normalised (``normalised`` None) when their float values say so (:func:`are_normalised`)."""
    items = [it for p in parts for it in p.items]
    picks = sorted({int(i) for i in np.linspace(0, len(items) - 1, num=min(16, len(items)))})
    greys, first, floats, others = [], None, [], []
    for i in picks:
        image, _ = read(items[i])
        try:
            if isinstance(image, Image.Image):
                pil = image
            else:
                arr = image_array(image)
                if arr.dtype.kind == "f":
                    floats.append((items[i], arr))
                    greys.append(arr.ndim == 2)
                    first = first or arr.shape[:2]
                    continue
                pil = as_pil(arr)
        except DataError as e:
            raise DataError(f"item {items[i]}: {e}") from None
        others.append(items[i])
        greys.append(pil.mode in GREY_MODES)
        first = first or (pil.height, pil.width)
    if normalised is None and floats:
        values = np.concatenate([arr.reshape(-1) for _, arr in floats])
        finite = bool(np.isfinite(values).all())
        low, high = (float(values.min()), float(values.max())) if finite else (0.0, 0.0)
        normalised = are_normalised(low, high, finite, "the data")
    if normalised and others:
        where = f"item {floats[0][0]} holds" if floats else "normalised=True says the images are"
        raise DataError(
            f"item {others[0]} is no float image where {where} already-normalised floats; return every image the "
            "same way"
        )
    chans = channels or (1 if all(greys) else 3)
    return chans, ((image_size, image_size) if image_size is not None else first), bool(normalised)


def load_dataset_pair(
    train: Any,
    test: Any,
    *,
    cache_key: str | None = None,
    class_names: Sequence[str] | None = None,
    image_size: int | None = None,
    resize: int | None = None,
    interpolation: str | None = None,
    channels: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    workers: int | None = 0,
    processes: bool = False,
    progress: Progress | None = None,
    meta: dict[str, Any] | None = None,
    normalised: bool | None = None,
) -> ImageData:
    """Any pair of map-style Datasets whose items are ``(PIL image | tensor (C,H,W) | array (H,W,C), int)``.

    A Dataset's content cannot be known without reading it all, so it is cached under ``cache_key``, a name
    you choose for this exact content (change it when the data changes). Without one, the images are decoded
    on every call into an entry that is unlinked once mapped (on Linux and macOS the maps keep it alive while
    in use; ``meta['cache']`` is None): nothing to reuse, nothing left on disk, but also no path for other
    processes, so give a ``cache_key`` when workers must share the data.
    ``class_names`` default: the train dataset's ``classes`` attribute, else '0'..'K-1'.
    Channels and native size are taken from up to 16 items spread over the data (grey only if all are).
    Images are uint8, floats in [0, 1] (``ToTensor``), or floats already normalised (``Normalize``): those are
    kept as given in a float32 entry and no mean/std is applied later (``meta['values']``). ``normalised`` None
    decides from the values of those items (:func:`~probe.data.images.convert.are_normalised`: NaN, infinite
    values and 0..255 pixel values stored as floats are a DataError); True or False says it.
    """
    check_size(image_size, channels, resize, interpolation)
    workers = workers_of(workers)
    for split, ds in (("train", train), ("test", test)):
        if not hasattr(ds, "__getitem__") or not hasattr(ds, "__len__"):
            raise DataError(
                f"the {split} data is a {type(ds).__name__}, not a map-style Dataset (with __getitem__ and __len__); "
                "pass torch.utils.data.Dataset objects or use load_tensors for (x, y) tensors"
            )
        if len(ds) == 0:
            raise DataError(f"the {split} dataset is empty; give it at least one item per class")
    read = _dataset_reader({"train": train, "test": test})
    parts = [
        Part("train", [("train", i) for i in range(len(train))]),
        Part("test", [("test", i) for i in range(len(test))]),
    ]
    names = list(class_names) if class_names is not None else None
    if names is None and isinstance(getattr(train, "classes", None), (list, tuple)):
        names = [str(c) for c in train.classes]
    basis = cache_key if cache_key is not None else f"uncached-{uuid.uuid4().hex}"
    key_hex = _cache_key(
        {
            "kind": "dataset",
            "key": basis,
            "image_size": image_size,
            **resize_basis(image_size, resize, interpolation),
            "channels": channels,
            "names": names,
        }
    )
    prefix = re.sub(r"[^A-Za-z0-9]+", "-", str((meta or {}).get("source", "dataset"))).strip("-")[-40:] or "dataset"
    if (cached := lookup(f"{prefix}-{key_hex}", cache_dir)) is not None:
        return cached
    chans, side, normalised = _probe_items(read, parts, channels, image_size, normalised)
    if normalised and image_size is not None:
        check_tensor_filter(interpolation)

    def class_names_of(labels_by_split: dict[str, np.ndarray]) -> list[str]:
        k = max(int(y.max()) + 1 if len(y) else 0 for y in labels_by_split.values())
        if names is not None and k > len(names):
            raise DataError(f"the data has label {k - 1} but {len(names)} class names; give one name per label")
        for split, y in labels_by_split.items():
            if len(y) == 0:
                raise DataError(f"the {split} split has no readable image; check the data")
        return names if names is not None else [str(c) for c in range(k)]

    data_meta = {
        "source": "dataset",
        "cache_key_basis": "the cache_key given" if cache_key else "none (not reused)",
        **(meta or {}),
    }
    data = build_cache(
        f"{prefix}-{key_hex}",
        parts,
        read,
        shape=(chans, *side),
        image_size=image_size,
        resize=resize,
        interpolation=interpolation,
        channels=chans,
        class_names=class_names_of,
        meta=data_meta,
        cache_dir=cache_dir,
        workers=workers,
        processes=processes,
        bad_rule=lambda bad, total: too_many_bad(bad, total, "items"),
        progress=progress,
        normalised=normalised,
    )
    if cache_key is None:  # nobody can find this entry again: unlink it (the maps keep the data while in use)
        shutil.rmtree(data.meta["cache"], ignore_errors=True)
        data.meta["cache"] = None
    return data


class _TensorPair:
    def __init__(self, x: Any, y: Any) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.x[i], int(self.y[i])


def load_tensors(
    train: tuple[Any, Any],
    test: tuple[Any, Any],
    *,
    class_names: Sequence[str] | None = None,
    image_size: int | None = None,
    resize: int | None = None,
    interpolation: str | None = None,
    channels: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> ImageData:
    """``(x, y)`` tensors or arrays per split: x (N, C, H, W) (tensor) / (N, H, W, C) (array), uint8, floats in
    [0, 1] or floats already normalised (kept as given, see :func:`load_dataset_pair`; decided from every value),
    y integer labels (N,). Cached under a sha256 of the bytes, so identical data reuses its entry."""
    digest = hashlib.sha256()
    pairs = {}
    floats: list[np.ndarray] = []
    for split, pair in (("train", train), ("test", test)):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise DataError(f"the {split} data must be an (x, y) pair, got {_describe(pair)}; pass (images, labels)")
        x, y = pair
        if len(x) != len(y):
            raise DataError(f"the {split} data has {len(x)} images but {len(y)} labels; give one label per image")
        images, labels = (a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a) for a in (x, y))
        for arr in (images, labels):
            digest.update(f"{split}{arr.dtype}{arr.shape}".encode())
            digest.update(np.ascontiguousarray(arr).tobytes())
        if images.dtype.kind == "f" and images.size:
            floats.append(images)
        pairs[split] = _TensorPair(x, y)
    normalised = False
    if floats:
        finite = all(bool(np.isfinite(values).all()) for values in floats)
        low = min(float(values.min()) for values in floats) if finite else 0.0
        high = max(float(values.max()) for values in floats) if finite else 0.0
        normalised = are_normalised(low, high, finite, "the image tensors")
    return load_dataset_pair(
        pairs["train"],
        pairs["test"],
        cache_key="tensors-" + digest.hexdigest(),
        class_names=class_names,
        image_size=image_size,
        resize=resize,
        interpolation=interpolation,
        channels=channels,
        cache_dir=cache_dir,
        workers=0,
        progress=progress,
        meta={"source": "tensors", "cache_key_basis": "sha256 of the tensors' bytes"},
        normalised=normalised,
    )
