"""Run a plan, and measure and scan: the runs of a request, resumed from its results folder, executed on a back-end
and gathered into a :class:`~probe.results.schema.Measurement` with the baselines asked for.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from ..backends import executor_for
from ..baselines import cka_after_run, run_baselines
from ..data.images.tasks import Preprocess
from ..engine.context import ProbeContext
from ..engine.prepare import prepare_tasks
from ..engine.progress import Progress
from ..engine.record import environment, fingerprint
from ..errors import ProbeError
from ..results.schema import Measurement, RunResult, RunSpec
from ..results.store import ResultsFolder
from ..settings import RunSettings
from .plan import ScanPlan, ScanRequest, plan_scan, source_model
from .policy import Target


def _run(
    context: ProbeContext,
    specs: list[RunSpec],
    store: ResultsFolder | None,
    progress: Progress | None,
    backend: str,
    backend_options: Mapping | None,
) -> tuple[dict[str, RunResult], int]:
    """Every run of ``specs`` by key: those already in ``store``, and the rest executed (each saved as it
    finishes); and how many were already there."""
    finished = store.finished() if store is not None else {}
    todo = [spec for spec in specs if spec.key not in finished]
    results = {spec.key: finished[spec.key] for spec in specs if spec.key in finished}
    execute = executor_for(backend, context.settings, len(todo), backend_options)
    for result in execute(context, todo, progress, offset=len(specs) - len(todo), total=len(specs)):
        if store is not None:
            store.save_run(result)
        results[result.spec.key] = result
    return results, len(specs) - len(todo)


def run(plan: ScanPlan, progress: Progress | None = None, *, source: nn.Module | None = None) -> Measurement:
    """Execute a plan (:func:`plan_scan`): the source trained or taken from the cache (``source``: the plan's
    source, already obtained with :func:`source_model`), the runs resumed from the results folder and executed on
    the back-end, the baselines computed, the measurement saved and returned."""
    request, settings = plan.request, plan.settings
    model = source if source is not None else source_model(plan, progress)[0]
    prepared = prepare_tasks(model, plan.tasks, settings)
    context = prepared.context
    store = None
    if request.out is not None:
        store = ResultsFolder(request.out, fingerprint(context, prepared.source_record, plan.layers), request.fresh)
    if "cka" in plan.baselines:  # each run measures its trained target before it is dropped; other scans pay nothing
        context.after_run = cka_after_run
    try:
        started = time.perf_counter()
        results, resumed = _run(context, plan.specs, store, progress, request.backend, request.backend_options)
        env = environment(context.device)
        env["seconds"] = time.perf_counter() - started
        env["resumed_runs"] = resumed
        if store is not None and store.corrupt:
            env["redone_corrupt_runs"] = [name for name, _ in store.corrupt]
        measurement = Measurement(
            settings=settings.to_dict(),
            source=prepared.source_record,
            target=str(context.tasks["AnB"].spec),
            layers=list(plan.layers),
            runs=[results[spec.key] for spec in plan.specs],
            environment=env,
            extras={
                "tasks": {name: str(task.spec) for name, task in context.tasks.items()},
                "class_names": {name: list(task.class_names) for name, task in context.tasks.items()},
                "train_examples": {name: len(task.train) for name, task in context.tasks.items()},
            },
        )
        image_meta = {name: task.meta for name, task in context.tasks.items() if task.meta}
        if image_meta:
            measurement.extras["data"] = image_meta
            first = image_meta.get("AnB", next(iter(image_meta.values())))
            measurement.extras["preprocessing"] = first["preprocessing"]
        if plan.notes:
            measurement.extras["notes"] = list(plan.notes)
        if plan.baselines:
            measurement.extras["baselines"] = run_baselines(context, measurement, plan.baselines, progress=progress)
        if store is not None:
            store.save_measurement(measurement)
    finally:
        if store is not None:
            store.close()
    return measurement


def scan(
    model: nn.Module | str | os.PathLike,
    layers: str | Sequence[str] | None = None,
    target: Target | None = None,
    *,
    settings: RunSettings | None = None,
    control: bool = False,
    source_data: Target | None = None,
    data_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    out: str | os.PathLike | None = None,
    fresh: bool = False,
    backend: str = "local",
    backend_options: Mapping | None = None,
    baselines: Sequence[str] = (),
    preprocess: Preprocess | None = None,
    image_size: int | None = None,
    preset: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    **overrides: Any,
) -> Measurement:
    """Measure λS at each layer (default: the architecture's probe layers, in forward order), one fresh target per run.

    ``model`` is the frozen source: a model or a checkpoint path. ``target`` is a dataset spec such as
    ``'digits[5-9]'``, ``'cifar100'``, an image folder ``'./flowers'``, ``'tv:SVHN[0-4]'``, ``'hf:beans'``, a task,
    or data in Python (a Dataset pair, ``((x, y), (x, y))`` or ``(x, y)`` tensors); None uses the pairing recorded
    with a source trained by the toolkit. Images from anywhere are prepared as ``preprocess`` says (default: a
    pretrained source's own input size and mean/std, ``image_size`` overriding the size; see
    :func:`preprocessing_for`); ``image_column`` / ``label_column`` name the columns of the Hugging Face data of
    the request. ``settings`` default to the target dataset's preset (or the named ``preset``: ``"paper"`` for the
    paper's exact protocol) with ``overrides`` applied (see :func:`scan_settings`). ``control=True`` also runs AnA
    (target task = source task). With ``out`` every finished run is saved at once and a re-run resumes
    (``fresh=True`` starts over); ``baselines`` adds, per layer, Yosinski transfer accuracy and the lenses of
    :data:`probe.baselines.BASELINES` (linear probe, k-NN, LogME, H-scores, TransRate, CKA; LEEP and NCE once per
    scan), with their rank correlations with λS (see probe.baselines). The request is the one ``probe scan``
    builds (:class:`ScanRequest`), planned by :func:`plan_scan` and executed by :func:`run`.
    """
    if not isinstance(model, (nn.Module, str, os.PathLike)):
        raise ProbeError(f"model must be an nn.Module or a checkpoint path, got {type(model).__name__}")
    request = ScanRequest(
        source=model, target=target, layers=layers, source_data=source_data, control=control, baselines=baselines,
        settings=settings, preset=preset, overrides=overrides, out=out, fresh=fresh, backend=backend,
        backend_options=backend_options, data_dir=data_dir, image_size=image_size, image_column=image_column,
        label_column=label_column, preprocess=preprocess,
    )  # fmt: skip
    return run(plan_scan(request), progress)


def measure(
    model: nn.Module | str | os.PathLike,
    layer: str,
    target: Target | None = None,
    *,
    settings: RunSettings | None = None,
    control: bool = False,
    source_data: Target | None = None,
    data_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    out: str | os.PathLike | None = None,
    fresh: bool = False,
    image_size: int | None = None,
    preset: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    **overrides: Any,
) -> Measurement:
    """Measure how transferable ``layer`` of the frozen ``model`` is to ``target`` (see :func:`scan`)."""
    return scan(
        model, [layer], target, settings=settings, control=control, source_data=source_data,
        data_dir=data_dir, progress=progress, out=out, fresh=fresh, image_size=image_size, preset=preset,
        image_column=image_column, label_column=label_column, **overrides,
    )  # fmt: skip
