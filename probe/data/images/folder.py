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
* **Links**: followed, but no real folder is read twice: a link back to a folder already read (a symlink loop
  such as ``ln -s .. loop``, or a second path to another class's images) is not followed and is listed in
  ``meta['skipped']`` with its reason (not counted as a bad file); two class or split folders that are one
  folder (``test/cat`` a link to ``train/cat``) are a DataError.
* **Not a regular file** (a FIFO, socket or device named ``x.png``): never opened (opening a FIFO waits for a
  writer forever), listed in ``meta['skipped']`` as a bad file.
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
import stat
import warnings
from dataclasses import dataclass, field
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


FolderId = tuple[int, int]  # (device, inode) of a real folder: two paths (links) to one folder have the same


@dataclass
class _Listing:
    """What the scan of one split folder found."""

    classes: list[str]
    files: list[tuple[str, int, int]]  # (path relative to the root, size, mtime_ns); -1, -1 for a broken link
    labels: np.ndarray  # int64, one per file
    ignored: int  # files without an image extension, hidden files
    not_followed: list[tuple[str, str]] = field(default_factory=list)  # (link, reason): a folder seen before
    not_files: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): an image name, no regular file


def _folder_ids(folders: list[pathlib.Path]) -> set[FolderId]:
    """The real identities of ``folders`` (the root, the split and class folders); a DataError when two of them
    are one folder (a link to another), whose images would be read twice: under two classes, or in train and test."""
    first_path: dict[FolderId, pathlib.Path] = {}
    for folder in dict.fromkeys(folders):
        try:
            st = os.stat(folder)
        except OSError as e:
            raise _unreadable(e) from e
        first = first_path.setdefault((st.st_dev, st.st_ino), folder)
        if first != folder:
            raise DataError(
                f"{folder} and {first} are the same folder (one is a link to the other), so its images would be "
                "read twice; give every class of every split a folder of its own"
            )
    return set(first_path)


def _not_a_file(mode: int) -> str:
    """Why a file with an image name is not opened (``mode`` from its stat)."""
    if stat.S_ISFIFO(mode):
        kind = "a FIFO"
    elif stat.S_ISSOCK(mode):
        kind = "a socket"
    else:
        kind = "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "an unknown kind of file"
    return f"{kind}, not a regular file; not opened"


def _scan_class(folder: pathlib.Path, root: pathlib.Path, seen: set[FolderId], listing: _Listing) -> int:
    """Add the images under ``folder`` to ``listing`` (their label is the caller's); the number found.

    Links are followed, but never into a folder already in ``seen`` (a symlink loop such as ``ln -s .. loop``,
    or a second path to a folder scanned before): such a link is listed in ``listing.not_followed``. Only regular
    files are listed as images (opening a FIFO blocks forever); any other file with an image name goes to
    ``listing.not_files``.
    """
    visits: list[tuple[str, list[str]]] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        followed = []
        for name in sorted(dirnames):
            if not _visible(name):
                continue
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path)
            except OSError:  # gone since os.walk listed it: os.walk skips it as well
                continue
            if (st.st_dev, st.st_ino) in seen:
                reason = f"a link to {os.path.realpath(path)}, which is read once elsewhere (a symlink loop, or a "
                listing.not_followed.append((path, reason + "second path to it); not followed"))
                continue
            seen.add((st.st_dev, st.st_ino))
            followed.append(name)
        dirnames[:] = followed
        visits.append((dirpath, filenames))
    found = 0
    for dirpath, filenames in sorted(visits):
        for fname in sorted(filenames):
            if not _visible(fname) or not fname.lower().endswith(IMG_EXTENSIONS):
                listing.ignored += 1
                continue
            path = os.path.join(dirpath, fname)
            try:
                st = os.stat(path)
            except OSError:  # a broken link: the header pass will list it as a bad file
                listing.files.append((os.path.relpath(path, root), -1, -1))
                found += 1
                continue
            if not stat.S_ISREG(st.st_mode):
                listing.not_files.append((path, _not_a_file(st.st_mode)))
                continue
            listing.files.append((os.path.relpath(path, root), st.st_size, st.st_mtime_ns))
            found += 1
    return found


def _split_folders(root: pathlib.Path, subdirs: set[str], test_name: str | None) -> dict[str, pathlib.Path]:
    """The folders of the splits: ``{"train": root/train, "test": root/<test_name>}``, ``{"train": root/train}``
    (train/ only, split per class) or ``{"train": root}`` (one folder of classes, split per class)."""
    if "train" in subdirs and (test_name or subdirs == {"train"}):
        return {"train": root / "train", **({"test": root / test_name} if test_name else {})}
    return {"train": root}


def _scan(root: pathlib.Path, folders: dict[str, pathlib.Path]) -> dict[str, _Listing]:
    """The images of every split folder in ``folders``, scanned with one record of the real folders seen, so that
    no folder is read twice (see :func:`_scan_class`)."""
    classes = {group: _classes(folder) for group, folder in folders.items()}
    for group, folder in folders.items():
        if not classes[group]:
            raise DataError(
                f"{folder} has no class subfolders; put the images in one subfolder per class "
                "(e.g. cats/001.jpg, dogs/002.jpg), as torchvision's ImageFolder expects"
            )
    class_folders = [folder / name for group, folder in folders.items() for name in classes[group]]
    seen = _folder_ids([root, *folders.values(), *class_folders])
    return {group: _scan_split(folder, root, classes[group], seen) for group, folder in folders.items()}


