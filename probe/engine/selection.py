"""Which layers a scan probes: names and glob patterns, or the architecture's defaults."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence

from torch import nn

from ..core.default_points import input_shape_of
from ..core.hooks import resolve_layer
from ..core.layers import check_layers, discover_layers
from ..errors import LayerError
from ..models.checkpoint import source_info
from ..models.registry import default_layers


def check_layer_list(layers: str | Sequence[str] | None) -> None:
    """A LayerError for a layer list that was given but is empty (None means: the defaults)."""
    if layers is not None and not isinstance(layers, str) and not list(layers):
        raise LayerError(
            "the layer list is empty: name at least one layer (e.g. conv1) or leave it out for the defaults"
        )


def probeable_layers(model: nn.Module, input_shape: Sequence[int] | None = None) -> list[str]:
    """The default probe layers: the adapter's set when the model has one, else every discovered point."""
    info = source_info(model)
    if info is not None and info.arch is not None:
        layers = default_layers(info.arch, model)
        if layers is not None:
            return layers
    input_shape = input_shape_of(model) if input_shape is None else input_shape
    if input_shape is None:
        raise LayerError("cannot discover layers without an input shape: pass layers=[...] or a target task")
    return [layer.name for layer in discover_layers(model, tuple(input_shape)) if layer.default]


def all_layers(model: nn.Module, input_shape: Sequence[int]) -> list[str]:
    """Every discovered probe point of ``model`` in forward order (what glob patterns match)."""
    return [layer.name for layer in discover_layers(model, tuple(input_shape))]


def expand_layers(model: nn.Module, patterns: Sequence[str], candidates: Callable[[], Sequence[str]]) -> list[str]:
    """Names and glob patterns → concrete layer names (checked); globs match ``candidates()`` in forward order."""
    check_layer_list(patterns)
    layers: list[str] = []
    known: list[str] | None = None
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            known = list(candidates()) if known is None else known
            matched = [name for name in known if fnmatch.fnmatch(name, pattern)]
            if not matched:
                raise LayerError(f"no probeable layer matches '{pattern}'; available: {', '.join(known)}")
            layers += matched
        else:
            resolve_layer(model, pattern)
            layers.append(pattern)
    return list(dict.fromkeys(layers))


def choose_layers(model: nn.Module, layers: str | Sequence[str] | None, input_shape: Sequence[int]) -> list[str]:
    """The layers a scan probes (checked to be probeable): ``layers`` expanded, or the model's defaults."""
    if layers is None:
        chosen = probeable_layers(model, input_shape)
    else:
        patterns = [layers] if isinstance(layers, str) else list(layers)
        chosen = expand_layers(model, patterns, lambda: all_layers(model, input_shape))
    check_layers(model, chosen, input_shape)
    return chosen
