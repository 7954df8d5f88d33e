"""A scan request (:class:`ScanRequest`), planned once (:func:`plan_scan`): the source (a checkpoint, a model,
pretrained weights, or one to train here), the tasks read, the settings, the layers and the runs, every check made
and nothing trained. ``probe scan`` and ``probe.scan`` build the same request.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeGuard

from torch import nn

from ..backends import check_backend
from ..baselines import check_baselines
from ..data import DatasetSpec, TaskData, check_available, default_target, load_task, parse_spec
from ..data.images.tasks import Preprocess, for_spec, is_hf_data, task_from_python, with_columns
from ..data.task import limit_per_class
from ..engine.prepare import check_format, no_control_note
from ..engine.progress import Progress
from ..engine.selection import check_layer_list, choose_layers, smallest_input_size
from ..engine.sources import cached_source, load_source, pretrained_source, source_cache_path
from ..errors import DataError, ProbeError, SettingsError
from ..models.checkpoint import SourceInfo, source_info
from ..models.registry import create_model
from ..results.schema import RunSpec, run_grid
from ..settings import DEFAULT_ARCH, DEFAULT_SOURCE_DATA, RunSettings, check_preset
from ..util.device import resolve_device
from ..util.files import check_writable
from .policy import (
    TRAINED_AT,
    Target,
    preprocessing_for,
    preset_name_for,
    resized,
    scan_settings,
    source_training_settings,
)


@dataclass(frozen=True)
class ScanRequest:
    """A scan as asked for, by ``probe scan``'s options or ``probe.scan``'s arguments: nothing decided yet.

    ``source`` is a checkpoint path, a model, a file of pretrained weights (with ``pretrained``) or None (train
    ``arch`` on ``source_data`` here, cached); ``target`` a dataset spec, a task or data in Python (None: the
    source task's pair). ``settings`` replaces the preset; ``overrides`` are RunSettings fields given one by one
    (None: not given). ``image_column`` / ``label_column`` name the columns of the Hugging Face data the request
    names: the target's when it is Hugging Face data, else the source's. ``preprocess`` (API only) replaces how
    images from anywhere would be prepared.
    """

    source: str | os.PathLike | nn.Module | None = None
    target: Target | None = None
    layers: str | Sequence[str] | None = None
    arch: str | None = None
    arch_options: Mapping[str, Any] = field(default_factory=dict)
    pretrained: bool = False
    source_data: Target | None = None
    control: bool = False
    baselines: Sequence[str] = ()
    settings: RunSettings | None = None
    preset: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    out: str | os.PathLike | None = None
    fresh: bool = False
    backend: str = "local"
    backend_options: Mapping[str, Any] | None = None
    data_dir: str | os.PathLike | None = None
    download: bool = False
    image_size: int | None = None
    image_column: str | None = None
    label_column: str | None = None
    preprocess: Preprocess | None = None


@dataclass
class ScanPlan:
    """A request with everything decided and checked; nothing trained (:func:`plan_scan`, then ``run``)."""

    request: ScanRequest
    arch: str
    arch_options: dict
    model: nn.Module | None  # the source when it needs no training here; None: trained here (or reused from the cache)
    source_data: Target | None  # the source's own task (as recorded or given)
    source_task: TaskData | None  # read when the source is trained here
    source_settings: RunSettings | None  # how the source is trained here
    source_cached: bool  # a source to train here is already in the cache
    target: Target  # as given, or the source task's pair
    tasks: dict[str, TaskData]  # read once: AnB, and AnA for the control (their train splits limited to train_size)
    settings: RunSettings
    preset: str | None  # the preset the settings started from (None: the request's own settings)
    layers: list[str]
    specs: list[RunSpec]
    baselines: list[str]
    preprocess: Preprocess | None  # how images from anywhere are prepared (None: as they are)
    notes: list[str] = field(default_factory=list)  # one line each, said with the results

    @property
    def steps_per_run(self) -> dict[str, int]:
        """Optimiser steps of one run, per task."""
        return {name: self.settings.steps_per_run(len(task.train)) for name, task in self.tasks.items()}


def plan_scan(request: ScanRequest) -> ScanPlan:
    """Check ``request``, choose the source, read the tasks once, settle settings, layers and runs; train nothing.

    Checks that need only the request come first; then the source (a checkpoint is read, pretrained weights are
    fetched only once the target's data is known to be there), the target (default: the source task's pair), the
    data (read once, so a bad image file is said before any training) and the layers. Every failure is a one-line
    :class:`~probe.errors.ProbeError`.
    """
    r = replace(request, target=_path_as_text(request.target), source_data=_path_as_text(request.source_data))
    baselines = _check_request_alone(r)
    columns = _columns(r)
    model, arch, options, source_data = _planned_source(r, columns)
    target = r.target if r.target is not None else _default_target(source_data)
    settings = scan_settings(target, r.settings, preset=r.preset, **r.overrides)
    resolve_device(settings.device)
    preprocess, notes = _preprocessing(r, model, arch, target, columns)
    source_task = None
    if model is None and not r.pretrained:  # trained here: its task is read now, as the target's images are
        source_task = _read(source_data, r, _for_task(preprocess, source_data))
        if r.image_size is None and r.preprocess is None:
            upscaled = _upscaled(arch, options, source_task, r.layers, preprocess)
            if upscaled is not None:
                preprocess, note = upscaled
                source_task = _read(source_data, r, _for_task(preprocess, source_data))
                notes.append(note)
    tasks = {"AnB": _read(target, r, _for_task(preprocess, target))}
    if r.pretrained:  # the weights are fetched now that the data is known to be there
        model = pretrained_source(arch, tasks["AnB"], weights=r.source, **options)  # type: ignore[arg-type]
    if model is not None:
        check_format(model, tasks["AnB"])
    if r.control:
        if source_data is None:
            why_not = no_control_note(model) if model is not None else None
            if why_not is None:
                raise SettingsError(
                    "the control (AnA) needs the source's task: give --source-data (source_data=), e.g. digits[0-4]"
                )
            notes.append(why_not)
        else:  # the source's task is read only here: an AnB scan of a checkpoint never needs it
            tasks["AnA"] = source_task or _read(source_data, r, _for_task(preprocess, source_data))
    tasks = {name: limit_per_class(task, settings.train_size) for name, task in tasks.items()}
    source_settings = None
    source_cached = False
    if source_task is not None:
        # --train-size limits the scan's tasks; the source is trained on its whole task (probe train limits it)
        given = {**r.overrides, "train_size": None}
        source_settings = source_training_settings(source_data, preset=r.preset, **given)  # type: ignore[arg-type]
        path = source_cache_path(arch, source_task, settings=source_settings, arch_options=options or None,
                                 preprocess=_for_task(preprocess, source_data))  # fmt: skip
        source_cached = path.is_file()
    probe_model = model if model is not None else _untrained(arch, options, source_task)  # type: ignore[arg-type]
    task = tasks["AnB"]
    layers = choose_layers(probe_model, r.layers, (task.in_chans, *task.input_size))
    specs = run_grid(layers, settings.init, settings.seed, settings.runs, list(tasks))
    return ScanPlan(
        request=r, arch=arch, arch_options=options, model=model, source_data=source_data, source_task=source_task,
        source_settings=source_settings, source_cached=source_cached, target=target, tasks=tasks, settings=settings,
        preset=None if r.settings is not None else preset_name_for(target, r.preset), layers=layers, specs=specs,
        baselines=baselines, preprocess=preprocess, notes=notes,
    )  # fmt: skip


def _check_request_alone(r: ScanRequest) -> list[str]:
    """The checks that need only the request, before any file is read: layers, baselines, back-end, results
    folder, setting values, preset. Returns the baselines' names."""
    check_layer_list(r.layers)
    names = check_baselines(r.baselines)
    check_backend(r.backend, r.backend_options)
    if r.out is not None:
        check_writable(r.out)
    given = {name: value for name, value in r.overrides.items() if value is not None}
    (r.settings or RunSettings()).with_(**given)  # each value valid, whatever the preset
    if r.preset is not None:
        check_preset(r.preset)
    if r.pretrained and r.arch is None:
        raise SettingsError("--pretrained needs --arch, e.g. --arch resnet18 or --arch tv:resnet18")
    if r.pretrained and r.target is None:
        raise SettingsError(
            "pretrained weights record no task of this toolkit, so there is no default target: give --target "
            "(e.g. cifar10)"
        )
    if r.pretrained and isinstance(r.source, nn.Module):
        raise SettingsError("pretrained=True takes a file of weights as source (or none), not a model")
    if r.source is None and r.target is None and r.source_data is not None and not _is_spec(r.source_data):
        raise SettingsError("data given in Python has no default target: give target=")
    if r.source is None and r.target is None and _is_spec(r.source_data) and not _builtin(r.source_data):
        raise SettingsError(
            f"images from anywhere have no default target: give --target with --source-data {r.source_data}"
        )
    if r.image_size is not None and (not isinstance(r.image_size, int) or r.image_size < 1):
        raise SettingsError(f"--image-size {r.image_size} is invalid; give a positive number of pixels, e.g. 64")
    return names


def _columns(r: ScanRequest) -> Preprocess | None:
    """The Hugging Face columns the request names (a SettingsError when it names no Hugging Face data), kept for
    the data they name: the target's when it is Hugging Face data, else the source's."""
    named = [r.target] if _is_spec(r.target) and is_hf_data(parse_spec(r.target)) else [r.target, r.source_data]
    pre = with_columns(None, named, r.image_column, r.label_column)
    if pre is None:
        return None
    owner = next(parse_spec(d) for d in named if _is_spec(d) and is_hf_data(parse_spec(d)))
    return Preprocess(image_column=pre.image_column, label_column=pre.label_column, origin=f"columns of {owner.name}")


def _for_task(pre: Preprocess | None, data: Target | None) -> Preprocess | None:
    """``pre`` as it applies to ``data``: the Hugging Face columns only for the data set they were named for."""
    if pre is None or not _is_spec(data):
        return pre
    spec = parse_spec(data)
    if pre.columns() and pre.origin.startswith("columns of ") and pre.origin != f"columns of {spec.name}":
        pre = Preprocess(**{**pre.to_dict(), "image_column": None, "label_column": None})
    return for_spec(pre, spec)


def _planned_source(r: ScanRequest, columns: Preprocess | None) -> tuple[nn.Module | None, str, dict, Target | None]:
    """The source when it needs no training here (a model or a checkpoint; pretrained weights are fetched later),
    its architecture and options, and its own task (as recorded, or given)."""
    options = dict(r.arch_options)
    if isinstance(r.source, nn.Module):
        info = source_info(r.source) or SourceInfo()
        return r.source, info.arch or r.arch or type(r.source).__name__, options, r.source_data or info.dataset
    if r.pretrained:  # fetched by plan_scan once the target's data is read
        return None, str(r.arch), options, r.source_data
    if r.source is not None:
        data = r.source_data if _is_spec(r.source_data) else None  # read only for a plain state_dict
        model = load_source(
            r.source, arch=r.arch, data=data, data_dir=r.data_dir, preprocess=_for_task(columns, data), **options
        )
        info = source_info(model) or SourceInfo()
        recorded = info.dataset
        if _is_spec(r.source_data) and recorded is not None and not _same(recorded, r.source_data):
            raise SettingsError(f"'{r.source}' records source task {recorded}, not {r.source_data}; drop --source-data")
        return model, str(info.arch), options, recorded or r.source_data
    return None, r.arch or DEFAULT_ARCH, options, r.source_data or DEFAULT_SOURCE_DATA


def _default_target(source_data: Target | None) -> str:
    if source_data is None or not _is_spec(source_data):
        raise DataError(
            "this source records no task, so there is no default target: give one (--target; in Python "
            "probe.measure(model, 'layer', target='digits[5-9]'))"
        )
    return str(default_target(source_data))


def _preprocessing(
    r: ScanRequest, model: nn.Module | None, arch: str, target: Target, columns: Preprocess | None
) -> tuple[Preprocess | None, list[str]]:
    """How images from anywhere are prepared, and the lines that say so: ``r.preprocess`` when given; for a source
    trained here or pretrained, the policy (:func:`preprocessing_for`); for a checkpoint trained on resized images,
    that size again."""
    if r.preprocess is not None:
        return _merge_columns(r.preprocess, columns), []
    info = source_info(model) if model is not None else None
    trained_at = info.trained_at if info is not None else None
    pretrained = r.pretrained or (info is not None and info.pretrained is not None)
    name = info.arch if info is not None and info.arch else arch
    size = r.image_size if r.image_size is not None else trained_at
    pre, notes = preprocessing_for(target, arch=name, pretrained=pretrained, image_size=size)
    if trained_at is not None and r.image_size is None and not pretrained:
        pre = resized(pre, trained_at, TRAINED_AT)
    return _merge_columns(pre, columns), notes


def _merge_columns(pre: Preprocess | None, columns: Preprocess | None) -> Preprocess | None:
    if columns is None:
        return pre
    if pre is None:
        return columns
    return Preprocess(**{**pre.to_dict(), **columns.columns(), "origin": pre.origin or columns.origin})


def _upscaled(
    arch: str, options: dict, task: TaskData, layers: str | Sequence[str] | None, pre: Preprocess | None
) -> tuple[Preprocess, str] | None:
    """For a model trained here: the input size that keeps the deepest probed layer's maps at least 2×2 when the
    data's own size would give 1×1 maps (e.g. resnet18 on 8×8 digits), and the line that says so."""
    shape = (task.in_chans, *task.input_size)
    size = smallest_input_size(_untrained(arch, options, task), layers, shape)
    if size is None:
        return None
    note = (
        f"{arch} would see 1×1 maps at its deepest probed layer on {shape[1]}×{shape[2]} images: inputs resized to "
        f"{size}×{size}, the smallest size that keeps them at least 2×2 (--image-size overrides)"
    )
    return resized(pre, size, "smallest size keeping the probed maps ≥ 2×2"), note


def _untrained(arch: str, options: dict, task: TaskData) -> nn.Module:
    """A fresh model of ``arch`` for ``task`` (its layers are the trained source's)."""
    classes, chans, size = task.num_classes, task.in_chans, task.input_size
    return create_model(arch, num_classes=classes, in_chans=chans, input_size=size, **options)


def _read(data: Target | None, r: ScanRequest, pre: Preprocess | None) -> TaskData:
    """``data`` as a task, read once: a spec (checked, fetched with ``r.download``), a task, or data in Python."""
    if isinstance(data, TaskData):
        return data
    given = task_from_python(data, pre)
    if given is not None:
        return given
    if not _is_spec(data):
        raise ProbeError(
            f"cannot read {type(data).__name__} as data: give a dataset spec, a task, a Dataset pair, "
            "((x_train, y_train), (x_test, y_test)) or (x, y) tensors"
        )
    check_available(data, r.data_dir, r.download)
    return load_task(data, data_dir=r.data_dir, download=r.download, preprocess=pre)


def _is_spec(data: object) -> TypeGuard[str | DatasetSpec]:
    return isinstance(data, (str, DatasetSpec))


def _path_as_text(data: Any) -> Any:
    """A folder given as a path object, as the spec text it stands for; anything else as it is."""
    return os.fspath(data) if isinstance(data, os.PathLike) else data


def _builtin(data: Any) -> bool:
    return parse_spec(data).kind == "builtin"


def _same(a: Target | None, b: Target | None) -> bool:
    """Whether two specs name the same task."""
    return _is_spec(a) and _is_spec(b) and str(parse_spec(a)) == str(parse_spec(b))


def source_model(plan: ScanPlan, progress: Progress | None = None) -> tuple[nn.Module, bool]:
    """The plan's source: as planned, or trained on its source task (reused from the cache when it exists).

    Returns ``(model, reused)``; reused is True only for a source taken from the cache.
    """
    if plan.model is not None:
        return plan.model, False
    assert plan.source_task is not None and plan.source_settings is not None  # planned with the source to train
    return cached_source(
        plan.arch,
        plan.source_task,
        settings=plan.source_settings,
        arch_options=plan.arch_options or None,
        data_dir=plan.request.data_dir,
        progress=progress,
        preprocess=_for_task(plan.preprocess, plan.source_data),  # as its task was read: without a target's columns
    )
