"""Datasets as tensors in memory, augmented a whole batch at a time.

In the spirit of airbench94 there is no ``DataLoader``: :func:`load_task` returns every split as one
float tensor (move it to the GPU once with :meth:`Split.to`), and :func:`augment_batch` transforms a
whole batch on its device with one affine grid and one flip mask, with no Python loop over samples.

Datasets are named by a small spec language (:func:`parse_spec`): ``digits``, ``cifar10`` and
``cifar100``, optionally restricted to a class subset, e.g. ``digits[0-4]`` or ``cifar100[0-49]``.

* ``digits``: scikit-learn's 1,797 8×8 grey images (shipped with scikit-learn, no download), split
  once, deterministically and stratified, into train and test (20 % of every class).
* ``cifar10`` / ``cifar100``: read from torchvision's folder layout under :func:`resolve_data_dir`,
  with a restricted unpickler that only rebuilds numpy arrays, so a malicious file cannot run code.

Every split is normalised with the per-channel mean/std of the *full* train split of its base dataset,
so two subsets of one dataset (source and target) see identical pixel values for the same image.
Base datasets are cached in memory per (name, folder); :func:`load_task` builds fresh tensors on
every call, so callers own what they get back.
"""

from __future__ import annotations

import difflib
import io
import importlib
import math
import os
import pathlib
import pickle
import re
import socket
import tarfile
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DataError, SettingsError

__all__ = [
    "DatasetSpec",
    "parse_spec",
    "default_target",
    "Split",
    "AugmentConfig",
    "TaskData",
    "load_task",
    "default_augment",
    "augment_batch",
    "resolve_data_dir",
    "clear_cache",
    "KNOWN_DATASETS",
]

# name -> number of classes
KNOWN_DATASETS: dict[str, int] = {"digits": 10, "cifar10": 10, "cifar100": 100}


