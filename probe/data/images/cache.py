"""Images decoded once into a uint8 cache on disk, memory-mapped on every later use.

This is the engine under every loader of :mod:`probe.data.images` (folders, Dataset pairs and tensors, and through
those torchvision and Hugging Face datasets): a *source* is a list of items per split (file paths, dataset
indices) and a reader that turns one item into ``(image, label)``; :func:`build_cache` decodes, converts and
resizes every item once, with an optional pool of workers, and streams the result chunk by chunk into
``train_x.npy`` / ``test_x.npy`` (N×C×H×W uint8) under a cache folder keyed by a content description.
:func:`open_cache` maps them back without a copy.

Decisions (documented here once; the loaders' metadata repeats them):

* **Conversion** (:func:`to_uint8`), as torchvision's ``pil_loader`` where it has a rule: colour modes
  (RGB, RGBA, P, CMYK, YCbCr, ...) go through PIL's ``convert('RGB')``, so **alpha is dropped, not
  composited** (transparent pixels keep their stored colour, exactly what ``ImageFolder`` gives); grey
  ``1``/``L``/``LA`` become ``L`` (alpha dropped); 16-bit ``I;16*`` and ``I`` are scaled from 0..65535 to
  0..255 (``round(v / 257)``, values outside clipped) where PIL would clip them to white; ``F`` is clipped to
  0..255. Grey images are stored with 1 channel when every image is grey, else replicated to 3; with
  ``channels=1`` colour becomes PIL's ITU-R 601-2 luma. EXIF orientation is not applied (as torchvision).
* **Already normalised** (float images outside [0, 1]: what a pipeline yields after ``Normalize``): kept as
  given in a float32 entry (4 bytes a value), never scaled or normalised again; resized, if asked, as
  torchvision's ``Resize`` does on a tensor. Which floats these are, and which are refused (NaN, infinite
  values, 0..255 pixel values stored as floats): :func:`~probe.data.images.convert.are_normalised`.
* **Resize** (``image_size=S``, ``resize=R``, default R = S): the shorter side to R with PIL's antialiased
  filter ``interpolation`` (default bilinear; a pretrained model's own, e.g. timm's bicubic), then a centre
  crop S×S: bit for bit torchvision's ``Resize(R, interpolation) + CenterCrop(S)`` on a PIL image (a
  pretrained model's eval transform, e.g. 256 then 224). ``None`` keeps the native size, which must then be
  the same for every image.
* **Huge images**: more than ``max_pixels`` (default PIL's ``Image.MAX_IMAGE_PIXELS``, the decompression-bomb
  limit) are never decoded; they count as bad files (skipped, listed, subject to the bad-file rule).
* **Atomicity**: everything is written into a temporary folder next to the cache entry and renamed onto it
  in one step, so an interrupted or failed prepare leaves no entry (and removes its temporary folder). A
  prepare killed outright (SIGKILL, the out-of-memory killer) cannot remove its folder: the next use of the
  cache does, knowing it from a live writer's by the lock the writer holds (:func:`remove_abandoned`).
* **Room**: an entry that would not fit on the cache's disk (N × C × H × W bytes) is refused before anything
  is written (:func:`check_room`).
* **Memory**: bounded by ``chunk`` images per worker in flight, never by the data set: images are written
  to the file as they come, not through a memory map.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import math
import os
import pathlib
import shutil
import struct
import sys
import tempfile
import time
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from ...errors import DataError, SettingsError
from ...util.cache import cache_root
from .convert import (
    CONVERSION_RULE,
    DEFAULT_INTERPOLATION,
    NORMALISED_RULE,
    RESIZE_RULE,
    TENSOR_RESIZE_RULE,
    BadImage,
    resize_shape,
    to_float32,
    to_uint8,
)

__all__ = [
    "ImageData",
    "BadImage",
    "Part",
    "default_cache_dir",
    "to_uint8",
    "resize_shape",
    "build_cache",
    "open_cache",
    "lookup",
    "cache_key",
    "check_room",
    "remove_abandoned",
    "RESIZE_RULE",
    "CONVERSION_RULE",
    "CACHE_FORMAT",
]

CACHE_FORMAT = 1  # bump when the preprocessing or the layout changes: old entries are then ignored
_HEADER_BYTES = 128  # our .npy header is padded to this size so N can be fixed once the images are in


@dataclass
class ImageData:
    """Train and test images as uint8 (N, C, H, W) arrays, memory-mapped from the cache, plus labels; float32 for
    data given already normalised (``meta['values']`` says so).

    ``meta`` says where the data came from and what was done to it (source, layout, split, resize,
    conversion, skipped files, cache entry) and, for uint8 images, ``meta['pixel_stats'][split]`` the exact
    per-channel mean and std in 0..255 units (for normalising without reading the images); it is
    JSON-serialisable, for results.json.
    """

    train_x: np.ndarray
    train_y: np.ndarray  # int64 (N,)
    test_x: np.ndarray
    test_y: np.ndarray
    class_names: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_chans(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def input_size(self) -> tuple[int, int]:
        return int(self.train_x.shape[2]), int(self.train_x.shape[3])


@dataclass
class Part:
    """One split to prepare: ``items`` handed one at a time to the reader; ``labels`` if known beforehand
    (an image folder), else the reader returns them (a Dataset)."""

    name: str  # "train" or "test"
    items: Sequence[Any]
    labels: np.ndarray | None = None


def default_cache_dir() -> pathlib.Path:
    """``images`` under the :func:`~probe.util.cache.cache_root` (``$PROBE_CACHE`` or ``~/.cache/quanta-probe``)."""
    return (cache_root() / "images").resolve()


def cache_key(description: dict[str, Any]) -> str:
    """The entry name of a content description: sha256 of its canonical JSON (first 24 hex digits)."""
    text = json.dumps({"format": CACHE_FORMAT, **description}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


# ------------------------------------------------------------------------------ conversion


# --------------------------------------------------------------------------- the writer


def _npy_header(shape: tuple[int, ...], dtype: Any = np.uint8) -> bytes:
    """A version-1.0 .npy header for C-order data of ``shape`` and ``dtype``, padded to exactly 128 bytes."""
    text = f"{{'descr': {np.dtype(dtype).str!r}, 'fortran_order': False, 'shape': {tuple(int(s) for s in shape)!r}, }}"
    length = _HEADER_BYTES - 10
    if len(text) >= length:
        raise SettingsError(f"array shape {shape} too large for the cache header")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", length) + (text.ljust(length - 1) + "\n").encode("latin1")


# Work shared with the pool: a token -> (reader, parts, options). Threads see it directly; forked processes
# inherit it (it is set before the pool starts), so no reader or dataset is ever pickled.
_JOBS: dict[str, tuple[Callable[[Any], tuple[Any, Any]], dict[str, Part], dict[str, Any]]] = {}


def _work(
    token: str, part: str, start: int, stop: int
) -> tuple[np.ndarray, list[int], list[tuple[int, str]], np.ndarray]:
    """Decode items [start, stop) of ``part``: (images stacked, labels of the good ones, bad (index, reason),
    per-channel histogram (C, 256) of the good ones)."""
    reader, parts, opts = _JOBS[token]
    items = parts[part].items
    hist = np.zeros((opts["shape"][0], 256), dtype=np.int64)
    images: list[np.ndarray] = []
    labels: list[int] = []
    bad: list[tuple[int, str]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for i in range(start, stop):
            try:
                image, label = reader(items[i])
                if opts["normalised"]:
                    arr = to_float32(image, opts["image_size"], opts["channels"], opts["resize"], opts["interpolation"])
                else:
                    arr = to_uint8(
                        image,
                        opts["image_size"],
                        opts["channels"],
                        opts["max_pixels"],
                        opts["resize"],
                        opts["interpolation"],
                    )
            except BadImage as e:
                bad.append((i, str(e)))
                continue
            if arr.shape != opts["shape"]:
                raise DataError(
                    f"{_name(items[i])} is {arr.shape[2]}×{arr.shape[1]} with {arr.shape[0]} channel(s) where the "
                    f"first image is {opts['shape'][2]}×{opts['shape'][1]} with {opts['shape'][0]}; "
                    "pass image_size (CLI: --image-size) to resize every image to one size"
                )
            images.append(arr)
            labels.append(-1 if label is None else int(label))
    stacked = np.stack(images) if images else np.zeros((0, *opts["shape"]), opts["dtype"])
    if opts["normalised"]:  # used as given: no statistics are needed
        return stacked, labels, bad, hist
    # PIL's C histogram of each contiguous image plane, here in the worker: the statistics cost the writer
    # nothing, where a numpy bincount over every chunk in the writer was the bottleneck of the prepare
    for image in stacked:
        for channel, plane in enumerate(image):
            hist[channel] += Image.fromarray(plane).histogram()
    return stacked, labels, bad, hist


def _name(item: Any) -> str:
    return str(item) if isinstance(item, (str, os.PathLike)) else f"item {item}"


def build_cache(
    key: str,
    parts: Sequence[Part],
    reader: Callable[[Any], tuple[Any, Any]],
    *,
    shape: tuple[int, int, int],
    image_size: int | None,
    channels: int,
    class_names: Sequence[str] | Callable[[dict[str, np.ndarray]], list[str]],
    resize: int | None = None,
    interpolation: str | None = None,
    meta: dict[str, Any],
    cache_dir: str | os.PathLike[str] | None = None,
    workers: int = 0,
    processes: bool = False,
    chunk: int | None = None,
    max_pixels: int | None = None,
    bad_rule: Callable[[int, int], str | None] | None = None,
    check: Callable[[dict[str, np.ndarray]], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    skipped: Sequence[dict[str, str]] = (),
    normalised: bool = False,
) -> ImageData:
    """Decode every item of ``parts`` once into the cache entry ``key`` and return it memory-mapped.

    ``reader(item) -> (image, label or None)``; ``image_size`` S, ``resize`` R (default S) and the PIL filter
    ``interpolation`` (default bilinear): Resize(R) + CenterCrop(S). Bad items (:class:`BadImage`) are skipped
    and listed in ``meta['skipped']`` (after ``skipped``, those the caller already set aside); ``bad_rule(bad, total)``
    returns an error message when there are too many. ``class_names`` may be a function of
    ``{split: labels}``; ``check({split: labels})`` validates the result before it is published (e.g. no
    class left empty). ``workers`` > 0 decodes in
    a pool of that many threads (or forked processes with ``processes=True`` on Linux), ``chunk`` items
    per task (default: 64, fewer for large images so that a chunk stays under 16 MB); at most 2 × workers chunks
    are in flight, which bounds the memory. ``normalised``: the items are already-normalised float images, kept
    as given in a float32 entry (:func:`~probe.data.images.convert.to_float32`), with no pixel statistics. An
    entry that already exists is returned as is. An entry that would not fit on the cache's disk is a DataError
    before anything is written (:func:`check_room`). Nothing is left behind on error; the temporary folders of
    prepares that died are removed (:func:`remove_abandoned`).
    """
    root = _root(cache_dir)
    final = root / key
    if (final / "meta.json").is_file():
        return open_cache(final)
    total = sum(len(p.items) for p in parts)
    dtype = np.dtype(np.float32 if normalised else np.uint8)
    check_room(root, total, shape, dtype.itemsize)
    skipped = [dict(s) for s in skipped]
    n_pre = len(skipped)
    chunk = chunk or max(1, min(64, (16 << 20) // max(1, int(np.prod(shape)) * dtype.itemsize)))
    root.mkdir(parents=True, exist_ok=True)
    remove_abandoned(root)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".tmp", dir=root))
    lock: int | None = None
    token = uuid.uuid4().hex
    _JOBS[token] = (
        reader,
        {p.name: p for p in parts},
        {
            "image_size": image_size,
            "resize": resize,
            "interpolation": interpolation,
            "channels": channels,
            "max_pixels": max_pixels,
            "shape": tuple(shape),
            "normalised": normalised,
            "dtype": dtype,
        },
    )
    executor: cf.Executor | None = None
    try:
        lock = _hold_writer_lock(tmp)
        if workers > 0:
            if processes and sys.platform.startswith("linux"):  # fork, as DataLoader on Linux; threads elsewhere
                import multiprocessing

                with warnings.catch_warnings():  # forking a threaded process: the workers run PIL/numpy only
                    warnings.simplefilter("ignore", DeprecationWarning)
                    executor = cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
            else:
                executor = cf.ThreadPoolExecutor(workers, thread_name_prefix="probe-decode")
        done = 0
        counts: dict[str, int] = {}
        all_labels: dict[str, np.ndarray] = {}
        stats: dict[str, dict[str, list[float]]] = {}
        for part in parts:
            n, labels, bad, hist = _write_part(tmp, part, token, shape, executor, chunk, workers, progress, done, total)
            stats.setdefault(part.name, _moments(hist))
            done += len(part.items)
            counts[part.name] = n
            skipped += [{"split": part.name, "item": _name(part.items[i]), "reason": r} for i, r in bad]
            if bad_rule is not None and (message := bad_rule(len(skipped), total + n_pre)):
                raise DataError(message)
            with open(tmp / f"{part.name}_y.npy", "wb") as fh:
                np.save(fh, labels)
                _sync(fh)
            all_labels[part.name] = labels
        if check is not None:
            check(all_labels)
        names = class_names(all_labels) if callable(class_names) else list(class_names)
        meta = {
            **meta,
            "counts": counts,
            "skipped": {"count": len(skipped), "files": skipped},
            "resize": (TENSOR_RESIZE_RULE if normalised else RESIZE_RULE)
            if image_size is not None
            else "none (native size)",
            "conversion": NORMALISED_RULE if normalised else CONVERSION_RULE,
            "image_size": image_size,
            "resize_size": (resize or image_size) if image_size is not None else None,
            "interpolation": (interpolation or DEFAULT_INTERPOLATION) if image_size is not None else None,
            "channels": channels,
            "cache_format": CACHE_FORMAT,
            **({"values": "already normalised: used as given"} if normalised else {"pixel_stats": stats}),
        }
        with open(tmp / "meta.json", "w") as fh:
            fh.write(json.dumps({"class_names": names, "meta": meta}, indent=1))
            _sync(fh)
        if lock is not None:
            (tmp / WRITER_LOCK).unlink()  # not part of the entry; the folder is fresh, so the age rule keeps it
        try:
            os.rename(tmp, final)
        except OSError:  # another process published the same entry first: use theirs
            if not (final / "meta.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
            executor = None
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if executor is not None:
            executor.shutdown(wait=True)
        _JOBS.pop(token, None)
        if lock is not None:
            os.close(lock)
    return open_cache(final)


def _sync(fh: Any) -> None:
    """Flush a file to the disk, so that a published entry survives a crash of the machine too."""
    fh.flush()
    os.fsync(fh.fileno())


# Room on the disk: an entry is N × C × H × W bytes (uint8), written before it is used; one that does not fit
# filled the disk (and, for a huge --image-size, the memory) before failing. Checked before anything is written.
DISK_RESERVE = 256 << 20  # bytes left free beyond the entry, for everything else that writes to that disk


def _bytes(count: int) -> str:
    """``count`` bytes for a person: 23.6 GB."""
    value = float(count)
    for unit in ("bytes", "kB", "MB", "GB", "TB", "PB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} EB"


def check_room(root: pathlib.Path, count: int, shape: tuple[int, ...], itemsize: int = 1) -> None:
    """A DataError unless ``count`` images of ``shape`` (C, H, W), ``itemsize`` bytes a value, fit on the disk of
    the cache folder ``root`` with :data:`DISK_RESERVE` to spare. Writes nothing (``root`` need not exist)."""
    need = count * math.prod(int(s) for s in shape) * itemsize
    existing = root
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    try:
        free = shutil.disk_usage(existing).free
    except OSError:  # unknown: the writes themselves will tell
        return
    if need + DISK_RESERVE > free:
        channels, height, width = shape
        raise DataError(
            f"the image cache needs {_bytes(need)} for {count} images of {height}×{width} with {channels} "
            f"channel(s), but the disk of {root} has {_bytes(free)} free; give a smaller --image-size "
            "(image_size=), or set PROBE_CACHE to a folder on a disk with room"
        )


# The temporary folder of a prepare holds WRITER_LOCK, flock-ed by its writer for as long as it writes: the kernel
# releases the lock when the process dies (SIGKILL and the out-of-memory killer included), so a folder whose lock
# is free was left by a dead writer and is removed the next time the cache is used, while one being written is
# never touched. The lock file is made under another name and renamed once held, so that its name always means
# "held while the writer lives". Without a usable lock (no fcntl, a file system without locks, a folder from
# before locks) a folder is removed once it is older than STALE_AGE_S.
WRITER_LOCK = ".writer.lock"
STALE_AGE_S = 86400.0


def _hold_writer_lock(folder: pathlib.Path) -> int | None:
    """Lock the temporary folder ``folder`` as being written by this process: the file descriptor to close once
    done, None where locks are unavailable."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: the age rule only
        return None
    pending = folder / (WRITER_LOCK + ".new")
    fd = os.open(pending, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # a file system without locks: the age rule only
        os.close(fd)
        pending.unlink(missing_ok=True)
        return None
    os.rename(pending, folder / WRITER_LOCK)
    return fd


def _abandoned(folder: pathlib.Path, now: float) -> bool:
    """Whether the temporary folder ``folder`` was left by a writer that died (see :data:`WRITER_LOCK`)."""
    try:
        import fcntl

        fd = os.open(folder / WRITER_LOCK, os.O_RDWR)
    except (ImportError, OSError):  # no lock to test: the age rule
        return now - folder.stat().st_mtime > STALE_AGE_S
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the close below, before the folder goes
        return True
    except BlockingIOError:  # its writer is alive
        return False
    except OSError:  # a file system without locks
        return now - folder.stat().st_mtime > STALE_AGE_S
    finally:
        os.close(fd)


def remove_abandoned(root: pathlib.Path) -> None:
    """Remove the temporary folders (``.KEY.*.tmp``) under the cache folder ``root`` that prepares left when they
    died (killed, out of memory, power loss); folders that live processes are writing stay."""
    if not root.is_dir():
        return
    now = time.time()
    for folder in root.glob(".*.tmp"):
        try:
            if folder.is_dir() and _abandoned(folder, now):
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # removed meanwhile by another process, or not ours to read
            pass


def _write_part(tmp, part, token, shape, executor, chunk, workers, progress, done0, total):
    """Stream one split into ``<tmp>/<name>_x.npy``; returns (count, labels int64, bad list)."""
    n_items = len(part.items)
    spans = [(s, min(s + chunk, n_items)) for s in range(0, n_items, chunk)]
    labels: list[int] = []
    bad: list[tuple[int, str]] = []
    written = 0
    hist = np.zeros((shape[0], 256), dtype=np.int64)
    dtype = _JOBS[token][2]["dtype"]
    with open(tmp / f"{part.name}_x.npy", "wb") as fh:
        fh.write(_npy_header((n_items, *shape), dtype))
        pending: deque = deque()
        next_span = 0

        def submit() -> None:
            nonlocal next_span
            s, e = spans[next_span]
            next_span += 1
            if executor is None:
                pending.append(_Done(_work(token, part.name, s, e)))
            else:
                pending.append(executor.submit(_work, token, part.name, s, e))

        while next_span < len(spans) and len(pending) < max(1, 2 * workers):
            submit()
        while pending:
            images, got, chunk_bad, chunk_hist = pending.popleft().result()
            if next_span < len(spans):
                submit()
            fh.write(np.ascontiguousarray(images).reshape(-1).data)  # from the array's own buffer, no copy
            hist += chunk_hist
            written += len(images)
            labels += got
            bad += chunk_bad
            if progress is not None:
                progress(done0 + written + len(bad), total)
        fh.seek(0)
        fh.write(_npy_header((written, *shape), dtype))
        fh.truncate(_HEADER_BYTES + written * int(np.prod(shape)) * dtype.itemsize)
        _sync(fh)
    y = np.asarray(labels, dtype=np.int64)
    if part.labels is not None:
        keep = np.ones(n_items, dtype=bool)
        keep[[i for i, _ in bad]] = False
        y = np.asarray(part.labels, dtype=np.int64)[keep]
    return written, y, bad, hist


def _moments(hist: np.ndarray) -> dict[str, list[float]]:
    """Exact per-channel mean and population std (0..255 units) from per-channel histograms."""
    values = np.arange(256, dtype=np.float64)
    n = np.maximum(hist.sum(axis=1), 1).astype(np.float64)
    mean = (hist * values).sum(axis=1) / n
    var = (hist * (values[None, :] - mean[:, None]) ** 2).sum(axis=1) / n
    return {"mean": [float(m) for m in mean], "std": [float(v) for v in np.sqrt(var)]}


class _Done:
    """A finished 'future' for the inline (no pool) path."""

    def __init__(self, value: Any) -> None:
        self._value = value

    def result(self) -> Any:
        return self._value


def _root(cache_dir: str | os.PathLike[str] | None) -> pathlib.Path:
    return pathlib.Path(cache_dir).expanduser().resolve() if cache_dir is not None else default_cache_dir()


def lookup(key: str, cache_dir: str | os.PathLike[str] | None = None) -> ImageData | None:
    """The published entry ``key`` under ``cache_dir`` (default :func:`default_cache_dir`), or None; the temporary
    folders that dead prepares left there are removed first (:func:`remove_abandoned`)."""
    root = _root(cache_dir)
    remove_abandoned(root)
    final = root / key
    return open_cache(final) if (final / "meta.json").is_file() else None


def open_cache(folder: str | os.PathLike[str]) -> ImageData:
    """Map a cache entry written by :func:`build_cache`: copy-on-write memory maps (no copy of the images; pages
    are shared with every process that maps the entry; a write changes this process's view only, never the
    file, and keeps ``torch.from_numpy`` free of its read-only warning)."""
    folder = pathlib.Path(folder)
    try:
        info = json.loads((folder / "meta.json").read_text())
        arrays = {f"{s}_x": np.load(folder / f"{s}_x.npy", mmap_mode="c") for s in ("train", "test")} | {
            f"{s}_y": np.load(folder / f"{s}_y.npy") for s in ("train", "test")
        }
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"the image cache {folder} is damaged ({type(e).__name__}); delete that folder") from e
    meta = dict(info["meta"])
    meta["cache"] = str(folder)
    if meta.get("image_size") is not None:  # entries written before the filter was recorded are bilinear
        meta.setdefault("interpolation", DEFAULT_INTERPOLATION)
    return ImageData(class_names=list(info["class_names"]), meta=meta, **arrays)
