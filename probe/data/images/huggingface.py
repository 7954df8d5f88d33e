"""Hugging Face datasets (``hf:NAME`` from the hub, or a folder written by ``save_to_disk``) into the image cache.

``datasets`` is an optional dependency (the ``[hf]`` extra): without it, :func:`load_hf` raises one line
saying how to install it. Columns: the image column is the one ``datasets.Image`` feature and the label column
the one ``ClassLabel`` feature (class names from it), unless named with ``image_column`` / ``label_column``
(CLI: ``--image-column`` / ``--label-column``; CIFAR-100's ``fine_label`` / ``coarse_label`` need one).
Splits: ``train`` and the first of ``test``, ``validation``, ``valid``, ``val``; a dataset with a train split
only (or a plain ``Dataset``) is split per class, seeded and stratified, as an image folder.

Offline: with ``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE`` set, or when huggingface.co does not answer within
3 seconds, the hub is not contacted and only the local ``datasets`` cache is used: a name not in it is a
DataError at once, never a hang. Cache key: the dataset's own fingerprint (``Dataset._fingerprint``, which
``datasets`` derives from the files and the processing) per split, the columns, the split and the options.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import numpy as np

from ...errors import DataError
from ...util.network import env_flag, reachable
from .cache import ImageData
from .cache import cache_key as _cache_key
from .pairs import load_dataset_pair
from .rules import Progress, stratified_split

__all__ = ["check_hf_available", "hub_reachable", "load_hf"]

INSTALL = "pip install 'quanta-probe[hf]'"
TEST_SPLITS = ("test", "validation", "valid", "val")


def _import_datasets():
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"Hugging Face datasets need the 'datasets' package; {INSTALL} (or pip install datasets)"
        ) from None
    return datasets


def _offline_env() -> bool:
    return env_flag("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def check_hf_available(name: str) -> None:
    """A DataError when the ``datasets`` package is missing; reads nothing (offline names fail fast in load_hf)."""
    _import_datasets()


def hub_reachable(timeout: float = 3.0, host: str = "huggingface.co") -> bool:
    """Whether the Hugging Face hub answers within ``timeout`` seconds."""
    return reachable(host, timeout)


def _load(name: str, datasets: Any, config: str | None) -> Any:
    folder = pathlib.Path(name).expanduser()
    if folder.is_dir():
        try:
            return datasets.load_from_disk(str(folder))
        except Exception as e:
            raise DataError(
                f"{folder} is not a dataset written by save_to_disk ({type(e).__name__}); "
                "give such a folder, an image folder, or hf:NAME"
            ) from e
    if os.sep in name and not name.count("/") == 1:
        raise DataError(f"{name} is neither a folder nor a Hugging Face dataset name; check the path")
    offline = _offline_env() or not hub_reachable()
    saved = _set_offline(datasets, True) if offline else None
    try:
        return datasets.load_dataset(name, config)
    except Exception as e:
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        if offline:
            how = "unset HF_HUB_OFFLINE/HF_DATASETS_OFFLINE and connect once" if _offline_env() else "connect once"
            raise DataError(
                f"hf:{name} is not in the local Hugging Face cache and the hub is offline ({reason}); {how}, "
                "or save it with save_to_disk on a connected machine and pass that folder"
            ) from e
        raise DataError(f"could not load hf:{name} ({reason}); check the name on huggingface.co/datasets") from e
    finally:
        if saved is not None:
            _set_offline(datasets, saved)


def _set_offline(datasets: Any, value: bool) -> bool:
    """Set the offline flags ``datasets`` and ``huggingface_hub`` read at import time; returns the old value."""
    old = bool(getattr(datasets.config, "HF_HUB_OFFLINE", False))
    datasets.config.HF_HUB_OFFLINE = value
    if hasattr(datasets.config, "HF_DATASETS_OFFLINE"):
        datasets.config.HF_DATASETS_OFFLINE = value
    try:
        import huggingface_hub.constants as hub_constants

        hub_constants.HF_HUB_OFFLINE = value
    except ImportError:  # pragma: no cover
        pass
    return old


def _column(features: dict[str, Any], kind: type, given: str | None, what: str, parameter: str) -> str:
    option = f"{parameter}= (CLI: --{parameter.replace('_', '-')})"
    if given is not None:
        if given not in features:
            raise DataError(
                f"the dataset has no column '{given}' (columns: {', '.join(features)}); pass an existing one "
                f"with {option}"
            )
        return given
    found = [name for name, feature in features.items() if isinstance(feature, kind)]
    if len(found) != 1:
        which = f"{len(found)} {what} columns ({', '.join(found)})" if found else f"no {what} column"
        raise DataError(f"the dataset has {which} among {', '.join(features)}; name the one to use with {option}")
    return found[0]


class _Columns:
    """A split as a map-style dataset of (PIL image, int label)."""

    def __init__(self, ds: Any, image: str, label: str, indices: np.ndarray | None, remap: dict | None) -> None:
        self.ds, self.image, self.label, self.indices, self.remap = ds, image, label, indices, remap

    def __len__(self) -> int:
        return len(self.ds) if self.indices is None else len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        row = self.ds[int(i if self.indices is None else self.indices[i])]
        label = row[self.label]
        return row[self.image], (self.remap[label] if self.remap is not None else label)


def load_hf(
    name: str,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    config: str | None = None,
    train_split: str = "train",
    test_split: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    image_size: int | None = None,
    resize: int | None = None,
    interpolation: str | None = None,
    channels: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    workers: int | None = 0,
    progress: Progress | None = None,
) -> ImageData:
    """A Hugging Face dataset (hub name, ``hf:`` prefix allowed, or a ``save_to_disk`` folder), decoded once."""
    datasets = _import_datasets()
    name = name[3:] if name.lower().startswith("hf:") else name
    loaded = _load(name, datasets, config)
    split_meta: dict[str, Any]
    if isinstance(loaded, datasets.DatasetDict):
        if train_split not in loaded:
            raise DataError(f"hf:{name} has no '{train_split}' split (splits: {', '.join(loaded)}); pass train_split=")
        train_ds = loaded[train_split]
        if test_split is None:
            test_split = next((s for s in TEST_SPLITS if s in loaded), None)
        elif test_split not in loaded:
            raise DataError(f"hf:{name} has no '{test_split}' split (splits: {', '.join(loaded)}); pass test_split=")
        test_ds = loaded[test_split] if test_split else None
    else:
        train_ds, test_ds, train_split = loaded, None, "(whole dataset)"
    features = dict(train_ds.features)
    image_col = _column(features, datasets.Image, image_column, "image (datasets.Image)", "image_column")
    label_col = _column(features, datasets.ClassLabel, label_column, "label (ClassLabel)", "label_column")
    label_feature = features[label_col]
    remap = None
    if isinstance(label_feature, datasets.ClassLabel):
        names = [str(n) for n in label_feature.names]
    else:  # a plain int/str column named by the caller: classes are its sorted distinct values
        values = sorted(set(train_ds[label_col]) | (set(test_ds[label_col]) if test_ds is not None else set()))
        names = [str(v) for v in values]
        remap = {v: i for i, v in enumerate(values)}
    if test_ds is not None:
        train = _Columns(train_ds, image_col, label_col, None, remap)
        test = _Columns(test_ds, image_col, label_col, None, remap)
        split_meta = {"layout": "dataset splits", "train": train_split, "test": test_split}
    else:
        labels = np.asarray([remap[v] if remap else v for v in train_ds[label_col]], dtype=np.int64)
        tr, te = stratified_split(labels, test_fraction, seed, names)
        train = _Columns(train_ds, image_col, label_col, tr, remap)
        test = _Columns(train_ds, image_col, label_col, te, remap)
        split_meta = {
            "layout": f"split '{train_split}' per class",
            "seed": int(seed),
            "test_fraction": float(test_fraction),
            "counts": {
                n: {"train": int((labels[tr] == c).sum()), "test": int((labels[te] == c).sum())}
                for c, n in enumerate(names)
            },
        }
    fingerprints = [getattr(train_ds, "_fingerprint", None), getattr(test_ds, "_fingerprint", None)]
    basis = {
        "name": name
        if not pathlib.Path(name).expanduser().is_dir()
        else str(pathlib.Path(name).expanduser().resolve()),
        "fingerprints": fingerprints,
        "columns": [image_col, label_col],
        "split": split_meta,
    }
    if fingerprints[0] is None:
        raise DataError(f"hf:{name} has no fingerprint to key the cache on; update datasets ({INSTALL})")
    return load_dataset_pair(
        train,
        test,
        cache_key="hf-" + _cache_key(basis),
        class_names=names,
        image_size=image_size,
        resize=resize,
        interpolation=interpolation,
        channels=channels,
        cache_dir=cache_dir,
        workers=workers,
        progress=progress,
        meta={
            "source": f"hf:{name}",
            "columns": {"image": image_col, "label": label_col},
            "split": split_meta,
            "cache_key_basis": "the datasets fingerprint of each split + columns + split + options",
        },
    )
