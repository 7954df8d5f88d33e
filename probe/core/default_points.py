"""Default probe sets: which of a model's discovered points a scan probes when no layers are named.

The generic heuristics, for any model an adapter built, apart from discovery itself (:mod:`probe.core.layers`).
A family's own rule lives with its builder, as the registry's ``default_layers`` callable (timm's ResNets in
:mod:`probe.models.timm_models`).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .hooks import INPUT_SUFFIX
from .layers import GATE_ACTIVATIONS, SQUEEZE_EXCITE, LayerInfo, activation_key, discover_layers

# Up to this many points, the generic default set is every (non-gate) point.
GENERIC_DEFAULT_MAX = 16


def default_points(model: nn.Module, layers: Sequence[LayerInfo]) -> list[str]:
    """A sensible default probe set for ``model`` among its discovered ``layers``.

    - blocks with an MLP named ``mlp.fc1`` (timm's transformers and ConvNeXts): each block's MLP hidden
      pre-activation;
    - anything else: every point outside squeeze-excitation gates when there are at most 16, else the
      first point and the last point of each numbered stage/block (``features.5``, ``blocks.3``, ``layer2.1``).
    """
    names = [layer.name for layer in layers]
    if not names:
        return []
    mlp = [n for n in names if n.endswith(".mlp.fc1")]
    if mlp:
        return mlp
    modules = dict(model.named_modules())
    eligible = [
        layer.name
        for layer in layers
        if activation_key(layer.activation) not in GATE_ACTIVATIONS
        and not _inside_squeeze_excite(layer.name.removesuffix(INPUT_SUFFIX), modules)
    ]
    if len(eligible) <= GENERIC_DEFAULT_MAX:
        return eligible
    last_of_group: dict[str, str] = {}
    for name in eligible:
        last_of_group[_stage_key(name)] = name
    chosen = {eligible[0], *last_of_group.values()}
    return [n for n in eligible if n in chosen]


def _inside_squeeze_excite(module_name: str, modules: dict[str, nn.Module]) -> bool:
    parts = module_name.split(".")
    return any(
        SQUEEZE_EXCITE.search(type(modules[".".join(parts[:i])]).__name__)
        for i in range(1, len(parts) + 1)
        if ".".join(parts[:i]) in modules
    )


def _stage_key(name: str) -> str:
    """``features.5.block.1.0`` -> ``features.5``; ``blocks.3.2.conv_pw`` -> ``blocks.3.2``; ``bn1`` -> ``bn1``."""
    parts = name.removesuffix(INPUT_SUFFIX).split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            end = i
            while end + 1 < len(parts) and parts[end + 1].isdigit():
                end += 1
            return ".".join(parts[: end + 1])
    return name


def input_shape_of(model: nn.Module) -> tuple[int, int, int] | None:
    """The (C, H, W) a model was built for: recorded by the adapters' builders or in its SourceInfo."""
    shape = getattr(model, "quanta_input_shape", None)
    if shape is not None:
        return tuple(shape)
    info = getattr(model, "quanta_source", None)
    if info is not None and info.in_chans is not None and info.input_size is not None:
        return (info.in_chans, *info.input_size)
    return None


def adapter_layers(model: nn.Module) -> list[LayerInfo]:
    """The discovered points of a model built by an adapter, at the input shape it was built for."""
    shape = input_shape_of(model)
    if shape is None:  # not built by an adapter: the first conv's channels at ImageNet size
        convs = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
        shape = (convs[0].in_channels if convs else 3, 224, 224)
    return discover_layers(model, shape)


def adapter_defaults(model: nn.Module) -> list[str]:
    """The generic default probe set of a model built by an adapter: :func:`default_points` of its points."""
    return default_points(model, adapter_layers(model))
