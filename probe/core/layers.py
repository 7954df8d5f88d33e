"""Layer discovery: the points of a model where QUANTA can mix pre-activations.

One dry-run forward (eval mode, no autograd, hooks on every module) records which tensor enters
each activation. A probeable point is a pre-activation with a unique name:

- the output of a conv / linear / normalisation module that feeds an activation (``layer1.0.bn1``);
- ``ACT:input`` — the input of an activation module when no module outputs that tensor, e.g. a
  residual sum entering a block's final activation (``layer1.0.act2:input`` in timm's ResNet).

A tensor that is modified in place after a module produced it (``x += shortcut``) is no longer that
module's output: tensor versions are tracked, so ``bn2`` of a residual block is never offered for the
sum. Modules that run more than once per forward (a shared ``relu``) are never offered, and the
classifier head is never a probe layer.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import LayerError
from .hooks import INPUT_SUFFIX, resolve_layer
from .input_size import input_size_error
from .surgery import find_head

_ACTIVATION_NAMES = {
    "relu",
    "relu6",
    "leakyrelu",
    "prelu",
    "rrelu",
    "elu",
    "selu",
    "celu",
    "gelu",
    "gelutanh",
    "quickgelu",
    "silu",
    "swish",
    "mish",
    "hardswish",
    "hardsigmoid",
    "hardmish",
    "sigmoid",
    "tanh",
    "hardtanh",
    "softplus",
    "softsign",
    "starrelu",
    "squaredrelu",
    "threshold",
}
_FUNCTIONAL_ACTIVATIONS = {
    "relu",
    "relu_",
    "relu6",
    "leaky_relu",
    "leaky_relu_",
    "elu",
    "elu_",
    "selu",
    "selu_",
    "celu",
    "celu_",
    "gelu",
    "silu",
    "mish",
    "hardswish",
    "hardsigmoid",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "tanh_",
    "softplus",
    "hardtanh",
    "hardtanh_",
    "prelu",
    "rrelu",
    "rrelu_",
}
GATE_ACTIVATIONS = {"sigmoid", "hardsigmoid", "sigmoid_"}  # activations that gate (squeeze-excitation), not features
SQUEEZE_EXCITE = re.compile(r"(?i:squeeze|excit)|^SE[A-Z]|^Eca[A-Z]|^CBAM")


@dataclass
class LayerInfo:
    """A probeable point: its name, what produces the tensor, the tensor's shape (without batch)."""

    name: str
    kind: str  # "conv", "linear", "norm", or "act-input" (the input of an activation module)
    shape: tuple
    default: bool
    module_type: str  # class of the producing module (of the activation for "act-input")
    activation: str = ""  # the activation the pre-activation feeds


# ------------------------------------------------------------------------------------------ module kinds


def activation_key(class_name: str) -> str:
    """``HardSwishMe`` -> ``hardswish``; ``ReLU`` -> ``relu``."""
    name = class_name.lower()
    return name[:-2] if name.endswith("me") and name[:-2] in _ACTIVATION_NAMES else name


def is_activation(module: nn.Module) -> bool:
    """True for element-wise activation modules (torch's, timm's, or any class named like one)."""
    return activation_key(type(module).__name__) in _ACTIVATION_NAMES


def module_kind(module: nn.Module) -> str | None:
    """``conv``, ``linear`` or ``norm`` for modules whose output can be a pre-activation, else None."""
    if any(is_activation(m) for m in module.modules()):
        return None  # e.g. timm's BatchNormAct2d: its output is already activated
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, (nn.Linear, nn.Bilinear)):
        return "linear"
    norms = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
    if isinstance(module, norms) or (
        not any(True for _ in module.children()) and "norm" in type(module).__name__.lower()
    ):
        return "norm"
    return None


# ------------------------------------------------------------------------------------------ the dry run


@dataclass
class _Point:
    name: str
    kind: str
    shape: tuple
    module_type: str
    activation: str
    order: int
    owner: str  # the module whose single execution this point needs


@dataclass
class _Trace:
    calls: Counter
    points: dict[str, _Point]
    call_inputs: dict[str, list[tuple[str | None, str | None]]]  # per module call: see _Recorder.describe
    output_order: dict[str, int]  # first output event of each module
    head: str | None


