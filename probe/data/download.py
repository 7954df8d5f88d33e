"""Fetching and unpacking a ``.tar.gz`` archive of a built-in data set (CIFAR's) with torchvision's downloader.

This is one of the toolkit's network accesses, not the only one: Fashion-MNIST and ``tv:NAME`` data download
through torchvision's dataset classes, ``hf:NAME`` through ``datasets``, and pretrained weights through timm
(the Hugging Face hub) and torchvision (the torch hub); each fails in one line when offline. This module knows
no data set: the caller names the archive, its checksum and what to tell the user.
"""

from __future__ import annotations

import pathlib
import socket
import tarfile

from ..errors import DataError


def extract_archive(archive: pathlib.Path, root: pathlib.Path) -> None:
    """Unpack the ``.tar.gz`` ``archive`` into ``root`` (only plain files and folders inside it)."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(root, filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"cannot extract {archive} ({type(e).__name__}: {e}); delete it and download it again") from e


def download_archive(
    url: str, root: pathlib.Path, *, filename: str, md5: str | None, title: str, offline_hint: str
) -> None:
    """Fetch ``url`` into ``root`` as ``filename`` (checked against ``md5`` when given) and unpack it there, with
    torchvision's downloader and a 10 s socket timeout, so that no network fails fast. A failure is one DataError
    line: "could not download ``title`` into ``root`` (why); without network, ``offline_hint``"."""
    from torchvision.datasets.utils import download_and_extract_archive

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)
    try:
        root.mkdir(parents=True, exist_ok=True)
        download_and_extract_archive(url, str(root), filename=filename, md5=md5)
    except Exception as e:
        reason = " ".join(f"{type(e).__name__}: {e}".split())
        raise DataError(f"could not download {title} into {root} ({reason}); without network, {offline_hint}") from e
    finally:
        socket.setdefaulttimeout(previous)