# --------------------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset and an optional ordered class subset (``None`` = all classes).

    Constructing one validates it (unknown name, empty subset, out-of-range or repeated class ->
    :class:`DataError`); labels are later re-indexed 0..K-1 in the order of ``classes``.
    """

    name: str
    classes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        name = str(self.name).strip().lower()
        if name not in KNOWN_DATASETS:
            close = difflib.get_close_matches(name, KNOWN_DATASETS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise DataError(f"unknown dataset '{self.name}'{hint}; known datasets: {', '.join(KNOWN_DATASETS)}")
        object.__setattr__(self, "name", name)
        if self.classes is None:
            return
        classes = tuple(int(c) for c in self.classes)
        n = KNOWN_DATASETS[name]
        if not classes:
            raise DataError(f"empty class subset for '{name}'; list at least one class, e.g. '{name}[0-4]'")
        for c in classes:
            if not 0 <= c < n:
                raise DataError(f"class {c} is out of range: {name} has classes 0-{n - 1}; pick classes in that range")
        seen: set[int] = set()
        for c in classes:
            if c in seen:
                raise DataError(f"class {c} is listed twice in the subset of '{name}'; list each class once")
            seen.add(c)
        object.__setattr__(self, "classes", classes)

    def __str__(self) -> str:
        if self.classes is None:
            return self.name
        parts: list[str] = []
        start = prev = self.classes[0]
        for c in (*self.classes[1:], None):
            if c is not None and c == prev + 1:
                prev = c
                continue
            parts.append(str(start) if start == prev else f"{start},{prev}" if prev == start + 1 else f"{start}-{prev}")
            if c is not None:
                start = prev = c
        return f"{self.name}[{','.join(parts)}]"

    @property
    def num_classes(self) -> int:
        """Number of classes of this (subset of the) dataset."""
        return KNOWN_DATASETS[self.name] if self.classes is None else len(self.classes)


_SPEC_RE = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*(?:\[(.*)\])?\s*$")
_ITEM_RE = re.compile(r"^(\d+)(?:\s*-\s*(\d+))?$")


def parse_spec(text: str | DatasetSpec) -> DatasetSpec:
    """Parse ``'digits'``, ``'digits[0-4]'``, ``'cifar100[0-49]'``, ``'digits[0-2, 7]'``, ...

    A :class:`DatasetSpec` is returned as is (it was validated when built).
    """
    if isinstance(text, DatasetSpec):
        return text
    match = _SPEC_RE.match(str(text))
    if match is None:
        raise DataError(
            f"malformed dataset spec '{text}'; write a name with an optional class list, "
            "e.g. 'digits[0-4]' or 'cifar100[0,2,5-7]'"
        )
    name, body = match.groups()
    if body is None:
        return DatasetSpec(name, None)
    if not body.strip():
        raise DataError(f"empty class subset in '{text}'; list at least one class, e.g. '{name.lower()}[0-4]'")
    classes: list[int] = []
    for item in body.split(","):
        m = _ITEM_RE.match(item.strip())
        if m is None:
            raise DataError(
                f"malformed class list '[{body}]' in '{text}'; "
                "use indices and ascending ranges, e.g. '[0-4]' or '[1,3,5-7]'"
            )
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise DataError(f"descending range '{item.strip()}' in '{text}'; write it ascending, e.g. '{hi}-{lo}'")
        classes.extend(range(lo, hi + 1))
    return DatasetSpec(name, tuple(classes))


def default_target(source: str | DatasetSpec) -> DatasetSpec:
    """The paper-style target of ``source``: the complement subset, or ``cifar100`` for ``cifar10``."""
    spec = parse_spec(source)
    if spec.classes is not None:
        rest = tuple(c for c in range(KNOWN_DATASETS[spec.name]) if c not in set(spec.classes))
        if rest:
            return DatasetSpec(spec.name, rest)
    elif spec.name == "cifar10":
        return DatasetSpec("cifar100", None)
    raise DataError(
        f"no default target for source '{spec}'; "
        "give a target explicitly, e.g. source 'digits[0-4]' with target 'digits[5-9]'"
    )


# ------------------------------------------------------------------------------ splits and tasks


@dataclass
class Split:
    """One split: ``x`` float32 (N, C, H, W), normalised; ``y`` int64 (N,) labels in 0..K-1."""

    x: torch.Tensor
    y: torch.Tensor

    def to(self, device: torch.device | str) -> Split:
        """This split with both tensors on ``device``."""
        return Split(self.x.to(device), self.y.to(device))

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation of a batch (see :func:`augment_batch`).

    The paper's "crop" is realised as ``shift`` + ``zoom``: zooming in by up to ``zoom`` and shifting
    by up to ``shift`` shows a randomly placed crop of a rescaled image; borders that come into view
    are filled by reflection.
    """

    shift: float = 0.0  # max translation, as a fraction of the image size
    rotation: float = 0.0  # max rotation in degrees
    zoom: float = 0.0  # max relative scale change: 0.1 -> scale in [0.9, 1.1]
    flip: bool = False  # random horizontal flip (probability 1/2)

    def __post_init__(self) -> None:
        checks = (
            ("shift", self.shift, 0.0 <= self.shift < 1.0, "[0, 1)"),
            ("rotation", self.rotation, 0.0 <= self.rotation <= 180.0, "[0, 180]"),
            ("zoom", self.zoom, 0.0 <= self.zoom < 1.0, "[0, 1)"),
        )
        for field_name, value, ok, valid in checks:
            if not ok:  # NaN fails every comparison
                raise SettingsError(f"augmentation {field_name}={value} is out of range; use a value in {valid}")

    @property
    def enabled(self) -> bool:
        """Whether the config changes anything at all."""
        return bool(self.shift or self.rotation or self.zoom or self.flip)

    @property
    def geometric(self) -> bool:
        """Whether the config needs the affine (rotation, zoom, shift) path."""
        return bool(self.shift or self.rotation or self.zoom)


@dataclass
class TaskData:
    """A dataset (or class subset) ready for training: both splits plus what a model needs to know."""

    spec: DatasetSpec
    train: Split
    test: Split
    num_classes: int
    in_chans: int
    input_size: tuple[int, int]  # (H, W)
    class_names: list[str]
    augment: AugmentConfig  # the dataset's sensible default

    def to(self, device: torch.device | str) -> TaskData:
        """This task with both splits on ``device``."""
        return replace(self, train=self.train.to(device), test=self.test.to(device))


def default_augment(name: str) -> AugmentConfig:
    """The default augmentation of a dataset (a name or a spec such as ``'digits[0-4]'``).

    Digits are not mirror-symmetric, so they get no flips; CIFAR gets the paper's rotation, shift,
    crop (= shift + zoom), zoom and flip.
    """
    base = parse_spec(name).name
    if base == "digits":
        return AugmentConfig(shift=0.125, rotation=10.0, zoom=0.1, flip=False)
    return AugmentConfig(shift=0.125, rotation=10.0, zoom=0.1, flip=True)


# -------------------------------------------------------------------------------- augmentation


