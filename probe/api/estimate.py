"""How long a planned scan will take on this machine: a few training steps timed, then multiplied out.

:func:`estimate_duration` times, on the plan's device and with the threads each worker will have, one target
training step (forward, backward, optimiser), the source's forward up to the first and the last probed layer, and
the target's forward on a test batch; the plan says how many of each the scan needs (source training, QUANTA runs
spread over the workers, the baselines' trainings in this process). Nothing it trains is kept.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..baselines.compare import FEATURE_LENSES
from ..core.hooks import source_forward
from ..data.augment import augment_batch
from ..data.task import TaskData
from ..engine.context import fresh_target
from ..engine.prepare import prepare_tasks
from ..models.checkpoint import SourceInfo, source_info
from ..models.registry import create_model
from ..training.trainer import make_optimizer
from ..util.device import available_cores, resolve_device
from .plan import ScanPlan

TIMED_STEPS = 3


@dataclass(frozen=True)
class Estimate:
    """The expected duration of a scan, and what it was computed from."""

    seconds: float  # the whole scan
    source_seconds: float  # training its source here (0: given, pretrained or in the cache)
    runs_seconds: float  # the QUANTA runs, spread over the workers
    baselines_seconds: float  # the baselines' own trainings and lenses, in this process
    step_seconds: float  # one QUANTA training step, averaged over the probed layers
    test_pass_seconds: float  # one evaluation of the target on the AnB test split
    workers: int
    runs: int
    steps_per_run: int

    def describe(self) -> str:
        """One line: the total, then what it is made of."""
        parts = [f"{self.runs} runs × {self.steps_per_run:,} steps on {self.workers} worker(s)"]
        if self.source_seconds:
            parts.append(f"source {duration(self.source_seconds)}")
        if self.baselines_seconds:
            parts.append(f"baselines {duration(self.baselines_seconds)}")
        parts.append(f"a step {self.step_seconds * 1000:.0f} ms, a test pass {self.test_pass_seconds:.1f} s")
        return f"about {duration(self.seconds)} on this machine ({'; '.join(parts)})"

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``2 h 10 min``, ``3.2 days``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        hours, minutes = divmod(round(seconds / 60), 60)
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{seconds / 86400:.1f} days"


def estimate_duration(plan: ScanPlan) -> Estimate:
    """Time a few steps of the plan's runs on this machine and multiply them out (see the module docstring)."""
    settings = plan.settings
    device = resolve_device(settings.device)
    local = plan.request.backend == "local"
    workers = max(1, min(settings.jobs, len(plan.specs))) if local else 1
    threads = max(1, available_cores() // workers) if device.type == "cpu" and workers > 1 else torch.get_num_threads()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        timing = _timings(plan, device)
    finally:
        torch.set_num_threads(previous)
    task = plan.tasks["AnB"]
    augmented = settings.augment and task.augment.enabled
    steps = settings.steps_per_run(len(task.train))
    per_layer = [timing.target_step + (timing.source(layer) if augmented or not settings.cache_source else 0.0)
                 for layer in plan.layers]  # fmt: skip
    step = sum(per_layer) / len(per_layer)
    test_pass = timing.test_forward * len(task.test)
    cache_pass = timing.source(plan.layers[-1]) * len(task.test) / settings.batch_size
    run = steps * step + settings.epochs * test_pass + cache_pass
    runs = run * len(plan.specs) / workers
    plain_run = steps * timing.target_step + settings.epochs * test_pass
    baselines = _baselines_seconds(plan, plain_run, timing)
    source = 0.0
    if plan.model is None and not plan.source_cached and plan.source_settings is not None:
        source_task = plan.source_task
        assert source_task is not None  # planned with the source to train
        source_steps = plan.source_settings.steps_per_run(len(source_task.train))
        source = source_steps * timing.target_step + plan.source_settings.epochs * timing.test_forward * len(
            source_task.test
        )
    return Estimate(
        seconds=source + runs + baselines, source_seconds=source, runs_seconds=runs, baselines_seconds=baselines,
        step_seconds=step, test_pass_seconds=test_pass, workers=workers, runs=len(plan.specs), steps_per_run=steps,
    )  # fmt: skip


def _baselines_seconds(plan: ScanPlan, plain_run: float, timing: _Timing) -> float:
    """The baselines' trainings (Yosinski: the target alone, a frozen and a fine-tuned transfer per layer, per task
    and seed) and the lenses' feature passes (one source forward over the AnB splits per layer)."""
    names = set(plan.baselines)
    runs = plan.settings.runs
    trainings = 0
    if "yosinski" in names:
        trainings = len(plan.tasks) * runs * (1 + 2 * len(plan.layers))
    elif "cka" in names:
        trainings = runs  # the AnB target alone, for the CKA beside it
    task = plan.tasks["AnB"]
    feature_passes = 0.0
    if names & (set(FEATURE_LENSES) | {"cka"}):
        examples = len(task.train) + len(task.test)
        feature_passes = sum(timing.source(layer) for layer in plan.layers) * examples / plan.settings.batch_size
    return trainings * plain_run + feature_passes


@dataclass
class _Timing:
    target_step: float  # one training step of a target alone (forward, backward, optimiser)
    test_forward: float  # the target's forward, per test image
    source_first: float  # the source's forward up to the first probed layer, per batch
    source_last: float  # ... up to the last probed layer
    order: list[str]

    def source(self, layer: str) -> float:
        """The source's forward up to ``layer``, interpolated by its position among the probed layers."""
        if len(self.order) < 2:
            return self.source_last
        share = self.order.index(layer) / (len(self.order) - 1)
        return self.source_first + share * (self.source_last - self.source_first)


def _timings(plan: ScanPlan, device: torch.device) -> _Timing:
    source = plan.model if plan.model is not None else _stand_in(plan)
    prepared = prepare_tasks(source, {"AnB": plan.tasks["AnB"]}, plan.settings)
    context = prepared.context
    task: TaskData = context.tasks["AnB"]
    settings = plan.settings
    batch = min(settings.batch_size, len(task.train))
    idx = torch.arange(batch, device=task.train.device)
    x, y = task.train.take(idx), task.train.y.index_select(0, idx)
    generator = torch.Generator(device=device).manual_seed(0)
    if settings.augment and task.augment.enabled:
        x = augment_batch(x, task.augment, generator)
    target = fresh_target(context, "AnB", settings.seed)
    optimizer = make_optimizer(target, settings)

    def train_step() -> None:
        loss = F.cross_entropy(target(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    test_batch = task.test.rows(0, min(256, len(task.test)))

    @torch.no_grad()
    def test_forward() -> None:
        target.eval()
        target(test_batch)
        target.train()

    def source_to(layer: str) -> Callable[[], object]:
        return lambda: source_forward(context.source, layer, x)

    first, last = plan.layers[0], plan.layers[-1]
    return _Timing(
        target_step=_time(train_step, device),
        test_forward=_time(test_forward, device) / len(test_batch),
        source_first=_time(source_to(first), device),
        source_last=_time(source_to(last), device),
        order=list(plan.layers),
    )


def _stand_in(plan: ScanPlan) -> nn.Module:
    """An untrained model of the source to train: it costs what the trained one will."""
    task = plan.source_task
    assert task is not None  # planned with the source to train
    return create_model(
        plan.arch, num_classes=task.num_classes, in_chans=task.in_chans, input_size=task.input_size, **plan.arch_options
    )


def _time(step: Callable[[], object], device: torch.device) -> float:
    """Seconds per call of ``step``: one warm-up call, then the best of :data:`TIMED_STEPS` (a busy machine's noise
    only adds time)."""
    step()
    best = math.inf
    for _ in range(TIMED_STEPS):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - started)
    return best


def describe_plan(plan: ScanPlan, estimate: Estimate | None = None) -> dict:
    """What a planned scan will do, as data (``probe scan --dry-run`` prints it): source, tasks, layers, runs, steps,
    settings, baselines, where the results go and, given, the estimate."""
    settings = plan.settings
    if plan.model is None:
        trained = plan.source_settings
        assert trained is not None  # planned with the source to train
        how = f"{trained.epochs} epochs, lr {trained.lr:g}" + (", augmented" if trained.augment else "")
        state = "reused from the cache" if plan.source_cached else "trained first"
        source = f"{plan.arch} on {plan.source_data} ({how}; {state})"
    else:
        info = source_info(plan.model) or SourceInfo()
        origin = info.checkpoint or type(plan.model).__name__
        if info.pretrained is not None:
            source = f"{info.arch} pretrained ({origin})"
        else:
            top1 = f", test top-1 {info.test_top1:.3f}" if info.test_top1 is not None else ""
            source = f"{info.arch} on {info.dataset}{top1} ({origin})"
    tasks = {
        name: f"{task.spec}: {len(task.train):,} training images, {len(task.test):,} test, {task.num_classes} classes"
        for name, task in plan.tasks.items()
    }
    gate = settings.gate_lr_for(settings.steps_per_run(len(plan.tasks["AnB"].train)))
    schedule = "cosine (the gate lr is its peak)" if settings.lr_schedule == "cosine" else settings.lr_schedule
    described = {
        "source": source,
        "tasks": tasks,
        "layers": list(plan.layers),
        "runs": len(plan.specs),
        "inits": list(settings.init),
        "seeds": list(range(settings.seed, settings.seed + settings.runs)),
        "steps per run": plan.steps_per_run,
        "settings": (
            f"preset {plan.preset or 'none (settings given)'}: {settings.epochs} epochs, batch {settings.batch_size}, "
            f"lr {settings.lr:g}, gate lr {gate:.3g}, {schedule}, "
            f"{'augmentation' if settings.augment else 'no augmentation'}, the mean of the last "
            f"{min(settings.last_epochs, settings.epochs)} epochs"
            + (f", at most {settings.train_size} training images per class" if settings.train_size else "")
        ),
        "baselines": list(plan.baselines),
        "results": str(plan.request.out) if plan.request.out is not None else "not saved (no --out)",
        "notes": list(plan.notes),
    }
    if estimate is not None:
        described["estimate"] = estimate.to_dict()
    return described
