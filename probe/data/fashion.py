"""Fashion-MNIST (Xiao et al. 2017): 70,000 28×28 grey photographs of clothing, 10 classes, 60,000 / 10,000.

The four IDX files (gzipped or not) are read directly, from the first of these folders that holds them:
``DATA/FashionMNIST/raw`` (torchvision's layout, where ``--download`` puts them), ``DATA/fashion-mnist`` and
``DATA`` itself, DATA being ``--data-dir`` / ``$PROBE_DATA`` (default ``~/.cache/quanta-probe/data``); then
Debian's ``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``). ``download=True``
fetches them with torchvision's own FashionMNIST download when no folder holds them.
"""

from __future__ import annotations

import pathlib
import shutil
import socket

import numpy as np

from ..errors import DataError
from .base import BaseData, make_base
from .idx import read_idx
from .registry import DatasetInfo, register_dataset

FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
# part -> (file name without .gz, IDX dimensions)
FASHION_FILES = {
    "train_images": ("train-images-idx3-ubyte", 3),
    "train_labels": ("train-labels-idx1-ubyte", 1),
    "test_images": ("t10k-images-idx3-ubyte", 3),
    "test_labels": ("t10k-labels-idx1-ubyte", 1),
}
FASHION_SHAPE = (1, 28, 28)  # (C, H, W): what the registry promises before any file is read
DEBIAN_FOLDER = pathlib.Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = "apt-get install dataset-fashion-mnist"


def candidate_folders(data_dir: pathlib.Path) -> list[pathlib.Path]:
    """Where the files are looked for, in order."""
    return [data_dir / "FashionMNIST" / "raw", data_dir / "fashion-mnist", data_dir, DEBIAN_FOLDER]


def _file_in(folder: pathlib.Path, name: str) -> pathlib.Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_files(data_dir: pathlib.Path) -> dict[str, pathlib.Path] | None:
    """The four files from the first folder that holds any of them; None when no folder does.

    A folder that holds some but not all of them is a DataError (a broken copy is not silently passed over).
    """
    for folder in candidate_folders(data_dir):
        found = {part: _file_in(folder, name) for part, (name, _) in FASHION_FILES.items()}
        present = {part: path for part, path in found.items() if path is not None}
        if len(present) == len(FASHION_FILES):
            return present
        if present:
            missing = ", ".join(FASHION_FILES[part][0] for part in FASHION_FILES if part not in present)
            raise DataError(
                f"Fashion-MNIST is incomplete in {folder}: {missing} (or .gz) missing; put all four IDX files there, "
                f"or remove them and run {INSTALL_HINT} or pass --download"
            )
    return None


def check_fashion(data_dir: pathlib.Path, download: bool) -> None:
    """A DataError unless the four files are found (or ``download`` will fetch them); reads no file."""
    if find_files(data_dir) is None and not download:
        raise DataError(_missing_message(data_dir))


def _missing_message(data_dir: pathlib.Path) -> str:
    searched = ", ".join(str(folder) for folder in candidate_folders(data_dir))
    return (
        f"Fashion-MNIST not found (looked in {searched}): run {INSTALL_HINT}, pass --download (download=True), "
        "or put its four IDX files in --data-dir / $PROBE_DATA"
    )


def load_fashion(data_dir: pathlib.Path, download: bool = False) -> BaseData:
    """Fashion-MNIST's train and test splits as read from its IDX files (fetched first with ``download``)."""
    files = find_files(data_dir)
    if files is None and download:
        _download(data_dir)
        files = find_files(data_dir)
    if files is None:
        raise DataError(_missing_message(data_dir))
    arrays = {part: read_idx(files[part], FASHION_FILES[part][1]) for part in FASHION_FILES}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.shape[1:] != FASHION_SHAPE[1:]:  # the model is built for 28×28 before the files are read
            raise DataError(
                f"{files[f'{split}_images']} holds {images.shape[1]}×{images.shape[2]} images, not Fashion-MNIST's "
                f"{FASHION_SHAPE[1]}×{FASHION_SHAPE[2]}; replace the file"
            )
        if not len(images):
            raise DataError(f"{files[f'{split}_images']} holds no images; replace the file")
        if len(images) != len(labels):
            raise DataError(
                f"{files[f'{split}_images']} holds {len(images)} images but {files[f'{split}_labels']} "
                f"{len(labels)} labels; the files do not belong together, replace them"
            )
        if len(labels) and labels.max() >= len(FASHION_CLASSES):
            raise DataError(
                f"{files[f'{split}_labels']} has label {labels.max()}, outside 0-{len(FASHION_CLASSES) - 1}; "
                "replace the file"
            )
    return make_base(
        arrays["train_images"][:, None],
        arrays["train_labels"].astype(np.int64),
        arrays["test_images"][:, None],
        arrays["test_labels"].astype(np.int64),
        FASHION_CLASSES,
    )


def _download(data_dir: pathlib.Path) -> None:
    """Fetch the four files into ``data_dir/FashionMNIST/raw`` with torchvision, failing fast when offline.

    A failed download takes back what it wrote: the outermost folder it made, or (when ``FashionMNIST/raw`` was
    there already) the files it added, so no half-fetched copy is later taken for an incomplete Fashion-MNIST.
    """
    from torchvision.datasets import FashionMNIST

    raw = data_dir / "FashionMNIST" / "raw"
    made = None  # the outermost folder this download creates
    for folder in (raw, *raw.parents):
        if folder.exists():
            break
        made = folder
    before = set(raw.iterdir()) if made is None else set()
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        FashionMNIST(str(data_dir), train=True, download=True)
    except Exception as error:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        else:
            for path in set(raw.iterdir()) - before:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:200]
        raise DataError(
            f"could not download Fashion-MNIST into {data_dir} ({reason}); without network run {INSTALL_HINT} "
            "or put its four IDX files in --data-dir"
        ) from error
    finally:
        socket.setdefaulttimeout(previous)


register_dataset(
    DatasetInfo(
        name="fashion",
        aliases=("fashion-mnist",),
        class_names=FASHION_CLASSES,
        input_shape=FASHION_SHAPE,
        load=load_fashion,
        check=check_fashion,
    )
)
