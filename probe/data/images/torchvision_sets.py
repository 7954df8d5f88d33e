"""torchvision datasets by name (``tv:FashionMNIST``, ``tv:SVHN``, ...) into the image cache
(:mod:`probe.data.images.cache`).

The dataset is built from ``data_dir`` with torchvision's own class (``download=`` passed on, a 10 s socket
timeout), its train and test splits chosen by the dataset's own split argument (:data:`TORCHVISION_SPLITS`),
and iterated once into the cache through :func:`probe.data.images.pairs.load_dataset_pair`. Files missing offline
give one line: pass --download or put the files in DIR. The cache key is the dataset's name, the resolved
``data_dir`` and the path, size and mtime of every file in the dataset's own folder.
"""

from __future__ import annotations

import difflib
import inspect
import os
import pathlib
import shutil
import socket
from typing import Any

from ...errors import DataError
from .cache import ImageData
from .cache import cache_key as _cache_key
from .pairs import load_dataset_pair
from .rules import Progress, check_size

__all__ = ["TORCHVISION_SPLITS", "check_torchvision_name", "load_torchvision"]


# ------------------------------------------------------------------------------ torchvision

# name -> (split argument, train value(s), test value); None: train=True/False. Others are found by signature.
TORCHVISION_SPLITS: dict[str, tuple[str | None, Any, Any]] = {
    "MNIST": (None, True, False),
    "FashionMNIST": (None, True, False),
    "KMNIST": (None, True, False),
    "QMNIST": (None, True, False),
    "USPS": (None, True, False),
    "CIFAR10": (None, True, False),
    "CIFAR100": (None, True, False),
    "SVHN": ("split", "train", "test"),
    "STL10": ("split", "train", "test"),
    "Flowers102": ("split", ("train", "val"), "test"),
    "DTD": ("split", ("train", "val"), "test"),
    "OxfordIIITPet": ("split", "trainval", "test"),
    "FGVCAircraft": ("split", "trainval", "test"),
    "Food101": ("split", "train", "test"),
    "GTSRB": ("split", "train", "test"),
    "StanfordCars": ("split", "train", "test"),
    "Country211": ("split", "train", "test"),
    "RenderedSST2": ("split", "train", "test"),
    "PCAM": ("split", "train", "test"),
}


def _tv_class(name: str):
    from torchvision import datasets as tvd

    names = [
        n for n in dir(tvd) if isinstance(getattr(tvd, n), type) and issubclass(getattr(tvd, n), tvd.VisionDataset)
    ]
    lookup = {n.lower(): n for n in names}
    real = lookup.get(name.lower())
    if real is None:
        close = difflib.get_close_matches(name.lower(), list(lookup), n=1)
        hint = f" (did you mean 'tv:{lookup[close[0]]}'?)" if close else ""
        raise DataError(f"torchvision has no dataset '{name}'{hint}; see torchvision.datasets for the names")
    return real, getattr(tvd, real)


def _tv_splits(real: str, cls: type) -> tuple[str | None, tuple[Any, ...], Any]:
    if real in TORCHVISION_SPLITS:
        arg, tr, te = TORCHVISION_SPLITS[real]
    else:
        params = inspect.signature(cls).parameters
        if "train" in params:
            arg, tr, te = None, True, False
        elif "split" in params:
            arg, tr, te = "split", "train", "test"
        else:
            raise DataError(
                f"tv:{real} has no train/test split argument; load it yourself and use load_dataset_pair "
                "with a split of your choice"
            )
    return arg, (tr if isinstance(tr, tuple) else (tr,)), te


def _tv_files(ds: Any, root: pathlib.Path) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of the files of this dataset (its own folder, else root's files)."""
    folder = None
    for attr in ("raw_folder", "_base_folder", "base_folder"):
        value = getattr(ds, attr, None)
        if isinstance(value, (str, os.PathLike)):
            candidate = pathlib.Path(value) if os.path.isabs(value) else root / value
            if candidate.is_dir():
                folder = candidate
                break
    out = []
    if folder is None:
        entries = [pathlib.Path(e.path) for e in os.scandir(root) if e.is_file()]
    else:
        entries = [pathlib.Path(d) / f for d, _, fs in os.walk(folder) for f in fs]
    for p in sorted(entries):
        st = p.stat()
        out.append((str(p.relative_to(root)), st.st_size, st.st_mtime_ns))
    return out


def check_torchvision_name(name: str) -> None:
    """A DataError when torchvision has no dataset ``name`` (``tv:`` prefix allowed); reads nothing."""
    _tv_class(name[3:] if name.lower().startswith("tv:") else name)


def load_torchvision(
    name: str,
    data_dir: str | os.PathLike[str],
    *,
    download: bool = False,
    image_size: int | None = None,
    resize: int | None = None,
    interpolation: str | None = None,
    channels: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    workers: int | None = 0,
    progress: Progress | None = None,
) -> ImageData:
    """A torchvision dataset by class name (``'FashionMNIST'``, ``'SVHN'``, ...; ``tv:`` prefix allowed) from
    ``data_dir``, its train and test splits per the dataset's own split argument (:data:`TORCHVISION_SPLITS`;
    Flowers102 and DTD train on train+val), decoded once into the cache. ``download=True`` uses torchvision's
    downloader (10 s socket timeout). Cached under the dataset's files' paths, sizes and mtimes."""
    check_size(image_size, channels, resize, interpolation)
    name = name[3:] if name.lower().startswith("tv:") else name
    real, cls = _tv_class(name)
    arg, train_values, test_value = _tv_splits(real, cls)
    root = pathlib.Path(data_dir).expanduser().resolve()
    built: dict[str, list[Any]] = {"train": [], "test": []}
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)
    created = download and not root.exists()
    try:
        if download:
            root.mkdir(parents=True, exist_ok=True)
        for split, values in (("train", train_values), ("test", (test_value,))):
            for value in values:
                kwargs = {"train": value} if arg is None else {arg: value}
                built[split].append(cls(str(root), download=download, **kwargs))
    except DataError:
        raise
    except Exception as e:
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        if created:  # leave nothing behind: the folder was ours, made for this download
            shutil.rmtree(root, ignore_errors=True)
        if download:
            raise DataError(
                f"could not download tv:{real} into {root} ({reason}); without network, put torchvision's files "
                f"for {real} in {root}"
            ) from e
        raise DataError(
            f"tv:{real} is not in {root} ({reason}); pass --download (download=True) or put the files in {root}"
        ) from e
    finally:
        socket.setdefaulttimeout(previous)

    from torch.utils.data import ConcatDataset

    train = built["train"][0] if len(built["train"]) == 1 else ConcatDataset(built["train"])
    test = built["test"][0]
    first = built["train"][0]
    names = getattr(first, "classes", None)
    files = _tv_files(first, root)
    basis = {
        "name": real,
        "root": str(root),
        "files": files,
        "splits": [repr(train_values), repr(test_value)],
        "sizes": [len(train), len(test)],
    }
    return load_dataset_pair(
        train,
        test,
        cache_key=f"tv-{real}-" + _cache_key(basis),
        class_names=[str(c) for c in names] if isinstance(names, (list, tuple)) else None,
        image_size=image_size,
        resize=resize,
        interpolation=interpolation,
        channels=channels,
        cache_dir=cache_dir,
        workers=workers,
        progress=progress,
        meta={
            "source": f"tv:{real}",
            "root": str(root),
            "split": {"argument": arg or "train", "train": list(map(str, train_values)), "test": str(test_value)},
            "cache_key_basis": "dataset name + root + path, size and mtime_ns of its files + options",
        },
    )
