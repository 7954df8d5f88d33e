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
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .errors import ArchitectureError, LayerError

INPUT_SUFFIX = ":input"
# Square sizes tried (ascending) when looking for the smallest input a model accepts.
CANDIDATE_SIZES = (8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)
# Up to this many points, the generic default set is every (non-gate) point.
GENERIC_DEFAULT_MAX = 16

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
_GATES = {"sigmoid", "hardsigmoid", "sigmoid_"}  # activations that gate (squeeze-excitation), not features
_SQUEEZE_EXCITE = re.compile(r"(?i:squeeze|excit)|^SE[A-Z]|^Eca[A-Z]|^CBAM")


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


def _act_key(class_name: str) -> str:
    """``HardSwishMe`` -> ``hardswish``; ``ReLU`` -> ``relu``."""
    name = class_name.lower()
    return name[:-2] if name.endswith("me") and name[:-2] in _ACTIVATION_NAMES else name


def is_activation(module: nn.Module) -> bool:
    """True for element-wise activation modules (torch's, timm's, or any class named like one)."""
    return _act_key(type(module).__name__) in _ACTIVATION_NAMES


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


def _head_name(model: nn.Module, modules: dict[str, nn.Module], output_order: dict[str, int]) -> str | None:
    """The classifier head: timm's ``get_classifier()``, else the last conv/linear module to run."""
    if hasattr(model, "get_classifier"):
        try:
            head = model.get_classifier()
        except Exception:  # noqa: BLE001 - a model's own helper may fail for odd configurations
            head = None
        for name, module in modules.items():
            if module is head and name:
                return name
    ran = [n for n in output_order if module_kind(modules[n]) in ("conv", "linear")]
    return max(ran, key=output_order.__getitem__) if ran else None


def _trace(model: nn.Module, input_shape: tuple[int, int, int]) -> _Trace:
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
    head = _head_name(model, modules, recorder.output_order)
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
    names the wiring cannot mix. A shared module's error names the unique points equivalent to each call.
    """
    from .hooks import resolve_layer

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


def explain_shared(model: nn.Module, layer: str, input_shape: Sequence[int]) -> str | None:
    """Why ``layer`` cannot be probed when its module runs more than once per forward, else None."""
    module_name = layer.removesuffix(INPUT_SUFFIX)
    trace = _trace(model, tuple(input_shape))
    runs = trace.calls[module_name]
    return _shared_message(model, layer, module_name, runs, trace) if runs > 1 else None


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
                f"{call} the output of '{changed}' changed in place (e.g. by a residual add), which no layer name reaches"
            )
        else:
            parts.append(f"{call} a tensor no single-use module outputs, which no layer name reaches")
    message = (
        f"'{layer}' runs {runs} times in one forward pass (a shared module), so it cannot be probed: {'; '.join(parts)}"
    )
    if type(model).__module__.startswith("torchvision.models.resnet"):
        message += (
            "; torchvision's ResNet reuses one ReLU per block, so its residual pre-activations cannot be probed — "
            "timm's ResNets (e.g. 'resnet18', which loads torchvision ResNet weights as they are) have them as "
            "'layerN.M.act2:input'"
        )
    return message


def default_points(model: nn.Module, layers: Sequence[LayerInfo]) -> list[str]:
    """A sensible default probe set for ``model`` among its discovered ``layers``.

    - ResNets (timm): the stem's pre-activation and each residual block's pre-activation at its final
      activation (``NAME:input`` points);
    - transformers and ConvNeXts: each block's MLP hidden pre-activation (``*.mlp.fc1``);
    - anything else: every point outside squeeze-excitation gates when there are at most 16, else the
      first point and the last point of each numbered stage/block (``features.5``, ``blocks.3``, ``layer2.1``).
    """
    names = [layer.name for layer in layers]
    if not names:
        return []
    cls = type(model)
    if cls.__name__ == "ResNet" and cls.__module__.startswith("timm."):
        residual = [layer.name for layer in layers if layer.kind == "act-input"]
        return [names[0], *[n for n in residual if n != names[0]]]
    mlp = [n for n in names if n.endswith(".mlp.fc1")]
    if mlp:
        return mlp
    modules = dict(model.named_modules())
    eligible = [
        layer.name
        for layer in layers
        if _act_key(layer.activation) not in _GATES
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
        _SQUEEZE_EXCITE.search(type(modules[".".join(parts[:i])]).__name__)
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


def adapter_defaults(model: nn.Module) -> list[str]:
    """The default probe set of a model built by an adapter: :func:`default_points` of its discovered points."""
    shape = input_shape_of(model)
    if shape is None:  # not built by an adapter: the first conv's channels at ImageNet size
        convs = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
        shape = (convs[0].in_channels if convs else 3, 224, 224)
    return default_points(model, discover_layers(model, shape))


def layer_table(model: nn.Module, input_shape: Sequence[int] | None = None, arch: str | None = None) -> list[LayerInfo]:
    """Discovered points with ``default`` set from the architecture's default set (what `probe layers` shows)."""
    from .adapters import default_layers

    shape = tuple(input_shape) if input_shape is not None else input_shape_of(model)
    if shape is None:
        raise LayerError("cannot discover layers without an input shape: pass input_shape=(C, H, W)")
    info = getattr(model, "quanta_source", None)
    arch = arch or (info.arch if info is not None else None)
    defaults = default_layers(arch, model) if arch else None
    return discover_layers(model, shape, defaults)


