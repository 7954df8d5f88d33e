"""Image folders in torchvision's ``ImageFolder`` layout, decoded once into the uint8 cache of
:mod:`probe.data.images.cache`.

:func:`load_image_folder` returns an :class:`~probe.data.images.cache.ImageData`: uint8 (N, C, H, W) train/test
arrays memory-mapped from the cache, int64 labels, class names and a JSON-able ``meta`` dict for results.json.
The folder holds ``train/`` + ``test/`` (or ``val/``), or directly one subfolder per class, split per class
(seeded, stratified, recorded in ``meta['split']``); a folder holding only ``train/`` is split the same way.
:func:`check_image_folder` runs the checks that need no decoding. The other sources of images (``tv:``, ``hf:``,
Dataset pairs, tensors) have their own modules; :func:`probe.data.images.load_images` dispatches a spec string.

Rules (see also :mod:`probe.data.images.cache` for conversion and resizing):

* **Files**: as ``ImageFolder``: classes are the sorted subfolder names, images are the files with one of
  torchvision's extensions found by a sorted recursive walk (following links); other files are ignored and
  counted in ``meta['ignored_files']``. Unlike ``ImageFolder``, hidden folders and files (names starting
  with '.', e.g. ``.ipynb_checkpoints``, macOS ``._x.jpg``) are ignored too.
* **Bad files** (an image extension but not decodable, or above the decompression-bomb pixel limit) are
  skipped and listed in ``meta['skipped']`` unless there are more than ``max(10, 1 % of the images)``:
  then a DataError. Not-an-image and huge files are found by a header pass before any decoding.
* **Cache key**: the resolved root, every image's relative path, size in bytes and mtime (ns), the class
  names, the split, the size and the preprocessing. Stat, not hashes: a hash reads every byte of the data
  on every call (minutes for a large folder) just to find the cache; size + mtime is what make, ccache and
  rsync trust, and any edit, copy or replacement of a file changes it.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import pathlib
import warnings
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ...errors import DataError, SettingsError
from .cache import ImageData, Part, build_cache, lookup
from .cache import cache_key as _cache_key
from .convert import GREY_MODES, BadImage
from .rules import Progress, check_size, resize_basis, stratified_split, too_many_bad, workers_of

__all__ = ["IMG_EXTENSIONS", "check_image_folder", "load_image_folder"]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's


# ---------------------------------------------------------------------------- image folders


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _classes(folder: pathlib.Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(folder) if e.is_dir() and _visible(e.name))
    except OSError as e:
        raise _unreadable(e) from e


def _unreadable(e: OSError) -> DataError:
    return DataError(
        f"cannot read {e.filename or 'the image folder'}: {e.strerror or e}; check that it exists and "
        "that you may read it (a broken link?)"
    )


def _scan_class(folder: pathlib.Path, root: pathlib.Path) -> tuple[list[tuple[str, int, int]], int]:
    """([(relative path, size, mtime_ns)] of the images under ``folder``, number of other files)."""
    found, ignored = [], 0
    for dirpath, dirnames, filenames in sorted(os.walk(folder, followlinks=True)):
        dirnames[:] = [d for d in dirnames if _visible(d)]
        if any(not _visible(part) for part in pathlib.Path(dirpath).relative_to(folder).parts):
            continue
        for fname in sorted(filenames):
            if not _visible(fname) or not fname.lower().endswith(IMG_EXTENSIONS):
                ignored += 1
                continue
            path = os.path.join(dirpath, fname)
            try:
                st = os.stat(path)
                found.append((os.path.relpath(path, root), st.st_size, st.st_mtime_ns))
            except OSError:  # a broken link: the header pass will list it as a bad file
                found.append((os.path.relpath(path, root), -1, -1))
    return found, ignored


def _scan_split(folder: pathlib.Path, root: pathlib.Path, where: str):
    classes = _classes(folder)
    if not classes:
        raise DataError(
            f"{where} has no class subfolders; put the images in one subfolder per class "
            "(e.g. cats/001.jpg, dogs/002.jpg), as torchvision's ImageFolder expects"
        )
    files, labels, ignored = [], [], 0
    for c, name in enumerate(classes):
        found, other = _scan_class(folder / name, root)
        ignored += other
        if not found:
            raise DataError(
                f"class '{name}' in {where} has no images (looked for {', '.join(IMG_EXTENSIONS)}); "
                "add images to it or remove the folder"
            )
        files += found
        labels += [c] * len(found)
    if len(classes) < 2:
        raise DataError(
            f"{where} has a single class '{classes[0]}'; a classification task needs at least 2 class subfolders"
        )
    return classes, files, np.asarray(labels, dtype=np.int64), ignored


def _header(path: str, max_pixels: int | None) -> tuple[str | None, str, tuple[int, int]]:
    """(reason it is bad or None, mode, (width, height)) from the file's header only."""
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                mode, size = img.mode, img.size
    except UnidentifiedImageError:
        return "not an image", "", (0, 0)
    except Image.DecompressionBombError as e:
        return f"above PIL's decompression-bomb limit ({' '.join(str(e).split())})", "", (0, 0)
    except (OSError, SyntaxError, ValueError) as e:
        return f"cannot read: {' '.join(str(e).split()) or type(e).__name__}", "", (0, 0)
    if limit is not None and size[0] * size[1] > limit:
        return f"{size[0]}×{size[1]} pixels is above the limit of {limit} (decompression-bomb guard)", mode, size
    return None, mode, size


