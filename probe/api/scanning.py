"""Measure and scan: the runs of a request, resumed from its results folder, executed on a back-end and
gathered into a :class:`~probe.results.schema.Measurement` with the baselines asked for.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from ..backends import executor_for
from ..baselines import cka_after_run, run_baselines
from ..data import DatasetSpec, TaskData
from ..data.images.tasks import Preprocess, with_columns
from ..engine.context import ProbeContext
from ..engine.prepare import default_target_of, prepare
from ..engine.progress import Progress
from ..engine.record import environment, fingerprint
from ..engine.selection import choose_layers
from ..engine.sources import load_source
from ..errors import ProbeError
from ..models.checkpoint import SourceInfo, source_info
from ..results.schema import Measurement, RunResult, RunSpec, run_grid
from ..results.store import ResultsFolder
from ..settings import RunSettings
from .policy import TRAINED_AT, Target, check_request, preprocessing_for, resized, scan_settings


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
    notes: Sequence[str] = (),
    preset: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    **overrides: Any,
) -> Measurement:
    """Measure λS at each layer (default: the architecture's probe layers, in forward order), one fresh target per run.

    ``target`` is a dataset spec such as ``'digits[5-9]'``, ``'cifar100'``, an image folder ``'./flowers'``,
    ``'tv:SVHN[0-4]'``, ``'hf:beans'``, a task, or data in Python (a Dataset pair, ``((x, y), (x, y))`` or
    ``(x, y)`` tensors); None uses the pairing recorded with a source trained by the toolkit. Images from
    anywhere are prepared as ``preprocess`` says (default: a pretrained source's own input size and mean/std,
    ``image_size`` overriding the size; see :func:`preprocessing_for`); ``image_column`` / ``label_column``
    name the columns of every Hugging Face dataset of ``target`` and ``source_data``. ``settings`` default to
    the target dataset's preset (or the named ``preset``: ``"paper"`` for the paper's exact protocol) with
    ``overrides`` applied (see :func:`scan_settings`). ``control=True`` also runs AnA (target task = source task). With
    ``out`` every finished run is saved at once and a re-run resumes (``fresh=True`` starts over);
    ``baselines`` adds, per layer, Yosinski transfer accuracy and the lenses of
    :data:`probe.baselines.BASELINES` (linear probe, k-NN, LogME, H-scores, TransRate, CKA; LEEP and NCE once
    per scan), with their rank correlations with λS (see probe.baselines).
    """
    columns = with_columns(None, (target, source_data), image_column, label_column)  # checked before any work
    if isinstance(model, (str, os.PathLike)):
        data = source_data.spec if isinstance(source_data, TaskData) else source_data
        data = data if isinstance(data, (str, DatasetSpec)) else None
        model = load_source(model, data=data, data_dir=data_dir, preprocess=columns)
    if not isinstance(model, nn.Module):
        raise ProbeError(f"model must be an nn.Module or a checkpoint path, got {type(model).__name__}")
    target = default_target_of(model) if target is None else target
    notes = list(notes)
    if preprocess is None:
        info = source_info(model) or SourceInfo()
        pretrained = "pretrained" in (info.settings or {})
        trained_at = (info.settings or {}).get("image_size") if not pretrained else None
        size = image_size if image_size is not None else trained_at
        preprocess, more = preprocessing_for(target, arch=info.arch, pretrained=pretrained, image_size=size)
        if trained_at is not None and preprocess is None and image_size is None:  # a built-in target
            preprocess, more = resized(None, trained_at, TRAINED_AT), []
        notes += [n for n in more if n not in notes]
    preprocess = with_columns(preprocess, (target, source_data), image_column, label_column)
    settings = scan_settings(target, settings, preset=preset, **overrides)
    names = check_request(
        target=target, layers=layers, baselines=baselines, backend=backend, backend_options=backend_options,
        out=out, settings=settings, data_dir=data_dir,
    )  # fmt: skip
    prepared = prepare(
        model, target, settings=settings, control=control, source_data=source_data, data_dir=data_dir,
        preprocess=preprocess,
    )  # fmt: skip
    context, target_task = prepared.context, prepared.context.tasks["AnB"]
    chosen = choose_layers(prepared.model, layers, (target_task.in_chans, *target_task.input_size))
    specs = run_grid(chosen, settings.init, settings.seed, settings.runs, list(context.tasks))
    store = None if out is None else ResultsFolder(out, fingerprint(context, prepared.source_record, chosen), fresh)
    if "cka" in names:  # each run measures its trained target before it is dropped; other scans pay nothing
        context.after_run = cka_after_run
    try:
        started = time.perf_counter()
        results, resumed = _run(context, specs, store, progress, backend, backend_options)
        env = environment(context.device)
        env["seconds"] = time.perf_counter() - started
        env["resumed_runs"] = resumed
        if store is not None and store.corrupt:
            env["redone_corrupt_runs"] = [name for name, _ in store.corrupt]
        measurement = Measurement(
            settings=settings.to_dict(),
            source=prepared.source_record,
            target=str(target_task.spec),
            layers=list(chosen),
            runs=[results[spec.key] for spec in specs],
            environment=env,
            extras={"tasks": {name: str(task.spec) for name, task in context.tasks.items()}},
        )
        image_meta = {name: task.meta for name, task in context.tasks.items() if task.meta}
        if image_meta:
            measurement.extras["data"] = image_meta
            first = image_meta.get("AnB", next(iter(image_meta.values())))
            measurement.extras["preprocessing"] = first["preprocessing"]
        if notes or prepared.notes:
            measurement.extras["notes"] = notes + prepared.notes
        if names:
            measurement.extras["baselines"] = run_baselines(context, measurement, names, progress=progress)
        if store is not None:
            store.save_measurement(measurement)
    finally:
        if store is not None:
            store.close()
    return measurement


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
