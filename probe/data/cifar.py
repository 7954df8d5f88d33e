"""CIFAR-10 and CIFAR-100 in torchvision's folder layout, read with an unpickler that only rebuilds numpy arrays."""

from __future__ import annotations

import importlib
import io
import pathlib
import pickle
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DataError
from .base import BaseData, make_base
from .download import download_archive, extract_archive
from .registry import DatasetInfo, get_dataset, register_dataset


@dataclass(frozen=True)
class CifarLayout:
    title: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str
    archive: str
    torchvision_class: str


_CIFAR: dict[str, CifarLayout] = {
    "cifar10": CifarLayout(
        "CIFAR-10",
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        "batches.meta",
        "labels",
        "label_names",
        "cifar-10-python.tar.gz",
        "CIFAR10",
    ),
    "cifar100": CifarLayout(
        "CIFAR-100",
        "cifar-100-python",
        ("train",),
        "test",
        "meta",
        "fine_labels",
        "fine_label_names",
        "cifar-100-python.tar.gz",
        "CIFAR100",
    ),
}

_REFETCH = "delete it and re-download the dataset"

# (module, name) pairs a CIFAR pickle may reference: what numpy arrays need, and how Python 3
# (protocol 2) writes bytes. Python 2 pickles say "__builtin__" for "builtins".
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("builtins", "bytes"),
    ("builtins", "bytearray"),
    ("__builtin__", "bytes"),
    ("__builtin__", "bytearray"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays, lists and dicts, and refuses any other global."""

    def __init__(self, file: io.BufferedIOBase, path: pathlib.Path) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise DataError(
                f"{self._path} refuses to unpickle: it references '{module}.{name}', "
                f"which a CIFAR file never does; {_REFETCH}"
            )
        if module == "__builtin__":
            module = "builtins"
        if module.startswith("numpy.core."):  # numpy >= 2 moved numpy.core to numpy._core
            try:
                return getattr(importlib.import_module("numpy._core." + module[len("numpy.core.") :]), name)
            except ImportError:
                pass
        return getattr(importlib.import_module(module), name)


def _read_pickle(path: pathlib.Path) -> dict[str, Any]:
    """Read one CIFAR pickle safely; keys come back as ``str``."""
    try:
        with path.open("rb") as fh:
            obj = _RestrictedUnpickler(fh, path).load()
    except DataError:
        raise
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}; check the file's permissions") from e
    except Exception as e:  # any garbage: truncated, corrupt, not a pickle at all
        raise DataError(f"{path} is corrupt or truncated ({type(e).__name__}); {_REFETCH}") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path} is not a CIFAR file (expected a dict, got {type(obj).__name__}); {_REFETCH}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _read_batch(path: pathlib.Path, layout: CifarLayout, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, 3, 32, 32) and labels int64 (N,) of one CIFAR batch file."""
    batch = _read_pickle(path)
    data, labels = batch.get("data"), batch.get(layout.label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path} has no uint8 'data' array of shape (N, 3072); {_REFETCH}")
    try:
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path} has no valid '{layout.label_key}' list; {_REFETCH}") from e
    if len(y) != len(data) or (len(y) and (y.min() < 0 or y.max() >= num_classes)):
        raise DataError(
            f"{path} has {len(y)} labels for {len(data)} images or labels outside 0-{num_classes - 1}; {_REFETCH}"
        )
    return data.reshape(-1, 3, 32, 32), y


def load_cifar(name: str, root: pathlib.Path, download: bool) -> BaseData:
    layout = _CIFAR[name]
    folder = root / layout.folder
    if not folder.is_dir():
        if (root / layout.archive).is_file():
            extract_archive(root / layout.archive, root)
        elif download:
            _download(layout, root)
        check_cifar_present(name, root, download=False)
    for file in (*layout.train_files, layout.test_file, layout.meta_file):
        if not (folder / file).is_file():
            raise DataError(
                f"{layout.title} is incomplete: {folder / file} is missing; delete {folder} and pass "
                f"download=True (CLI: --download), or put torchvision's {layout.archive} in {root}"
            )
    n = get_dataset(name).num_classes
    parts = [_read_batch(folder / f, layout, n) for f in layout.train_files]
    test_x, test_y = _read_batch(folder / layout.test_file, layout, n)
    meta = _read_pickle(folder / layout.meta_file)
    names = meta.get(layout.names_key)
    if not isinstance(names, list) or len(names) != n:
        raise DataError(f"{folder / layout.meta_file} has no list of {n} '{layout.names_key}'; {_REFETCH}")
    class_names = tuple(s.decode("latin1") if isinstance(s, bytes) else str(s) for s in names)
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    return make_base(train_x, train_y, test_x, test_y, class_names)


def _download(layout: CifarLayout, root: pathlib.Path) -> None:
    """Fetch and unpack torchvision's archive of ``layout`` (its URL and checksum from torchvision's own class)."""
    from torchvision import datasets

    cls = getattr(datasets, layout.torchvision_class)
    download_archive(
        cls.url,
        root,
        filename=cls.filename,
        md5=cls.tgz_md5,
        title=layout.title,
        offline_hint=f"put torchvision's {layout.archive} (from {cls.url}) or its extracted {layout.folder} folder "
        "there, or set PROBE_DATA",
    )


def check_cifar_present(name: str, root: pathlib.Path, download: bool) -> None:
    """A DataError unless ``name``'s folder or archive is in ``root`` (or ``download`` will fetch it)."""
    layout = _CIFAR[name]
    folder = root / layout.folder
    if folder.is_dir() or (root / layout.archive).is_file() or download:
        return
    raise DataError(
        f"{layout.title} not found: {folder} does not exist; pass download=True (CLI: --download), "
        f"put torchvision's {layout.archive} or its extracted {layout.folder} folder in {root}, "
        "or set PROBE_DATA to the folder that holds it"
    )


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can
    castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin elephant
    flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree
    motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate
    poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake spider
    squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle
    wardrobe whale willow_tree wolf woman worm""".split()
)


def _loader(name: str):
    return lambda root, download: load_cifar(name, root, download)


def _checker(name: str):
    return lambda root, download: check_cifar_present(name, root, download)


for _name, _classes, _pair in (("cifar10", CIFAR10_CLASSES, "cifar100"), ("cifar100", CIFAR100_CLASSES, None)):
    register_dataset(
        DatasetInfo(
            name=_name,
            class_names=_classes,
            input_shape=(3, 32, 32),
            load=_loader(_name),
            check=_checker(_name),
            default_target=_pair,  # the paper's AnB: CIFAR-10 -> CIFAR-100
        )
    )
