"""Rules the image loaders share: worker counts, option checks, the bad-file rule, the seeded stratified split."""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from ...errors import DataError, SettingsError
from .convert import DEFAULT_INTERPOLATION, resampling

Progress = Callable[[int, int], None]

DEFAULT_WORKERS = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def workers_of(workers: int | None) -> int:
    if workers is None:
        return DEFAULT_WORKERS if DEFAULT_WORKERS > 1 else 0
    if workers < 0:
        raise SettingsError(f"workers={workers} is negative; use 0 (decode in this process) or more")
    return int(workers)


def max_image_side(max_pixels: int | None = None) -> int | None:
    """The largest size S (and resize R) of the images the loaders make: S × S within the decompression-bomb limit
    ``max_pixels`` (default PIL's ``Image.MAX_IMAGE_PIXELS``, 89,478,485: S <= 9459), so that an image the toolkit
    makes is never one it would refuse to read; None when that limit is off."""
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    return None if limit is None else math.isqrt(int(limit))


def check_size(
    image_size: int | None,
    channels: int | None,
    resize: int | None = None,
    interpolation: str | None = None,
    max_pixels: int | None = None,
) -> None:
    """The loaders' size options, checked before anything is read: a SettingsError for a size that is no positive
    number of pixels or above :func:`max_image_side`, a resize below the crop, a filter PIL lacks, channels other
    than 1 or 3."""
    resampling(interpolation)  # a SettingsError for a name that is no PIL filter
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise SettingsError(f"image_size={image_size!r} is invalid; give a positive number of pixels, e.g. 224")
    if resize is not None and (image_size is None or not isinstance(resize, int) or resize < image_size):
        raise SettingsError(
            f"resize={resize!r} is invalid with image_size={image_size!r}; the shorter side is resized to at "
            "least the crop: give resize >= image_size (both in pixels), or no resize"
        )
    side = max_image_side(max_pixels)
    largest = max(resize or 0, image_size or 0)
    if side is not None and largest > side:
        name = "image_size" if largest == image_size else "resize"
        limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
        raise SettingsError(
            f"{name}={largest} is too large: {largest}×{largest} images are above the decompression-bomb limit of "
            f"{limit:,} pixels; give at most {side} (e.g. 224)"
        )
    if channels not in (None, 1, 3):
        raise SettingsError(f"channels={channels!r} is invalid; use 1 (grey), 3 (RGB) or None (from the data)")


def resize_basis(image_size: int | None, resize: int | None, interpolation: str | None = None) -> dict[str, int | str]:
    """The resize's part of a cache key: empty for Resize(S) with the bilinear filter, so entries made before
    ``resize`` and ``interpolation`` existed stay valid; ``resize`` R for any other R, ``interpolation`` for
    any other filter (when images are resized at all)."""
    basis: dict[str, int | str] = {"resize": resize} if resize is not None and resize != image_size else {}
    name = (interpolation or DEFAULT_INTERPOLATION).lower()
    if image_size is not None and name != DEFAULT_INTERPOLATION:
        basis["interpolation"] = name
    return basis


def too_many_bad(bad: int, total: int, what: str = "images", example: str = "") -> str | None:
    """The bad-file rule: an error message when more than ``max(10, 1 %)`` of ``total`` items are bad."""
    if bad > max(10, math.floor(0.01 * total)):
        return (
            f"{bad} of {total} {what} cannot be read{f' (e.g. {example})' if example else ''}, more than the "
            "10 or 1 % that are skipped; check that this is the data you meant, fix or remove those files, "
            "and run again"
        )
    return None


def stratified_split(
    labels: np.ndarray, test_fraction: float = 0.2, seed: int = 0, class_names: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices, each ascending: per class, ``round(test_fraction * n)`` (at least 1, at most n-1)
    images go to test, chosen by a generator seeded with (seed, crc32 of the class name), so one class's
    split does not change when another class gains images."""
    if not 0.0 < test_fraction < 1.0:
        raise SettingsError(f"test_fraction={test_fraction} is out of range; use a value in (0, 1), e.g. 0.2")
    labels = np.asarray(labels)
    test: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        name = str(class_names[c]) if class_names is not None else str(c)
        if len(idx) < 2:
            raise DataError(
                f"class '{name}' has {len(idx)} image; splitting it into train and test needs at least 2; "
                "add images or give train/ and test/ folders"
            )
        k = min(max(int(round(test_fraction * len(idx))), 1), len(idx) - 1)
        rng = np.random.default_rng([int(seed), zlib.crc32(name.encode())])
        test.append(rng.permutation(idx)[:k])
    test_idx = np.sort(np.concatenate(test)) if test else np.zeros(0, np.int64)
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return train_idx, test_idx
