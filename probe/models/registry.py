"""The architecture registry, in the spirit of timm's: names -> model builders.

A builder only builds a model and names its default probe layers. Builders register themselves with
:func:`register_arch` or :func:`register_namespace` when their module is imported; this registry imports
no builder: it lists their modules by path (:data:`BUILTIN_MODULES`, :data:`NAMESPACE_MODULES`) and imports
them on first use.
Every builder takes ``num_classes``, ``in_chans`` and ``input_size`` (H, W) plus its own keyword options.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from ..core.default_points import input_shape_of
from ..core.layers import LayerInfo, discover_layers
from ..errors import ArchitectureError, LayerError

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ArchSpec:
    """A registered architecture: how to build it and which layers to probe by default."""

    name: str
    builder: Builder
    default_layers: Callable[[nn.Module], list[str]] | None = None


_REGISTRY: dict[str, ArchSpec] = {}
# Resolvers for name spaces such as "timm:" and "tv:"; each returns an ArchSpec or None.
_RESOLVERS: dict[str, Callable[[str], ArchSpec | None]] = {}
_LISTERS: dict[str, Callable[[str], list[str]]] = {}


def register_arch(
    name: str, *, default_layers: Callable[[nn.Module], list[str]] | None = None
) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder`` under ``name``; ``default_layers(model)`` names its default probe set."""

    def wrap(builder: Builder) -> Builder:
        _REGISTRY[name] = ArchSpec(name, builder, default_layers)
        return builder

    return wrap


def register_namespace(
    prefix: str,
    resolve: Callable[[str], ArchSpec | None],
    list_names: Callable[[str], list[str]],
) -> None:
    """Register a family of architectures addressed as ``prefix:NAME`` (e.g. ``timm:resnet18``)."""
    _RESOLVERS[prefix] = resolve
    _LISTERS[prefix] = list_names


# The built-in builders first (cheap), then the name spaces (importing timm/torchvision costs seconds).
BUILTIN_MODULES = ("probe.models.paper_cnn",)
NAMESPACE_MODULES = ("probe.models.timm_models", "probe.models.torchvision_models")


def _import_builders(modules: Sequence[str]) -> None:
    for module in modules:
        importlib.import_module(module)


def get_arch(name: str) -> ArchSpec:
    """Resolve an architecture name: a built-in adapter, ``prefix:NAME``, else a timm name."""
    _import_builders(BUILTIN_MODULES)
    if name in _REGISTRY:
        return _REGISTRY[name]
    _import_builders(NAMESPACE_MODULES)
    if name in _REGISTRY:
        return _REGISTRY[name]
    prefix, sep, rest = name.partition(":")
    if sep and prefix in _RESOLVERS:
        spec = _RESOLVERS[prefix](rest)
        if spec is not None:
            return spec
    elif not sep and "timm" in _RESOLVERS:
        spec = _RESOLVERS["timm"](name)
        if spec is not None:
            return spec
    candidates = list_archs()
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"available: {', '.join(sorted(_REGISTRY))}"
    raise ArchitectureError(
        f"unknown architecture '{name}': {hint} (list them with `probe layers --arch NAME` "
        "or probe.list_archs('*pattern*'))"
    )


def list_archs(pattern: str = "*") -> list[str]:
    """Names of the architectures that match the glob ``pattern``."""
    _import_builders(BUILTIN_MODULES + NAMESPACE_MODULES)
    names = [n for n in _REGISTRY if fnmatch.fnmatch(n, pattern)]
    for prefix, lister in _LISTERS.items():
        names += [f"{prefix}:{n}" for n in lister(pattern.split(":", 1)[-1])]
        if ":" in pattern and not pattern.startswith(prefix + ":"):
            names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return sorted(dict.fromkeys(names))


def create_model(
    name: str,
    num_classes: int | None,
    in_chans: int = 3,
    input_size: tuple[int, int] = (32, 32),
    **options,
) -> nn.Module:
    """Build architecture ``name`` with a head of ``num_classes`` outputs (None: a pretrained model's own head)."""
    spec = get_arch(name)
    return spec.builder(num_classes=num_classes, in_chans=in_chans, input_size=tuple(input_size), **options)


def default_layers(name: str, model: nn.Module) -> list[str] | None:
    """The adapter's default probe layers for ``model``, or None when it defines none."""
    spec = get_arch(name)
    return spec.default_layers(model) if spec.default_layers else None


def layer_table(model: nn.Module, input_shape: Sequence[int] | None = None, arch: str | None = None) -> list[LayerInfo]:
    """Discovered points with ``default`` set from the architecture's default set (what `probe layers` shows)."""
    shape = tuple(input_shape) if input_shape is not None else input_shape_of(model)
    if shape is None:
        raise LayerError("cannot discover layers without an input shape: pass input_shape=(C, H, W)")
    info = getattr(model, "quanta_source", None)
    arch = arch or (info.arch if info is not None else None)
    defaults = default_layers(arch, model) if arch else None
    return discover_layers(model, shape, defaults)
