"""The trainer: tensors in memory, batches as slices of a permutation, metrics on the device.

One loop serves plain training (the source, a target alone) and QUANTA runs: the caller passes a
``forward(x, idx, split)`` that returns logits, so a QUANTA forward can look up cached source tensors
by example index. Nothing here prints; progress goes to an optional callback once per epoch.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import augment_batch
from ..data.tensors import Split, TaskData
from ..results.schema import TEST_METRICS
from ..settings import RunSettings, lr_scale

Forward = Callable[[torch.Tensor, torch.Tensor, str], torch.Tensor]


@dataclass
class EpochEvent:
    """What a progress callback receives after each epoch."""

    epoch: int
    epochs: int
    metrics: dict[str, float]
    label: str = ""


@dataclass
class TrainOutcome:
    history: list[dict[str, float]]
    steps: int
    failure: str | None
    seconds: float


def autocast_for(device: torch.device, settings: RunSettings):
    """bf16 autocast on CUDA when ``settings.amp``; a no-op context on CPU."""
    if device.type == "cuda" and settings.amp:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format_for(device: torch.device, settings: RunSettings) -> torch.memory_format:
    """channels_last on CUDA when ``settings.channels_last`` (faster bf16 convolutions); NCHW on CPU."""
    if device.type == "cuda" and settings.channels_last:
        return torch.channels_last
    return torch.contiguous_format


def _in_format(x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    if memory_format is torch.contiguous_format or x.dim() != 4:
        return x
    return x.contiguous(memory_format=memory_format)


@torch.no_grad()
def evaluate(
    forward: Forward,
    split: Split,
    num_classes: int,
    batch_size: int = 1000,
    amp=contextlib.nullcontext,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> dict[str, float]:
    """:data:`~probe.results.schema.TEST_METRICS` on ``split``: top-1, top-3, mean cross-entropy, macro precision
    and macro recall."""
    device = split.device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    top3_hits = torch.zeros((), device=device, dtype=torch.int64)
    confusion = torch.zeros(num_classes * num_classes, device=device, dtype=torch.int64)
    k = min(3, num_classes)
    for start in range(0, len(split), batch_size):
        stop = min(start + batch_size, len(split))
        idx = torch.arange(start, stop, device=device)
        x, y = _in_format(split.rows(start, stop), memory_format), split.y[start:stop]  # views for built-in data
        with amp():
            logits = forward(x, idx, "test")
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        top3_hits += (logits.topk(k, dim=1).indices == y[:, None]).any(dim=1).sum()
        confusion += torch.bincount(y * num_classes + logits.argmax(dim=1), minlength=num_classes * num_classes)
    confusion = confusion.view(num_classes, num_classes).double()  # rows: true class, columns: predicted
    true_positive = confusion.diagonal()
    predicted, actual = confusion.sum(dim=0), confusion.sum(dim=1)
    # zero_division=0 for a class never predicted, as scikit-learn does by default
    precision = torch.where(predicted > 0, true_positive / predicted.clamp(min=1), torch.zeros_like(predicted))
    recall = torch.where(actual > 0, true_positive / actual.clamp(min=1), torch.zeros_like(actual))
    present = actual > 0
    n = len(split)
    values = torch.stack(
        [
            true_positive.sum() / n,
            top3_hits.double() / n,
            loss_sum / n,
            precision[present].mean(),
            recall[present].mean(),
        ]
    ).tolist()  # the one host read of the evaluation
    return dict(zip(TEST_METRICS, values, strict=True))


def fit(
    *,
    forward: Forward,
    trainable: nn.Module,
    optimizer: torch.optim.Optimizer | JointOptimizer,
    task: TaskData,
    settings: RunSettings,
    seed: int,
    device: torch.device,
    read_lambda: Callable[[], float] | None = None,
    on_epoch: Callable[[EpochEvent], None] | None = None,
    label: str = "",
    evaluate_last: int | None = None,
) -> TrainOutcome:
    """Train for ``settings.epochs`` epochs; evaluate on the test split after each one (with ``evaluate_last``, only
    after each of the last that many: the earlier epochs record their training loss alone).

    A non-finite training loss stops the run and is reported in ``failure``; the history keeps the
    epochs completed before it.
    """
    started = time.perf_counter()
    order_rng = torch.Generator().manual_seed(seed)
    augment_rng = torch.Generator(device=device).manual_seed(seed + 1_000_003)
    amp = lambda: autocast_for(device, settings)  # noqa: E731
    memory_format = memory_format_for(device, settings)
    history: list[dict[str, float]] = []
    steps, n = 0, len(task.train)
    schedule = _Schedule(optimizer, settings, settings.steps_per_run(n))
    for epoch in range(1, settings.epochs + 1):
        trainable.train()
        order = torch.randperm(n, generator=order_rng).to(device)
        train_loss = _train_epoch(forward, optimizer, task, settings, order, augment_rng, amp, memory_format, schedule)
        steps += math.ceil(n / settings.batch_size)
        if not math.isfinite(train_loss):
            failure = f"training loss became {train_loss} in epoch {epoch}"
            return TrainOutcome(history, steps, failure, time.perf_counter() - started)
        metrics: dict[str, float] = {}
        if evaluate_last is None or epoch > settings.epochs - evaluate_last:
            trainable.eval()
            metrics = evaluate(forward, task.test, task.num_classes, amp=amp, memory_format=memory_format)
        metrics["train_loss"] = train_loss
        if read_lambda is not None:
            metrics["lambda_source"] = read_lambda()
        metrics["epoch"] = epoch
        history.append(metrics)
        if not math.isfinite(metrics.get("loss", 0.0)):
            failure = f"test loss became {metrics['loss']} in epoch {epoch}"
            return TrainOutcome(history, steps, failure, time.perf_counter() - started)
        if on_epoch is not None:
            on_epoch(EpochEvent(epoch, settings.epochs, metrics, label))
    return TrainOutcome(history, steps, None, time.perf_counter() - started)


def _train_epoch(
    forward: Forward,
    optimizer: torch.optim.Optimizer | JointOptimizer,
    task: TaskData,
    settings: RunSettings,
    order: torch.Tensor,
    augment_rng: torch.Generator,
    amp: Callable[[], contextlib.AbstractContextManager],
    memory_format: torch.memory_format,
    schedule: _Schedule,
) -> float:
    """One pass over the training split in the order ``order``; the mean training loss."""
    train, augment = task.train, settings.augment and task.augment.enabled
    loss_sum = torch.zeros((), device=order.device)
    # No host read inside this loop: the next batch is queued while the device works on this one.
    for start in range(0, len(train), settings.batch_size):
        idx = order[start : start + settings.batch_size]
        x, y = train.take(idx), train.y.index_select(0, idx)  # uint8 images are converted per batch
        if augment:
            x = augment_batch(x, task.augment, augment_rng)
        with amp():
            logits = forward(_in_format(x, memory_format), idx, "train")
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        schedule.before_step()
        optimizer.step()
        loss_sum.add_(loss.detach(), alpha=len(idx))
    return float(loss_sum) / len(train)  # one host read per epoch


class _Schedule:
    """Scales every parameter group's learning rate by :func:`~probe.settings.lr_scale` before each step."""

    def __init__(self, optimizer: torch.optim.Optimizer | JointOptimizer, settings: RunSettings, total: int) -> None:
        optimizers = optimizer.optimizers if isinstance(optimizer, JointOptimizer) else (optimizer,)
        self.groups = [group for opt in optimizers for group in opt.param_groups]
        self.base = [group["lr"] for group in self.groups]
        self.schedule, self.total, self.step = settings.lr_schedule, total, 0
        self.active = settings.lr_schedule != "constant"  # the paper's constant rates are left untouched

    def before_step(self) -> None:
        if self.active:
            scale = lr_scale(self.schedule, self.step, self.total)
            for group, base in zip(self.groups, self.base, strict=True):
                group["lr"] = base * scale
        self.step += 1