def _scan_split(folder: pathlib.Path, root: pathlib.Path, classes: list[str], seen: set[FolderId]) -> _Listing:
    listing = _Listing(classes, [], np.zeros(0, dtype=np.int64), 0)
    labels: list[int] = []
    for c, name in enumerate(classes):
        found = _scan_class(folder / name, root, seen, listing)
        if not found:
            raise DataError(
                f"class '{name}' in {folder} has no images (looked for {', '.join(IMG_EXTENSIONS)}); "
                "add images to it or remove the folder"
            )
        labels += [c] * found
    if len(classes) < 2:
        raise DataError(
            f"{folder} has a single class '{classes[0]}'; a classification task needs at least 2 class subfolders"
        )
    listing.labels = np.asarray(labels, dtype=np.int64)
    return listing


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
    subfolders (at least 2, none empty, no two the same folder), and train/ and test/ (or val/) have the same
    classes."""
    root, subdirs, test_name = _layout(path)
    listings = _scan(root, _split_folders(root, subdirs, test_name))
    if test_name and "test" in listings:
        _require_same_classes(root, test_name, listings["train"].classes, listings["test"].classes)
    return listings["train"].classes


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
    check_size(image_size, channels, resize, interpolation, max_pixels)
    workers = workers_of(workers)
    root, subdirs, test_name = _layout(path)
    folders = _split_folders(root, subdirs, test_name)
    listings = _scan(root, folders)
    classes = listings["train"].classes
    groups = {g: (listing.files, listing.labels) for g, listing in listings.items()}
    ignored = sum(listing.ignored for listing in listings.values())
    split_meta: dict[str, Any]
    if test_name:
        _require_same_classes(root, test_name, classes, listings["test"].classes)
        split_meta = {"layout": f"train/ and {test_name}/ folders"}
    else:
        split_per_class = "one folder split per class" if folders["train"] == root else "train/ only, split per class"
        split_meta = {"layout": split_per_class}
    if "test" not in groups:
        if not 0.0 < test_fraction < 1.0:
            raise SettingsError(f"test_fraction={test_fraction} is out of range; use a value in (0, 1), e.g. 0.2")
        split_meta.update(seed=int(seed), test_fraction=float(test_fraction))

    description: dict[str, Any] = {
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
    not_read = sorted(
        (os.path.relpath(item, root), reason)
        for listing in listings.values()
        for item, reason in (*listing.not_followed, *listing.not_files)
    )
    if not_read:  # only then, so that the keys of folders without any stay as they were
        description["not_read"] = not_read
    key = "folder-" + _cache_key(description)
    if (cached := lookup(key, cache_dir)) is not None:
        return cached

    # Header pass (no decoding): finds non-images and huge images before any expensive work, and the modes.
    paths = [str(root / f[0]) for files_, _ in groups.values() for f in files_]
    where = {g: g if "test" in groups else "before the split" for g in groups}
    path_group = [where[g] for g, (files_, _) in groups.items() for _ in files_]
    if workers > 0:
        with cf.ThreadPoolExecutor(workers) as pool:
            headers = list(pool.map(_header, paths, [max_pixels] * len(paths)))
    else:
        headers = [_header(p, max_pixels) for p in paths]
    pre_skipped = [  # image names that are no regular file, then what the header pass rejects
        {"split": where[g], "item": item, "reason": reason}
        for g, listing in listings.items()
        for item, reason in listing.not_files
    ] + [
        {"split": g, "item": p, "reason": h[0]}
        for p, g, h in zip(paths, path_group, headers, strict=True)
        if h[0] is not None
    ]
    links = [  # listed with the skipped files, but no bad file: the bad-file rule does not count them
        {"split": where[g], "item": item, "reason": reason}
        for g, listing in listings.items()
        for item, reason in listing.not_followed
    ]
    n_images = len(paths) + sum(len(listing.not_files) for listing in listings.values())
    if pre_skipped and (
        message := too_many_bad(
            len(pre_skipped), n_images, example=f"{pre_skipped[0]['item']}: {pre_skipped[0]['reason']}"
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
        _require_every_class(kept[g][1], classes, str(folders[g]))
    if "test" not in groups:
        kept_paths, kept_labels = kept.pop("train")
        tr, te = stratified_split(kept_labels, test_fraction, seed, classes)
        kept = {
            "train": ([kept_paths[i] for i in tr], kept_labels[tr]),
            "test": ([kept_paths[i] for i in te], kept_labels[te]),
        }
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
        bad_rule=lambda bad, total: too_many_bad(bad - len(links), total - len(links)),
        check=check,
        progress=progress,
        skipped=links + pre_skipped,
    )


def _require_every_class(labels: np.ndarray, classes: list[str], where: str) -> None:
    counts = np.bincount(labels, minlength=len(classes))
    empty = [classes[c] for c in np.flatnonzero(counts == 0)]
    if empty:
        raise DataError(
            f"class '{empty[0]}' has no readable image in {where} (the others were skipped as bad files); "
            "add readable images to it or remove the folder"
        )