def _read_file(path: str) -> tuple[Any, None]:
    try:
        return Image.open(path), None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadImage(f"cannot read: {' '.join(str(e).split()) or type(e).__name__}") from e


def _layout(path: str | os.PathLike[str]) -> tuple[pathlib.Path, set[str], str | None]:
    """The folder (resolved), its subfolders and the name of its test split (``test``, ``val`` or None)."""
    root = pathlib.Path(path).expanduser()
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(f"image folder {root} {what}; give a folder with one subfolder per class (or train/ and test/)")
    root = root.resolve()
    subdirs = set(_classes(root))
    return root, subdirs, "test" if "test" in subdirs else "val" if "val" in subdirs else None


def _require_same_classes(root: pathlib.Path, test_name: str, classes: list[str], t_classes: list[str]) -> None:
    """A DataError naming the classes only one of train/ and ``test_name``/ has, when they differ."""
    if t_classes != classes:
        only_train = sorted(set(classes) - set(t_classes))
        only_test = sorted(set(t_classes) - set(classes))
        raise DataError(
            f"train/ and {test_name}/ in {root} have different classes (only in train/: "
            f"{', '.join(only_train) or 'none'}; only in {test_name}/: {', '.join(only_test) or 'none'}); "
            "give both the same class subfolders"
        )


def check_image_folder(path: str | os.PathLike[str]) -> list[str]:
    """The class names of an image folder, after the checks that need no decoding: the folder exists, has class
    subfolders (at least 2, none empty), and train/ and test/ (or val/) have the same classes."""
    root, subdirs, test_name = _layout(path)
    if "train" in subdirs and (test_name or subdirs == {"train"}):
        classes = _scan_split(root / "train", root, str(root / "train"))[0]
        if test_name:
            t_classes = _scan_split(root / test_name, root, str(root / test_name))[0]
            _require_same_classes(root, test_name, classes, t_classes)
        return classes
    return _scan_split(root, root, str(root))[0]