class JointOptimizer:
    """Several optimizers stepped as one (the target's Adam and a gate's own SGD)."""

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = optimizers

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()


def make_optimizer(
    target: nn.Module, settings: RunSettings, gate: nn.Module | None = None, *, gate_lr: float | None = None
) -> torch.optim.Optimizer | JointOptimizer:
    """Adam over the target's weights (lr, weight decay) and the gate's v (``gate_lr``, no decay).

    ``gate_lr`` defaults to ``settings.gate_lr`` or ``settings.lr`` (a budget needs the run's steps: the
    engine passes ``settings.gate_lr_for(steps)``). With ``settings.gate_optimizer == "sgd"`` the gate gets
    plain SGD instead.
    The fused implementation (one kernel over all parameters) where this PyTorch has it for the
    parameters' device: on CPU it is about 10× faster than the per-tensor loop, which at full width
    would otherwise cost a quarter of every step. Call it after moving the target to its device.
    """
    groups: list[dict[str, Any]] = [
        {
            "params": [p for p in target.parameters() if p.requires_grad],
            "lr": settings.lr,
            "weight_decay": settings.weight_decay,
        }
    ]
    gate_params = list(gate.parameters()) if gate is not None else []
    if gate_lr is None:
        gate_lr = settings.lr if settings.gate_lr is None else settings.gate_lr
    if gate_params and settings.gate_optimizer == "adam":
        groups.append({"params": gate_params, "lr": gate_lr, "weight_decay": 0.0})
    params = [p for group in groups for p in group["params"]]
    adam = torch.optim.Adam(groups, fused=bool(params) and all(_has_fused_adam(p) for p in params))
    if gate_params and settings.gate_optimizer == "sgd":
        return JointOptimizer(adam, torch.optim.SGD(gate_params, lr=gate_lr))
    return adam


def _has_fused_adam(parameter: torch.Tensor) -> bool:
    """Whether this PyTorch has a fused Adam kernel for the parameter's device and dtype."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        devices = set(_get_fused_kernels_supported_devices())
    except ImportError:  # an older PyTorch: CUDA only
        devices = {"cuda"}
    return parameter.is_floating_point() and parameter.device.type in devices
