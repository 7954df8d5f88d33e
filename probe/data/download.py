"""Fetching and unpacking torchvision's CIFAR archives (the only network access of the toolkit)."""

from __future__ import annotations

import pathlib
import socket
import tarfile
from typing import TYPE_CHECKING

from ..errors import DataError

if TYPE_CHECKING:
    from .cifar import CifarLayout


def extract_archive(archive: pathlib.Path, root: pathlib.Path) -> None:
    """Unpack torchvision's CIFAR archive into ``root`` (only plain files and folders inside it)."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(root, filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"cannot extract {archive} ({type(e).__name__}: {e}); delete it and download it again") from e


def download_archive(layout: CifarLayout, root: pathlib.Path) -> None:
    """Fetch and unpack the CIFAR archive with torchvision's downloader, failing fast when offline."""
    from torchvision import datasets
    from torchvision.datasets.utils import download_and_extract_archive

    cls = getattr(datasets, layout.torchvision_class)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)
    try:
        root.mkdir(parents=True, exist_ok=True)
        download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)
    except Exception as e:
        reason = " ".join(f"{type(e).__name__}: {e}".split())
        raise DataError(
            f"could not download {layout.title} into {root} ({reason}); without network, put torchvision's "
            f"{layout.archive} (from {cls.url}) or its extracted {layout.folder} folder there, or set PROBE_DATA"
        ) from e
    finally:
        socket.setdefaulttimeout(previous)