class _Recorder(TorchFunctionMode):
    """Hooks every module; follows tensors by (identity, version) to find what feeds each activation."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.names = {module: name for name, module in model.named_modules()}
        self.calls: Counter = Counter()
        self.events = 0
        self.keep: list[torch.Tensor] = []  # keeps recorded tensors alive, so ids are never reused
        self.produced: dict[int, list[tuple[str, int, bool, int]]] = {}  # id -> (module, version, passthrough, event)
        self.entered: dict[str, list[tuple[int, int]]] = {}
        self.call_inputs: dict[str, list[tuple[str | None, str | None]]] = {}
        self.output_order: dict[str, int] = {}
        self.act_depth = 0
        self.feeds: list[tuple[str | None, str, torch.Tensor, tuple[str, int] | None, int]] = []
        self.handles: list = []
        for module, name in self.names.items():
            if name:
                self.handles.append(module.register_forward_pre_hook(self._pre))
                self.handles.append(module.register_forward_hook(self._post))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def producer(self, tensor: torch.Tensor) -> tuple[str, int] | None:
        """The first module that output exactly this tensor state (not merely passed it through)."""
        version = tensor._version
        for name, recorded_version, passthrough, event in self.produced.get(id(tensor), ()):
            if recorded_version == version and not passthrough:
                return name, event
        return None

    def describe(self, tensor: torch.Tensor | None, source: tuple[str, int] | None) -> tuple[str | None, str | None]:
        """(module whose output this is, module whose output this was before an in-place change)."""
        if tensor is None or source is not None:
            return (source[0] if source else None, None)
        earlier = [name for name, _, passthrough, _ in self.produced.get(id(tensor), ()) if not passthrough]
        return (None, earlier[0] if earlier else None)

    def _pre(self, module: nn.Module, args: tuple) -> None:
        name = self.names[module]
        self.events += 1
        self.calls[name] += 1
        first = args[0] if args and torch.is_tensor(args[0]) else None
        self.entered.setdefault(name, []).append((id(first), first._version) if first is not None else (0, -1))
        source = self.producer(first) if first is not None else None
        self.call_inputs.setdefault(name, []).append(self.describe(first, source))
        if is_activation(module):
            self.act_depth += 1
            if first is not None:
                self.keep.append(first)
                self.feeds.append((name, type(module).__name__, first, source, self.events))

    def _post(self, module: nn.Module, args: tuple, output) -> None:
        name = self.names[module]
        self.events += 1
        if is_activation(module):
            self.act_depth -= 1
        entered = self.entered[name].pop()
        if torch.is_tensor(output):
            passthrough = entered == (id(output), output._version)
            self.keep.append(output)
            self.produced.setdefault(id(output), []).append((name, output._version, passthrough, self.events))
            if not passthrough:
                self.output_order.setdefault(name, self.events)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        # Functional activations (F.relu in a forward) count too, when a module produced their input.
        name = getattr(func, "__name__", "")
        if name in _FUNCTIONAL_ACTIVATIONS and self.act_depth == 0 and args and torch.is_tensor(args[0]):
            source = self.producer(args[0])
            if source is not None:
                self.events += 1
                self.feeds.append((None, name, args[0], source, self.events))
        return func(*args, **(kwargs or {}))


def _trace(model: nn.Module, input_shape: tuple[int, ...]) -> _Trace:
    """Run one recorded forward pass; the model's mode, parameters and buffers are left as they were."""
    modes = {module: module.training for module in model.modules()}
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((2, *input_shape), generator=generator).to(device=device, dtype=dtype)
    recorder = _Recorder(model)
    model.eval()
    failure: Exception | None = None
    try:
        with torch.no_grad(), recorder:
            model(x)
    except Exception as exc:  # noqa: BLE001 - any failure here means the model cannot take this input
        failure = exc
    finally:
        recorder.remove()
        for module, mode in modes.items():
            module.training = mode
    if failure is not None:
        raise input_size_error(type(model).__name__, input_shape, failure, lambda size: model) from failure

    modules = dict(model.named_modules())
    head = find_head(model, run_order=recorder.output_order)
    points: dict[str, _Point] = {}
    for act_name, act_type, tensor, source, event in recorder.feeds:
        point = None
        if source is not None:
            module_name, produced_at = source
            kind = module_kind(modules[module_name])
            if kind is not None:
                point = _Point(
                    module_name,
                    kind,
                    tuple(tensor.shape[1:]),
                    type(modules[module_name]).__name__,
                    act_type,
                    produced_at,
                    module_name,
                )
            elif is_activation(modules[module_name]):
                continue  # an activation of an activation: its input is no pre-activation
        if point is None and act_name is not None:
            point = _Point(
                act_name + INPUT_SUFFIX, "act-input", tuple(tensor.shape[1:]), act_type, act_type, event, act_name
            )
        if point is None or point.name in points:
            continue
        if head is not None and (point.owner == head or point.owner.startswith(head + ".")):
            continue
        points[point.name] = point
    return _Trace(recorder.calls, points, recorder.call_inputs, recorder.output_order, head)


