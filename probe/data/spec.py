"""The dataset spec language: ``digits``, ``cifar10[0-4]``, ``cifar100[0,2,5-7]``; paper-style target pairs.

Images from anywhere are specs too, with the same class subsets: a folder (``./flowers``, ``~/data/pets[0-9]``:
torchvision's ``ImageFolder`` layout, or a ``datasets`` ``save_to_disk`` folder), ``tv:NAME`` (a torchvision
dataset, e.g. ``tv:FashionMNIST[0-4]``) and ``hf:NAME`` (a Hugging Face dataset). Their class count is known
only once the data is read, so their subsets are range-checked when loaded.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ..errors import DataError
from .registry import get_dataset, is_builtin


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset and an optional ordered class subset (``None`` = all classes).

    Constructing one validates it (unknown name, empty subset, out-of-range or repeated class ->
    :class:`DataError`); labels are later re-indexed 0..K-1 in the order of ``classes``.
    """

    name: str
    classes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        external = source_kind(str(self.name).strip())
        name = str(self.name).strip() if external else str(self.name).strip().lower()
        if external:
            if external in ("tv", "hf") and not name[3:].strip():
                raise DataError(f"'{name}' names no dataset; write e.g. 'tv:FashionMNIST' or 'hf:beans'")
            if external in ("tv", "hf"):
                name = name[:3].lower() + name[3:]
        else:
            name = get_dataset(name).name  # an alias becomes the data set's own name; unknown: a DataError
        object.__setattr__(self, "name", name)
        if self.classes is None:
            return
        classes = tuple(int(c) for c in self.classes)
        if not classes:
            raise DataError(f"empty class subset for '{name}'; list at least one class, e.g. '{name}[0-4]'")
        n = get_dataset(name).num_classes if not external else None
        for c in classes:
            if c < 0 or (n is not None and c >= n):
                if n is None:
                    raise DataError(f"class {c} is out of range in '{name}'; class indices start at 0")
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
    def kind(self) -> str:
        """``builtin`` (a registered data set: digits, CIFAR, Fashion-MNIST), ``folder``, ``tv``, ``hf`` or
        ``python`` (data given in Python)."""
        return source_kind(self.name) or "builtin"

    @property
    def num_classes(self) -> int:
        """Number of classes of this (subset of the) dataset (a DataError for all classes of unread images)."""
        if self.classes is not None:
            return len(self.classes)
        if self.kind != "builtin":
            raise DataError(f"the number of classes of '{self.name}' is known only once it is read (load_task)")
        return get_dataset(self.name).num_classes


def source_kind(name: str) -> str | None:
    """``tv``, ``hf``, ``folder`` for images from anywhere, None for a built-in dataset name (or a typo of one).

    A name with a path separator, starting with ``.`` or ``~``, or naming an existing folder is a folder.
    """
    lowered = name.strip().lower()
    if is_builtin(lowered):
        return None
    if lowered.startswith(("tv:", "hf:")):
        return lowered[:2]
    if lowered.startswith("python:"):  # data handed over in Python (a Dataset pair, (x, y) tensors)
        return "python"
    if "/" in name or os.sep in name or name.startswith((".", "~")) or os.path.isdir(name):
        return "folder"
    return None


_SPEC_RE = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*(?:\[(.*)\])?\s*$")
_SUBSET_RE = re.compile(r"^(.*?)\s*\[([^\[\]]*)\]\s*$")


_ITEM_RE = re.compile(r"^(\d+)(?:\s*-\s*(\d+))?$")


def parse_spec(text: str | DatasetSpec) -> DatasetSpec:
    """Parse ``'digits'``, ``'digits[0-4]'``, ``'cifar100[0-49]'``, ``'digits[0-2, 7]'``, ...

    A :class:`DatasetSpec` is returned as is (it was validated when built).
    """
    if isinstance(text, DatasetSpec):
        return text
    text = os.fspath(text) if isinstance(text, os.PathLike) else str(text)
    match = _SPEC_RE.match(text)
    if match is None:
        subset = _SUBSET_RE.match(text)
        if subset is not None and source_kind(subset.group(1).strip()):
            match = subset
        elif source_kind(text.strip()):
            return DatasetSpec(text.strip(), None)
    if match is None:
        raise DataError(
            f"malformed dataset spec '{text}'; write a name with an optional class list, "
            "e.g. 'digits[0-4]' or 'cifar100[0,2,5-7]'"
        )
    name, body = match.group(1).strip(), match.group(2)
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
    """The paper-style target of ``source``: the complement subset, or the data set's registered pair for a
    whole data set (``cifar100`` for ``cifar10``)."""
    spec = parse_spec(source)
    if spec.classes is not None and spec.kind == "builtin":
        rest = tuple(c for c in range(get_dataset(spec.name).num_classes) if c not in set(spec.classes))
        if rest:
            return DatasetSpec(spec.name, rest)
    elif spec.kind == "builtin" and get_dataset(spec.name).default_target is not None:
        return DatasetSpec(str(get_dataset(spec.name).default_target), None)
    raise DataError(
        f"no default target for source '{spec}'; "
        "give a target explicitly, e.g. source 'digits[0-4]' with target 'digits[5-9]'"
    )


def input_shape(spec: str | DatasetSpec) -> tuple[int, int, int]:
    """The (C, H, W) of a built-in dataset's images, known without reading the data."""
    parsed = parse_spec(spec)
    if parsed.kind != "builtin":
        raise DataError(f"the image format of '{parsed.name}' is known only once it is read (load_task)")
    return get_dataset(parsed.name).input_shape