def augment_batch(x: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Randomly augment a batch (N, C, H, W) on its device, every sample with its own parameters.

    One affine grid per batch (rotation, zoom, shift) sampled with ``F.grid_sample`` (bilinear,
    reflection padding), then horizontal flips through a per-sample mask. All randomness comes from
    ``generator`` (which must live on ``x.device``): the same seed gives the same output bit for bit
    on CPU. Each call draws 5·N numbers whatever the config. With ``config.enabled`` False, ``x``
    itself is returned and the generator is not used; with no rotation/zoom/shift the affine step is
    skipped, so flip-only augmentation is exact.
    """
    if not config.enabled:
        return x
    if x.dim() != 4 or not x.is_floating_point():
        raise DataError(f"augment_batch needs a float batch (N, C, H, W), got {x.dtype} of shape {tuple(x.shape)}")
    if generator.device.type != x.device.type:
        raise DataError(
            f"the augmentation generator is on {generator.device} but the batch is on {x.device}; "
            "create it with torch.Generator(device=x.device)"
        )
    n, _, h, w = x.shape
    u = torch.rand(n, 5, generator=generator, device=x.device) * 2 - 1  # uniform in [-1, 1)
    out = x
    if config.geometric:
        angle = u[:, 0] * math.radians(config.rotation)
        scale = 1 + u[:, 1] * config.zoom
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        # Rotation in pixel space, written in normalised grid coordinates (exact for non-square images);
        # a shift of a fraction f of the image is 2f in grid coordinates, which span [-1, 1].
        theta = torch.stack(
            [
                torch.stack([cos, -sin * (h / w), u[:, 2] * 2 * config.shift], dim=1),
                torch.stack([sin * (w / h), cos, u[:, 3] * 2 * config.shift], dim=1),
            ],
            dim=1,
        ).to(x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if config.flip:
        mirror = (u[:, 4] < 0).view(n, 1, 1, 1)
        out = torch.where(mirror, out.flip(-1), out)
    return out


# ------------------------------------------------------------------------------ loading


@dataclass(frozen=True)
class _Base:
    """A full base dataset as loaded from disk: raw uint8 images and the train normalisation."""

    train_x: torch.Tensor  # uint8 (N, C, H, W)
    train_y: torch.Tensor  # int64 (N,)
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: torch.Tensor  # float32 (C,), raw pixel units
    std: torch.Tensor
    class_names: tuple[str, ...]


_CACHE: dict[tuple[str, str], _Base] = {}


def clear_cache() -> None:
    """Forget every base dataset loaded so far (the next :func:`load_task` re-reads from disk)."""
    _CACHE.clear()


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> pathlib.Path:
    """The data folder: ``data_dir`` if given, else ``$PROBE_DATA``, else ``~/.cache/quanta-probe/data``."""
    chosen = data_dir if data_dir is not None else os.environ.get("PROBE_DATA") or "~/.cache/quanta-probe/data"
    return pathlib.Path(chosen).expanduser().resolve()


def load_task(
    spec: str | DatasetSpec,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
) -> TaskData:
    """Load a dataset or class subset as in-memory tensors (on the CPU; see :meth:`TaskData.to`).

    The base dataset is read once per (name, folder) and cached; every call returns new tensors.
    ``download=True`` fetches a missing CIFAR archive with torchvision (digits needs no download).
    """
    spec = parse_spec(spec)
    if spec.name == "digits":
        key = ("digits", "")
    else:
        key = (spec.name, str(resolve_data_dir(data_dir)))
    base = _CACHE.get(key)
    if base is None:
        base = _load_digits() if spec.name == "digits" else _load_cifar(spec.name, pathlib.Path(key[1]), download)
        _CACHE[key] = base
    classes = list(range(len(base.class_names))) if spec.classes is None else list(spec.classes)
    _, c, h, w = base.train_x.shape
    return TaskData(
        spec=spec,
        train=_select(base.train_x, base.train_y, base, spec.classes),
        test=_select(base.test_x, base.test_y, base, spec.classes),
        num_classes=len(classes),
        in_chans=c,
        input_size=(h, w),
        class_names=[base.class_names[i] for i in classes],
        augment=default_augment(spec.name),
    )


def _select(x: torch.Tensor, y: torch.Tensor, base: _Base, classes: tuple[int, ...] | None) -> Split:
    """The samples of ``classes`` (all if None), normalised, with labels re-indexed in subset order."""
    if classes is not None:
        remap = torch.full((len(base.class_names),), -1, dtype=torch.int64)
        remap[list(classes)] = torch.arange(len(classes))
        keep = remap[y] >= 0
        x, y = x[keep], remap[y[keep]]
    else:
        y = y.clone()
    x = (x.float() - base.mean.view(1, -1, 1, 1)) / base.std.view(1, -1, 1, 1)
    return Split(x.contiguous(), y)


def _channel_stats(x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact per-channel mean and (population) std of uint8 images (N, C, H, W), via histograms."""
    values = np.arange(256, dtype=np.float64)
    means, stds = [], []
    for ch in range(x.shape[1]):
        hist = np.bincount(x[:, ch].ravel(), minlength=256).astype(np.float64)
        mean = (hist * values).sum() / hist.sum()
        var = (hist * (values - mean) ** 2).sum() / hist.sum()
        means.append(mean)
        stds.append(math.sqrt(var) if var > 0 else 1.0)
    return torch.tensor(means, dtype=torch.float32), torch.tensor(stds, dtype=torch.float32)


def _make_base(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, names: tuple[str, ...]
) -> _Base:
    mean, std = _channel_stats(train_x)
    return _Base(
        torch.from_numpy(np.ascontiguousarray(train_x)),
        torch.from_numpy(np.asarray(train_y, dtype=np.int64)),
        torch.from_numpy(np.ascontiguousarray(test_x)),
        torch.from_numpy(np.asarray(test_y, dtype=np.int64)),
        mean,
        std,
        names,
    )


# ---- digits

DIGITS_TEST_FRACTION = 0.2


def _digits_indices(target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split of the digits: (train, test) indices, each ascending.

    Per class, in class order, ``RandomState(0)`` permutes the class's indices and the first
    ``round(0.2 * count)`` go to test; numpy guarantees this stream is the same everywhere.
    """
    rng = np.random.RandomState(0)
    test: list[np.ndarray] = []
    for c in range(10):
        idx = np.flatnonzero(target == c)
        test.append(rng.permutation(idx)[: int(round(DIGITS_TEST_FRACTION * len(idx)))])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(target)), test_idx)
    return train_idx, test_idx


def _load_digits() -> _Base:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.data.reshape(-1, 1, 8, 8).astype(np.uint8)  # values 0..16
    target = digits.target.astype(np.int64)
    train, test = _digits_indices(target)
    return _make_base(images[train], target[train], images[test], target[test], tuple(str(i) for i in range(10)))


# ---- CIFAR


@dataclass(frozen=True)
class _CifarLayout:
    title: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str
    archive: str
    torchvision_class: str


_CIFAR: dict[str, _CifarLayout] = {
    "cifar10": _CifarLayout(
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
    "cifar100": _CifarLayout(
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


def _read_batch(path: pathlib.Path, layout: _CifarLayout, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
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


def _load_cifar(name: str, root: pathlib.Path, download: bool) -> _Base:
    layout = _CIFAR[name]
    folder = root / layout.folder
    if not folder.is_dir():
        if (root / layout.archive).is_file():
            _extract(root / layout.archive, root)
        elif download:
            _download(layout, root)
        if not folder.is_dir():
            raise DataError(
                f"{layout.title} not found: {folder} does not exist; pass download=True (CLI: --download), "
                f"put torchvision's {layout.archive} or its extracted {layout.folder} folder in {root}, "
                "or set PROBE_DATA to the folder that holds it"
            )
    for file in (*layout.train_files, layout.test_file, layout.meta_file):
        if not (folder / file).is_file():
            raise DataError(
                f"{layout.title} is incomplete: {folder / file} is missing; delete {folder} and pass "
                f"download=True (CLI: --download), or put torchvision's {layout.archive} in {root}"
            )
    n = KNOWN_DATASETS[name]
    parts = [_read_batch(folder / f, layout, n) for f in layout.train_files]
    test_x, test_y = _read_batch(folder / layout.test_file, layout, n)
    meta = _read_pickle(folder / layout.meta_file)
    names = meta.get(layout.names_key)
    if not isinstance(names, list) or len(names) != n:
        raise DataError(f"{folder / layout.meta_file} has no list of {n} '{layout.names_key}'; {_REFETCH}")
    class_names = tuple(s.decode("latin1") if isinstance(s, bytes) else str(s) for s in names)
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    return _make_base(train_x, train_y, test_x, test_y, class_names)


def _extract(archive: pathlib.Path, root: pathlib.Path) -> None:
    """Unpack torchvision's CIFAR archive into ``root`` (only plain files and folders inside it)."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(root, filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"cannot extract {archive} ({type(e).__name__}: {e}); delete it and download it again") from e


def _download(layout: _CifarLayout, root: pathlib.Path) -> None:
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
