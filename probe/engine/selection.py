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


def default_probe_layers(model: nn.Module, input_shape: Sequence[int] | None = None) -> list[str]:
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
        chosen = default_probe_layers(model, input_shape)
    else:
        patterns = [layers] if isinstance(layers, str) else list(layers)
        chosen = expand_layers(model, patterns, lambda: all_layers(model, input_shape))
    check_layers(model, chosen, input_shape)
    return chosen


def deepest_side(model: nn.Module, layers: str | Sequence[str] | None, input_shape: Sequence[int]) -> int | None:
    """The smallest spatial side among the feature maps of the probed layers at ``input_shape`` (None: no maps)."""
    chosen = choose_layers(model, layers, input_shape)
    shapes = {info.name: info.shape for info in discover_layers(model, tuple(input_shape))}
    sides = [min(shapes[name][1:]) for name in chosen if len(shapes.get(name, ())) == 3]
    return min(sides) if sides else None


def smallest_input_size(
    model: nn.Module, layers: str | Sequence[str] | None, input_shape: Sequence[int], limit: int = 1024
) -> int | None:
    """The smallest square input size at which every probed layer's maps are at least 2×2, when the data's own
    size (``input_shape``) gives 1×1 maps; None when the native size is fine or nothing larger helps."""
    chans, height, width = input_shape

    def side(size: int) -> int:
        try:
            found = deepest_side(model, layers, (chans, size, size))
        except Exception:  # a model that takes one input size only (a ViT): leave the size alone
            return -1
        return 2 if found is None else found

    if (deepest_side(model, layers, input_shape) or 2) >= 2:
        return None
    low, high = min(height, width), 2 * min(height, width)
    while side(high) < 2:
        if side(high) < 0 or high >= limit:
            return None
        low, high = high, 2 * high
    while high - low > 1:  # the smallest size that works, between a failing low and a working high
        middle = (low + high) // 2
        low, high = (low, middle) if side(middle) >= 2 else (middle, high)
    return high