# ------------------------------------------------------------------------------------------ input sizes


def _runs(model: nn.Module, in_chans: int, size: int) -> bool:
    modes = {module: module.training for module in model.modules()}
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_chans, size, size, device=device))
        return True
    except Exception:  # noqa: BLE001
        return False
    finally:
        for module, mode in modes.items():
            module.training = mode


def smallest_input(build: Callable[[tuple[int, int]], nn.Module], in_chans: int, above: int = 0) -> int | None:
    """The smallest square size (> ``above``) of :data:`CANDIDATE_SIZES` a model accepts, or None.

    ``build(size)`` returns the model for that size: the same model for fully convolutional nets, a
    rebuilt one for models whose input size is fixed at construction (ViTs).
    """
    for size in CANDIDATE_SIZES:
        if size <= above:
            continue
        try:
            model = build((size, size))
        except Exception:  # noqa: BLE001 - a size the constructor rejects
            continue
        if _runs(model, in_chans, size):
            return size
    return None


def input_size_error(
    arch: str,
    input_shape: Sequence[int],
    error: BaseException,
    build: Callable[[tuple[int, int]], nn.Module],
) -> ArchitectureError:
    """An ArchitectureError for a model that cannot take ``input_shape``, naming the smallest input it accepts."""
    in_chans, height, width = input_shape
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    reason = reason if len(reason) <= 160 else reason[:159] + "…"
    smallest = smallest_input(build, in_chans, above=max(height, width))
    if smallest is None:
        return ArchitectureError(
            f"{arch} cannot run on {in_chans}×{height}×{width} inputs ({type(error).__name__}: {reason}); "
            "pick another architecture or dataset"
        )
    return ArchitectureError(
        f"{arch} cannot run on {in_chans}×{height}×{width} inputs ({type(error).__name__}: {reason}); its smallest "
        f"input is {smallest}×{smallest}: pick a dataset with larger images or another architecture"
    )


def ensure_runs(
    model: nn.Module,
    arch: str,
    input_shape: Sequence[int],
    build: Callable[[tuple[int, int]], nn.Module],
) -> None:
    """One eval-mode forward of a zero batch; an ArchitectureError naming the smallest input when it fails."""
    in_chans, height, width = input_shape
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_chans, height, width))
    except Exception as exc:  # noqa: BLE001
        raise input_size_error(arch, input_shape, exc, build) from exc
    finally:
        for module, mode in modes.items():
            module.training = mode


__all__ = [
    "LayerInfo",
    "adapter_defaults",
    "check_layers",
    "default_points",
    "discover_layers",
    "ensure_runs",
    "explain_shared",
    "input_shape_of",
    "is_activation",
    "layer_table",
    "module_kind",
    "smallest_input",
]