def load_image_folder(
    path: str | os.PathLike[str],
    *,
    image_size: int | None = None,
    resize: int | None = None,
    interpolation: str | None = None,
    channels: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    processes: bool = False,
    max_pixels: int | None = None,
    progress: Progress | None = None,
) -> ImageData:
    """An image folder (``ImageFolder`` layout), decoded once into the cache and memory-mapped.

    ``path`` holds ``train/`` and ``test/`` (or ``val/``) with one subfolder per class, or directly one
    subfolder per class (then split per class: ``test_fraction`` of each class, seeded by ``seed``).
    ``image_size`` S resizes as ``Resize(R)+CenterCrop(S)``, R = ``resize`` (default S), with the PIL filter
    ``interpolation`` (default bilinear); None keeps the native size (all images equal).
    ``channels`` None: 1 if every image is grey, else 3. ``workers`` threads decode (forked processes with
    ``processes=True``); ``progress(done, total)`` is called after every chunk.
    """
    check_size(image_size, channels, resize, interpolation)
    workers = workers_of(workers)
    root, subdirs, test_name = _layout(path)
    split_meta: dict[str, Any]
    if "train" in subdirs and (test_name or subdirs == {"train"}):
        classes, files, labels, ignored = _scan_split(root / "train", root, f"{root / 'train'}")
        groups = {"train": (files, labels)}
        if test_name:
            t_classes, t_files, t_labels, t_ignored = _scan_split(root / test_name, root, f"{root / test_name}")
            ignored += t_ignored
            _require_same_classes(root, test_name, classes, t_classes)
            groups["test"] = (t_files, t_labels)
            split_meta = {"layout": f"train/ and {test_name}/ folders"}
        else:
            split_meta = {"layout": "train/ only, split per class"}
    else:
        classes, files, labels, ignored = _scan_split(root, root, str(root))
        groups = {"train": (files, labels)}
        split_meta = {"layout": "one folder split per class"}
    if "test" not in groups:
        if not 0.0 < test_fraction < 1.0:
            raise SettingsError(f"test_fraction={test_fraction} is out of range; use a value in (0, 1), e.g. 0.2")
        split_meta.update(seed=int(seed), test_fraction=float(test_fraction))

    description = {
        "kind": "folder",
        "root": str(root),
        "classes": classes,
        "split": split_meta,
        "files": {g: f for g, (f, _) in groups.items()},
        "image_size": image_size,
        **resize_basis(image_size, resize, interpolation),
        "channels": channels,
        "max_pixels": max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS,
    }
    key = "folder-" + _cache_key(description)
    if (cached := lookup(key, cache_dir)) is not None:
        return cached

    # Header pass (no decoding): finds non-images and huge images before any expensive work, and the modes.
    paths = [str(root / f[0]) for files_, _ in groups.values() for f in files_]
    path_group = [g if "test" in groups else "before the split" for g, (files_, _) in groups.items() for _ in files_]
    if workers > 0:
        with cf.ThreadPoolExecutor(workers) as pool:
            headers = list(pool.map(_header, paths, [max_pixels] * len(paths)))
    else:
        headers = [_header(p, max_pixels) for p in paths]
    pre_skipped = [
        {"split": g, "item": p, "reason": h[0]}
        for p, g, h in zip(paths, path_group, headers, strict=True)
        if h[0] is not None
    ]
    if pre_skipped and (
        message := too_many_bad(
            len(pre_skipped), len(paths), example=f"{pre_skipped[0]['item']}: {pre_skipped[0]['reason']}"
        )
    ):
        raise DataError(message)
    good = [h for h in headers if h[0] is None]
    sizes = {h[2] for h in good}
    if image_size is None and len(sizes) > 1:
        a, b = sorted(sizes)[:2]
        raise DataError(
            f"the images in {root} have different sizes ({a[0]}×{a[1]}, {b[0]}×{b[1]}, ...); "
            "pass image_size (CLI: --image-size), e.g. 224, to resize them all"
        )
    chans = channels or (1 if all(h[1] in GREY_MODES for h in good) else 3)

    # Drop what the header pass rejected, then split (so a split never draws an unreadable file).
    ok = iter(h[0] is None for h in headers)
    kept = {}
    for g, (files_, labels_) in groups.items():
        mask = np.fromiter((next(ok) for _ in files_), dtype=bool, count=len(files_))
        kept[g] = ([str(root / f[0]) for f, m in zip(files_, mask, strict=True) if m], labels_[mask])
        _require_every_class(kept[g][1], classes, f"{root / g}" if "test" in groups else str(root))
    if "test" not in groups:
        files_, labels_ = kept.pop("train")
        tr, te = stratified_split(labels_, test_fraction, seed, classes)
        kept = {"train": ([files_[i] for i in tr], labels_[tr]), "test": ([files_[i] for i in te], labels_[te])}
    side = (image_size, image_size) if image_size is not None else good[0][2][::-1]
    meta = {
        "source": "folder",
        "root": str(root),
        "layout": split_meta["layout"],
        "split": split_meta,
        "ignored_files": ignored,
        "cache_key_basis": "resolved root + relative path, size and mtime_ns of every image + options",
    }

    def check(labels_by_split: dict[str, np.ndarray]) -> None:
        for split, y in labels_by_split.items():
            _require_every_class(y, classes, f"the {split} split of {root}")
        if "seed" in split_meta:
            split_meta["counts"] = {
                name: {
                    "train": int((labels_by_split["train"] == c).sum()),
                    "test": int((labels_by_split["test"] == c).sum()),
                }
                for c, name in enumerate(classes)
            }

    return build_cache(
        key,
        [Part("train", *kept["train"]), Part("test", *kept["test"])],
        _read_file,
        shape=(chans, side[0], side[1]),
        image_size=image_size,
        resize=resize,
        interpolation=interpolation,
        channels=chans,
        class_names=classes,
        meta=meta,
        cache_dir=cache_dir,
        workers=workers,
        processes=processes,
        max_pixels=max_pixels,
        bad_rule=too_many_bad,
        check=check,
        progress=progress,
        skipped=pre_skipped,
    )


def _require_every_class(labels: np.ndarray, classes: list[str], where: str) -> None:
    counts = np.bincount(labels, minlength=len(classes))
    empty = [classes[c] for c in np.flatnonzero(counts == 0)]
    if empty:
        raise DataError(
            f"class '{empty[0]}' has no readable image in {where} (the others were skipped as bad files); "
            "add readable images to it or remove the folder"
        )