# ------------------------------------------------------------------------------------------ public API


def discover_layers(
    model: nn.Module,
    input_shape: Sequence[int],
    default_names: Sequence[str] | None = None,
) -> list[LayerInfo]:
    """The probeable points of ``model`` for inputs of shape ``(C, H, W)``, in forward order.

    ``default`` marks the names in ``default_names``; without them every point is a default. Points whose
    module runs more than once per forward (shared modules) are left out (see :func:`check_layers`).
    """
    trace = _trace(model, tuple(input_shape))
    unique = [p for p in trace.points.values() if trace.calls[p.owner] == 1]
    unique.sort(key=lambda p: p.order)
    chosen = None if default_names is None else set(default_names)
    return [
        LayerInfo(p.name, p.kind, p.shape, chosen is None or p.name in chosen, p.module_type, p.activation)
        for p in unique
    ]


def check_layers(model: nn.Module, layers: Sequence[str], input_shape: Sequence[int]) -> None:
    """Raise a LayerError for a layer that does not run, or runs more than once, in one forward pass.

    Any module output or ``NAME:input`` may be probed, not only discovered points; this only rejects
    names the wiring cannot mix. A shared module's error names the unique points equivalent to each call,
    then the model's ``quanta_shared_note`` where its builder left one (a family's way round its shared modules).
    """
    points = [resolve_layer(model, layer) for layer in layers]
    trace = _trace(model, tuple(input_shape))
    for point in points:
        runs = trace.calls[point.module_name]
        if runs == 0:
            raise LayerError(
                f"'{point.layer}' does not run in {type(model).__name__}'s forward pass; pick one of `probe layers`"
            )
        if runs > 1:
            raise LayerError(_shared_message(model, point.layer, point.module_name, runs, trace))
        head = trace.head
        if head is not None and (point.module_name == head or point.module_name.startswith(head + ".")):
            raise LayerError(
                f"'{point.layer}' is the classifier head: each target has its own head, so it cannot be mixed; "
                "probe an earlier layer (see `probe layers`)"
            )


def _ordinal(n: int) -> str:
    return f"{n}{'st' if n == 1 else 'nd' if n == 2 else 'rd' if n == 3 else 'th'}"


def _shared_message(model: nn.Module, layer: str, module_name: str, runs: int, trace: _Trace) -> str:
    parts = []
    for index, (source, changed) in enumerate(trace.call_inputs.get(module_name, []), start=1):
        call = f"its {_ordinal(index)} call takes"
        if source is not None and trace.calls[source] == 1:
            parts.append(f"{call} the output of '{source}' (probe '{source}' for that pre-activation)")
        elif changed is not None:
            parts.append(
                f"{call} the output of '{changed}' changed in place (e.g. by a residual add), which no layer name "
                "reaches"
            )
        else:
            parts.append(f"{call} a tensor no single-use module outputs, which no layer name reaches")
    message = (
        f"'{layer}' runs {runs} times in one forward pass (a shared module), so it cannot be probed: {'; '.join(parts)}"
    )
    note = getattr(model, "quanta_shared_note", None)
    return f"{message}; {note}" if note else message
