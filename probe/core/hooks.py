"""Hook wiring: capture the source's pre-activation at a named layer and mix it into the target's.

A layer is a dotted name from ``named_modules()``: ``"name"`` mixes that module's output,
``"name:input"`` mixes its (first) input through a forward pre-hook, for pre-activations that are no
module's output (e.g. the residual sum entering a block's final activation).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import LayerError, ShapeMismatchError
from .gate import QuantaGate

INPUT_SUFFIX = ":input"


@dataclass(frozen=True)
class LayerPoint:
    """A resolved layer name: the module and whether its input or output is the probed tensor."""

    layer: str
    module_name: str
    module: nn.Module
    on_input: bool


class StopForward(Exception):
    """Raised by the capture hook to end the source's forward once layer n is reached."""


def resolve_layer(model: nn.Module, layer: str) -> LayerPoint:
    """Find ``layer`` in ``model``; an unknown name raises LayerError listing close matches."""
    module_name, on_input = layer, False
    if layer.endswith(INPUT_SUFFIX):
        module_name, on_input = layer[: -len(INPUT_SUFFIX)], True
    modules = dict(model.named_modules())
    if module_name and module_name in modules:
        return LayerPoint(layer, module_name, modules[module_name], on_input)
    names = [n for n in modules if n]
    close = difflib.get_close_matches(module_name, names, n=5, cutoff=0.4)
    if not close:
        close = [n for n in names if module_name and module_name.split(".")[-1] in n][:5]
    hint = f"closest: {', '.join(close)}" if close else f"e.g. {', '.join(names[:5])}"
    raise LayerError(f"no layer named '{layer}' in {type(model).__name__} ({hint}); list them with `probe layers`")


def _register(point: LayerPoint, fn) -> torch.utils.hooks.RemovableHandle:
    """Register ``fn(tensor) -> tensor | None`` on the module's input or output."""
    if point.on_input:

        def pre_hook(module, args):
            if not args or not torch.is_tensor(args[0]):
                raise LayerError(f"'{point.layer}': the module's first input is not a tensor")
            new = fn(args[0])
            return None if new is None else (new, *args[1:])

        return point.module.register_forward_pre_hook(pre_hook)

    def hook(module, args, output):
        if not torch.is_tensor(output):
            raise LayerError(
                f"'{point.layer}' outputs a {type(output).__name__}, not a tensor; probe one of its submodules"
            )
        return fn(output)

    return point.module.register_forward_hook(hook)


@torch.no_grad()
def source_forward(source: nn.Module, layer: str | LayerPoint, x: torch.Tensor, truncate: bool = True) -> torch.Tensor:
    """The source's tensor at ``layer`` for input ``x``, without autograd.

    With ``truncate`` the forward stops as soon as the tensor is captured (nothing after layer n runs,
    so no in-place activation can overwrite it); otherwise the whole model runs and the tensor is cloned.
    """
    point = layer if isinstance(layer, LayerPoint) else resolve_layer(source, layer)
    captured: list[torch.Tensor] = []

    def grab(tensor: torch.Tensor) -> None:
        if captured:
            return None
        captured.append(tensor if truncate else tensor.clone())
        if truncate:
            raise StopForward

    handle = _register(point, grab)
    try:
        source(x)
    except StopForward:
        pass
    finally:
        handle.remove()
    if not captured:
        raise LayerError(f"'{point.layer}' did not run in the source's forward pass; pick a layer that does")
    return captured[0]


class QuantaWiring:
    """Source + target + gate at one layer. Call it like the target: ``logits = wiring(x)``."""

    def __init__(self, source: nn.Module, target: nn.Module, layer: str, gate: QuantaGate) -> None:
        self.source, self.target, self.gate, self.layer = source, target, gate, layer
        self.source_point = resolve_layer(source, layer)
        self.target_point = resolve_layer(target, layer)
        self._pending: torch.Tensor | None = None
        self._calls = 0

    def _mix(self, z_target: torch.Tensor) -> torch.Tensor:
        self._calls += 1
        if self._calls > 1:
            raise LayerError(
                f"'{self.layer}' runs more than once in one forward pass (a shared module); probe a point that runs "
                "once, e.g. the module feeding it or 'NAME:input' of the block's own activation (see `probe layers`)"
            )
        z_source = self._pending
        if z_source is None:
            raise LayerError(f"no source tensor for '{self.layer}': call the wiring object, not the target directly")
        if z_source.shape != z_target.shape:
            raise ShapeMismatchError(
                f"at '{self.layer}' the source's tensor has shape {tuple(z_source.shape)} but the target's has "
                f"{tuple(z_target.shape)}; source and target must share the architecture and input size"
            )
        return self.gate(z_source, z_target)

    def source_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen source's tensor at the layer (truncated forward, no autograd)."""
        return source_forward(self.source, self.source_point, x)

    def __call__(self, x: torch.Tensor, z_source: torch.Tensor | None = None) -> torch.Tensor:
        """Target logits for ``x``; ``z_source`` skips the source when its tensor is already known."""
        self._pending = self.source_tensor(x) if z_source is None else z_source
        self._calls = 0
        try:
            out = self.target(x)
            if self._calls == 0:
                raise LayerError(f"'{self.layer}' did not run in the target's forward pass; pick a layer that does")
            return out
        finally:
            self._pending = None


@contextmanager
def quanta_hooks(source: nn.Module, target: nn.Module, layer: str, gate: QuantaGate) -> Iterator[QuantaWiring]:
    """Wire ``gate`` between ``source`` and ``target`` at ``layer`` for the duration of the block.

    The source is put in eval mode (BatchNorm uses its running statistics and never updates them) and runs
    without autograd; on exit every hook is removed and the source's train/eval mode restored.
    """
    wiring = QuantaWiring(source, target, layer, gate)
    was_training = source.training
    source.eval()
    handle = _register(wiring.target_point, wiring._mix)
    try:
        yield wiring
    finally:
        handle.remove()
        source.train(was_training)
