"""One run: a fresh target trained with a QUANTA gate at one layer; a run is a pure function of (context, spec)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..core.gate import QuantaGate
from ..core.hooks import quanta_hooks
from ..results.schema import RunResult, RunSpec, final_figures
from ..training.trainer import EpochEvent, fit, make_optimizer
from .context import ProbeContext, fresh_target


def run_one(context: ProbeContext, spec: RunSpec, on_epoch: Callable[[EpochEvent], None] | None = None) -> RunResult:
    """Train one fresh target with a QUANTA gate at ``spec.layer``; return its history and finals.

    With ``context.after_run`` set, the trained target (its hooks removed, in eval mode) is measured at the end
    and the figures travel in ``RunResult.measures`` (the target itself is dropped here).
    """
    settings, device = context.settings, context.device
    task = context.tasks[spec.task]
    target = fresh_target(context, spec.task, spec.seed)
    if settings.compile:
        torch.compiler.reset()  # this run's graphs only: a scan's many layers would exceed dynamo's recompile limit
        target.compile()  # in place: the layer names and the QUANTA hooks on submodules are kept
    gate = QuantaGate(spec.init).to(device)
    gate_lr = settings.gate_lr_for(settings.steps_per_run(len(task.train)))
    optimizer = make_optimizer(target, settings, gate, gate_lr=gate_lr)
    with quanta_hooks(context.source, target, spec.layer, gate) as wiring:
        cache = context.source_tensors(spec.layer, spec.task)
        if cache is None:
            forward = lambda x, idx, split: wiring(x)  # noqa: E731
        else:  # an augmented train split is not cached: its source tensors change every batch
            forward = lambda x, idx, split: wiring(  # noqa: E731
                x, z_source=cache[split].index_select(0, idx) if split in cache else None
            )
        outcome = fit(
            forward=forward,
            trainable=target,
            optimizer=optimizer,
            task=task,
            settings=settings,
            seed=spec.seed,
            device=device,
            read_lambda=lambda: gate.lambda_source,
            on_epoch=on_epoch,
        )
    measures = {}
    if context.after_run is not None and not outcome.failure:
        was_training = target.training
        target.eval()
        try:
            measures = dict(context.after_run(context, spec, target))
        finally:
            target.train(was_training)
    return RunResult(
        spec=spec,
        history=outcome.history,
        final=final_figures(outcome.history, settings.last_epochs) if outcome.history else {},
        steps=outcome.steps,
        gate_lr=gate_lr,
        status="failed" if outcome.failure else "ok",
        failure=outcome.failure,
        seconds=outcome.seconds,
        measures=measures,
        lr_schedule=settings.lr_schedule,
    )
