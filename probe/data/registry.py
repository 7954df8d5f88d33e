"""Built-in data sets by name, in the spirit of timm's model registry.

A built-in data set is one module that describes itself with :func:`register_dataset` when it is imported: its
name (and aliases), class names, input shape, loader, presence check, default augmentation and preset. This
registry imports none of them by name: it lists their modules by path (:data:`BUILTIN_DATASET_MODULES`) and
imports them on first use, so adding a data set is one new module plus one line here.
"""

from __future__ import annotations

import difflib
import importlib
import pathlib
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import DataError
from .augment import NATURAL_AUGMENT, AugmentConfig
from .base import BaseData

# The modules whose import registers the built-in data sets, cheap to import (numpy, no torchvision).
BUILTIN_DATASET_MODULES = ("probe.data.digits", "probe.data.cifar", "probe.data.fashion")

Loader = Callable[[pathlib.Path, bool], BaseData]  # (data folder, download) -> the whole base data set
Check = Callable[[pathlib.Path, bool], None]  # (data folder, download): a DataError when the data is missing


def _always_present(data_dir: pathlib.Path, download: bool) -> None:
    return None


@dataclass(frozen=True)
class DatasetInfo:
    """A built-in data set: everything known about it without reading it, and how to read it."""

    name: str
    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]  # (C, H, W)
    load: Loader
    check: Check = _always_present
    augment: AugmentConfig = NATURAL_AUGMENT  # the data set's augmentation when a preset asks for one
    preset: str = "default"  # the preset a request on this data set starts from (probe.settings.PRESETS)
    aliases: tuple[str, ...] = ()
    default_target: str | None = None  # the paper-style target of the whole data set (cifar10 -> cifar100)
    embedded: bool = False  # shipped with a dependency: no data folder is read (digits)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


_REGISTRY: dict[str, DatasetInfo] = {}
_ALIASES: dict[str, str] = {}


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    """Make ``info`` a built-in data set under its name and aliases (lower case)."""
    for name in (info.name, *info.aliases):
        if name != name.lower() or any(c in name for c in "[]/:~ "):
            raise ValueError(f"data set name '{name}' must be lower case, without brackets, slashes, ':' or spaces")
        _ALIASES[name] = info.name
    _REGISTRY[info.name] = info
    return info


def _import_modules() -> None:
    for module in BUILTIN_DATASET_MODULES:
        importlib.import_module(module)


def dataset_names() -> list[str]:
    """Every name a built-in data set answers to (aliases included), sorted."""
    _import_modules()
    return sorted(_ALIASES)


def is_builtin(name: str) -> bool:
    """Whether ``name`` (any case) names a built-in data set or an alias of one."""
    _import_modules()
    return name.strip().lower() in _ALIASES


def canonical_name(name: str) -> str:
    """The registered name of ``name`` or of its alias (``fashion-mnist`` -> ``fashion``)."""
    return get_dataset(name).name


def get_dataset(name: str) -> DatasetInfo:
    """The built-in data set ``name`` (an alias works too); a DataError with the close names otherwise."""
    _import_modules()
    key = name.strip().lower()
    if key in _ALIASES:
        return _REGISTRY[_ALIASES[key]]
    close = difflib.get_close_matches(key, list(_ALIASES), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise DataError(
        f"unknown dataset '{name}'{hint}; known datasets: {', '.join(sorted(_REGISTRY))}, "
        "or an image folder path (e.g. ./flowers), tv:NAME (torchvision) or hf:NAME (Hugging Face)"
    )


def list_datasets() -> list[DatasetInfo]:
    """The built-in data sets, sorted by name."""
    _import_modules()
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def default_augment(name: str) -> AugmentConfig:
    """The augmentation of a data set (a name or a spec such as ``'digits[0-4]'``): a built-in data set's own
    (digits: no flips), else the paper's natural-image augmentation."""
    base = name.split("[", 1)[0].strip()
    return get_dataset(base).augment if is_builtin(base) else NATURAL_AUGMENT
