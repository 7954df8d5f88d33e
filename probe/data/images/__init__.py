"""Image data from anywhere: one entry point, :func:`load_images`, above the loaders it dispatches to.

* a folder in torchvision's ``ImageFolder`` layout: :func:`probe.data.images.folder.load_image_folder`;
* ``tv:NAME``: a torchvision dataset, :func:`probe.data.images.torchvision_sets.load_torchvision`;
* ``hf:NAME`` or a ``datasets`` ``save_to_disk`` folder: :func:`probe.data.images.huggingface.load_hf`;
* a ``torch.utils.data.Dataset`` pair or ``(x, y)`` tensors: :mod:`probe.data.images.pairs`.

Every loader returns an :class:`~probe.data.images.cache.ImageData`: uint8 (N, C, H, W) arrays memory-mapped
from the cache (float32 for data given already normalised), labels, class names and a JSON-able ``meta``;
:mod:`probe.data.images.tasks` wraps it as a task.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

from ...errors import DataError
from .cache import ImageData
from .folder import load_image_folder

__all__ = ["is_hf_folder", "load_images"]


def is_hf_folder(folder: pathlib.Path) -> bool:
    """Whether ``folder`` was written by ``datasets``' ``save_to_disk``."""
    return any((folder / f).is_file() for f in ("dataset_dict.json", "state.json"))


def load_images(source: str | os.PathLike[str], **options: Any) -> ImageData:
    """``'tv:NAME'`` (needs ``data_dir=``), ``'hf:NAME'``, or a folder: a ``save_to_disk`` folder goes to
    :func:`probe.data.images.huggingface.load_hf`, anything else to :func:`load_image_folder`. ``options`` are
    passed on.
    """
    text = os.fspath(source)
    if text.lower().startswith("tv:"):
        data_dir = options.pop("data_dir", None)
        if data_dir is None:
            raise DataError(f"{text} needs a data folder; pass data_dir (CLI: --data-dir)")
        from .torchvision_sets import load_torchvision

        return load_torchvision(text, data_dir, **options)
    if text.lower().startswith("hf:"):
        from .huggingface import load_hf

        return load_hf(text[3:], **options)
    folder = pathlib.Path(text).expanduser()
    if is_hf_folder(folder):
        from .huggingface import load_hf

        return load_hf(str(folder), **options)
    return load_image_folder(folder, **options)
