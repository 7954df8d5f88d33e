"""The public API, a thin facade over the layers below: train or load a source, measure a layer, scan layers.

The request policy lives here, below the CLI, so that ``probe.scan(...)`` and ``probe scan`` agree: the
dataset presets, the default number of jobs, the default target, the choice of source, and every check
that needs only the request (data present, output writable, device, layers and baselines known, settings
valid), which runs before any training or download.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from .backends import check_backend, default_jobs, executor_for
from .baselines import check_baselines, cka_after_run, run_baselines
from .core.layers import LayerInfo
from .data import DatasetSpec, TaskData, check_available, default_target, load_task, parse_spec
from .data.image_tasks import Preprocess, with_columns
from .data.spec import input_shape
from .engine.context import ProbeContext
from .engine.prepare import Prepared, default_target_of, prepare
from .engine.progress import Progress, ProgressEvent
from .engine.record import environment, fingerprint
from .engine.selection import check_layer_list, choose_layers, smallest_input_size
from .engine.sources import (
    cached_source,
    check_checkpoint_path,
    load_source,
    pretrained_source,
    source_settings,
    train_source,
)
from .errors import ProbeError, SettingsError
from .models.checkpoint import SourceInfo, recorded_info, source_info
from .models.pretrained import pretrained_input_config
from .models.registry import create_model, layer_table
from .results.schema import Measurement, RunResult, RunSpec, run_grid
from .results.store import ResultsFolder
from .settings import RunSettings, preset_for, source_preset_for
from .util.device import resolve_device
from .util.files import check_writable

__all__ = [
    "Prepared",
    "ProgressEvent",
    "ScanPlan",
    "cached_source",
    "check_checkpoint_path",
    "check_request",
    "layer_listing",
    "load_source",
    "measure",
    "plan_scan",
    "prepare",
    "preprocessing_for",
    "pretrained_source",
    "scan",
    "scan_settings",
    "source_model",
    "source_training_settings",
    "train_source",
]

# A dataset spec ('digits[5-9]', './flowers[0-4]', 'tv:SVHN', 'hf:beans'), a task, or data in Python: a Dataset
# pair, ((x_train, y_train), (x_test, y_test)) or (x, y) tensors.
Target = str | DatasetSpec | TaskData | tuple

TRAINED_AT = "the size the source was trained at"  # why a checkpoint's images are resized


# --------------------------------------------------------------------------------------------------
# Policy


def _dataset_name(data: Target) -> str:
    if isinstance(data, TaskData):
        return data.spec.name
    return "python" if isinstance(data, (tuple, list)) else parse_spec(data).name


def _is_spec(data: Target | None) -> bool:
    return data is not None and not isinstance(data, (TaskData, tuple, list))


def preprocessing_for(
    target: Target | None,
    *,
    arch: str | None = None,
    pretrained: bool = False,
    image_size: int | None = None,
    source_data: Target | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
) -> tuple[Preprocess | None, list[str]]:
    """How images from anywhere are read and prepared for this request, and the lines that say so.

    With pretrained weights: the model's own eval transform, ``Resize(R) + CenterCrop(S)`` with its resize
    filter (``image_size`` overrides S and keeps the model's ratio R/S, as timm's crop_pct), 3 channels and
    mean/std; else the data's native size (or ``image_size``, with R = S, bilinear) and its own statistics.
    Built-in datasets (digits, CIFAR) keep their native format and statistics. ``image_column`` /
    ``label_column`` apply to every Hugging Face spec of ``target`` and ``source_data`` (a SettingsError when
    there is none).
    """
    pre, notes = _model_preprocessing(target, arch, pretrained, image_size)
    return with_columns(pre, (target, source_data), image_column, label_column), notes


def _model_preprocessing(
    target: Target | None, arch: str | None, pretrained: bool, image_size: int | None
) -> tuple[Preprocess | None, list[str]]:
    """:func:`preprocessing_for` without the columns: the size, channels and statistics."""
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise SettingsError(f"--image-size {image_size} is invalid; give a positive number of pixels, e.g. 64")
    builtin = _is_spec(target) and parse_spec(target).kind == "builtin"  # type: ignore[arg-type]
    if not (pretrained and arch):
        if image_size is None:
            return None, []
        if builtin:
            return None, [f"--image-size applies to images from anywhere; {target} keeps its native size"]
        return Preprocess(image_size=image_size, origin="--image-size"), []
    cfg = pretrained_input_config(arch)
    if builtin:
        return None, [
            f"{target} is fed at its native size with its own mean/std, not {arch}'s pretrained "
            f"{cfg['image_size']}×{cfg['image_size']} input (that applies to image folders, tv: and hf: data)"
        ]
    size = image_size or cfg["image_size"]
    resize = _scaled_resize(size, cfg["image_size"], cfg["resize"])
    scaled = f", size {size} from --image-size (resize {resize}, the model's R/S ratio)"
    note = cfg["interpolation_note"]
    origin = cfg["origin"] + (scaled if image_size else "") + (f"; {note}" if note else "")
    pre = Preprocess(
        size, cfg["channels"], cfg["mean"], cfg["std"], origin, resize=resize, interpolation=cfg["interpolation"]
    )
    return pre, [f"{arch}'s {note}"] if note else []


def _scaled_resize(size: int, model_size: int, model_resize: int) -> int:
    """R' for a crop of ``size`` that keeps the model's resize/crop ratio (timm's crop_pct): round(S' · R / S),
    halves rounded up (``model_resize`` itself at the model's own size)."""
    return (2 * size * model_resize + model_size) // (2 * model_size)  # exact in integers


def scan_settings(
    target: Target | None, settings: RunSettings | None = None, *, preset: str | None = None, **given: Any
) -> RunSettings:
    """The settings of a request: ``settings`` when given, else the preset (``paper``, ``digits``; default: the
    target dataset's own), then ``given``.

    ``given`` values of None count as not given. Without ``settings``, ``jobs`` defaults to one worker per
    CPU core on CPU and one on a GPU (:func:`probe.backends.default_jobs`).
    """
    given = {name: value for name, value in given.items() if value is not None}
    if settings is not None:
        return settings.with_(**given)
    base = preset_for(_dataset_name(target) if target is not None else "", preset)
    chosen = RunSettings().with_(**{**base, **given})
    return chosen if "jobs" in given else chosen.with_(jobs=default_jobs(device=chosen.device))


def source_training_settings(data: Target, *, preset: str | None = None, **given: Any) -> RunSettings:
    """The settings a source for ``data`` is trained with (``probe train``, and the scan's own source): the
    preset's source settings, then ``given`` (values of None count as not given)."""
    given = {name: value for name, value in given.items() if value is not None}
    base = source_preset_for(_dataset_name(data), preset)
    return source_settings(RunSettings().with_(**{**base, **given}))


def check_request(
    *,
    target: Target | None = None,
    source_data: Target | None = None,
    layers: str | Sequence[str] | None = None,
    baselines: Sequence[str] = (),
    backend: str = "local",
    backend_options: Mapping | None = None,
    out: str | os.PathLike | None = None,
    settings: RunSettings | None = None,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
) -> list[str]:
    """Every check that needs only the request, with nothing trained, downloaded or written; the baselines.

    Data present (or to be downloaded), the layer list not empty, baselines and back-end known, the results
    folder writable, the device available. Each failure is a one-line ProbeError.
    """
    for spec in (target, source_data):
        if _is_spec(spec):
            check_available(spec, data_dir, download)  # type: ignore[arg-type]
    check_layer_list(layers)
    names = check_baselines(baselines)
    check_backend(backend, backend_options)
    if out is not None:
        check_writable(out)
    if settings is not None:
        resolve_device(settings.device)
    return names


@dataclass
class ScanPlan:
    """A checked scan request: the source (or how to train it), the tasks and the settings. Nothing trained yet."""

    model: nn.Module | None  # None: the source is trained here, or reused from the cache (see source_model)
    arch: str
    arch_options: dict
    source_data: str | None
    target: str
    settings: RunSettings
    data_dir: str | os.PathLike | None = None
    baselines: list[str] = field(default_factory=list)
    preprocess: Preprocess | None = None  # how images from anywhere are prepared (None: as they are)
    notes: list[str] = field(default_factory=list)  # one line each, said with the results
    source_settings: RunSettings | None = None  # how the source is trained when ``model`` is None


def _planned_source(
    source: str | os.PathLike | None,
    arch: str | None,
    pretrained: bool,
    arch_options: dict,
    source_data: str | None,
    target: str | None,
    data_dir: str | os.PathLike | None,
    download: bool,
    preprocess: Preprocess | None = None,
) -> tuple[nn.Module | None, str | None]:
    """The source model when it needs no training (a checkpoint, pretrained weights), and its own task.

    ``source`` with ``pretrained`` is a local file of pretrained weights for ``arch``.
    """
    if source is not None and pretrained and arch is None:
        raise SettingsError("a weights file with --pretrained needs --arch NAME (the architecture it is for)")
    if source is not None and not pretrained:
        columns = _columns_of(preprocess)  # how a plain state_dict's source data is read
        model = load_source(source, arch=arch, data=source_data, data_dir=data_dir, preprocess=columns, **arch_options)
        recorded = recorded_info(model).dataset
        if (
            source_data is not None
            and recorded is not None
            and str(parse_spec(recorded)) != str(parse_spec(source_data))
        ):
            raise SettingsError(f"'{source}' records source task {recorded}, not {source_data}; drop --source-data")
        return model, recorded or source_data
    if pretrained:
        if arch is None:
            raise SettingsError("--pretrained needs --arch, e.g. --arch resnet18 or --arch tv:resnet18")
        if target is None:
            raise SettingsError(
                "pretrained weights record no task of this toolkit, so there is no default target: "
                "give --target (e.g. cifar10)"
            )
        check_available(target, data_dir, download)
        if download:
            load_task(target, data_dir=data_dir, download=True, preprocess=preprocess)
        model = pretrained_source(
            arch, target, data_dir=data_dir, weights=source, preprocess=preprocess, **arch_options
        )
        return model, source_data
    return None, source_data or "digits[0-4]"


def plan_scan(
    source: str | os.PathLike | None = None,
    *,
    arch: str | None = None,
    pretrained: bool = False,
    arch_options: dict | None = None,
    source_data: str | None = None,
    target: str | None = None,
    layers: str | Sequence[str] | None = None,
    baselines: Sequence[str] = (),
    backend: str = "local",
    backend_options: Mapping | None = None,
    out: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    image_size: int | None = None,
    preset: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    **given: Any,
) -> ScanPlan:
    """Choose the source and the target, settle the settings and check the whole request, training nothing.

    The source is a checkpoint (``source``), pretrained weights (``pretrained``, needs ``arch`` and
    ``target``) or, by default, ``arch`` (paper-cnn) trained on ``source_data`` (digits[0-4]); the target
    defaults to the source task's pair (digits[0-4] → digits[5-9], cifar10 → cifar100). ``given`` holds
    settings (None: not given). With ``download`` the missing datasets are fetched at the end.
    Images from anywhere are prepared for the model (:func:`preprocessing_for`; ``image_size`` sets the size;
    ``image_column`` / ``label_column`` name the columns of every Hugging Face dataset of the request).
    """
    options = dict(arch_options or {})
    names = check_request(layers=layers, baselines=baselines, backend=backend, backend_options=backend_options, out=out)
    if pretrained and arch is None:
        raise SettingsError("--pretrained needs --arch, e.g. --arch resnet18 or --arch tv:resnet18")
    preprocess, notes = preprocessing_for(
        target, arch=arch, pretrained=pretrained, image_size=image_size, source_data=source_data,
        image_column=image_column, label_column=label_column,
    )  # fmt: skip
    if pretrained and target is not None:
        check_available(target, data_dir, download)  # a bad folder is said before any weights are fetched
    if source_data is not None and target is None and parse_spec(source_data).kind != "builtin":
        raise SettingsError(
            f"images from anywhere have no default target: give --target with --source-data {source_data}"
        )
    model, source_data = _planned_source(
        source, arch, pretrained, options, source_data, target, data_dir, download, preprocess
    )
    trained_at = (recorded_info(model).settings or {}).get("image_size") if model is not None else None
    if trained_at is not None and not pretrained and image_size is None:  # a checkpoint trained on resized images
        preprocess = _sized(preprocess, trained_at, TRAINED_AT)
    if target is None:
        if source_data is None:
            raise SettingsError(
                "this source records no task, so there is no default target: give --target (e.g. cifar10)"
            )
        target = str(default_target(source_data))
    settings = scan_settings(target, preset=preset, **given)
    trained = None
    if model is None and source_data is not None:  # the source is trained here: with its preset's settings
        trained = source_training_settings(source_data, preset=preset, **given)
    check_request(target=target, source_data=source_data, settings=settings, data_dir=data_dir, download=download)
    if model is None and arch is not None and image_size is None and source_data is not None:
        upscaled = _upscaled(arch, options, source_data, layers, data_dir, preprocess, download=download)
        preprocess, note = upscaled or (preprocess, None)
        notes += [note] if note else []
    if download:
        for spec in dict.fromkeys(s for s in (target, source_data) if s is not None):
            load_task(spec, data_dir=data_dir, download=True, preprocess=preprocess)
    for spec in dict.fromkeys(s for s in (target, source_data) if s is not None):
        if parse_spec(spec).kind != "builtin":  # decoded now: a bad file is said before any training
            load_task(spec, data_dir=data_dir, preprocess=preprocess)
    return ScanPlan(
        model, arch or "paper-cnn", options, source_data, target, settings, data_dir, names, preprocess, notes, trained
    )


def _columns_of(pre: Preprocess | None) -> Preprocess | None:
    """Only the Hugging Face columns of ``pre`` (None without them)."""
    if pre is None or not pre.columns():
        return None
    return Preprocess(image_column=pre.image_column, label_column=pre.label_column)


def _sized(pre: Preprocess | None, size: int, origin: str) -> Preprocess:
    """``pre`` (None, or only the columns to read) resized to ``size``, saying why."""
    return replace(pre or Preprocess(), image_size=size, origin=origin)


def _upscaled(
    arch: str,
    options: dict,
    data: str,
    layers: str | Sequence[str] | None,
    data_dir: str | os.PathLike | None,
    pre: Preprocess | None = None,
    *,
    download: bool = False,
) -> tuple[Preprocess, str] | None:
    """For a model trained here: the input size that keeps the deepest probed layer's maps at least 2×2 when
    the data's own size would give 1×1 maps (e.g. resnet18 on 8×8 digits), and the line that says so.
    ``download`` fetches the data when missing (it is read here, before the plan's own downloads)."""
    spec = parse_spec(data)
    if spec.kind == "builtin":
        shape = input_shape(spec)
        classes = spec.num_classes
    else:
        task = load_task(spec, data_dir=data_dir, download=download, preprocess=pre)
        shape, classes = (task.in_chans, *task.input_size), task.num_classes
    model = create_model(arch, num_classes=classes, in_chans=shape[0], input_size=shape[1:], **options)
    size = smallest_input_size(model, layers, shape)
    if size is None:
        return None
    note = (
        f"{arch} would see 1×1 maps at its deepest probed layer on {shape[1]}×{shape[2]} images: inputs resized to "
        f"{size}×{size}, the smallest size that keeps them at least 2×2 (--image-size overrides)"
    )
    return _sized(pre, size, "smallest size keeping the probed maps ≥ 2×2"), note


def source_model(plan: ScanPlan, progress: Progress | None = None) -> tuple[nn.Module, bool]:
    """The plan's source: as planned, or trained on its source task (reused from the cache when it exists).

    Returns ``(model, reused)``; reused is True only for a source taken from the cache.
    """
    if plan.model is not None:
        return plan.model, False
    settings = plan.source_settings or source_settings(plan.settings)
    options = plan.arch_options or None
    return cached_source(
        plan.arch,
        str(plan.source_data),
        settings=settings,
        arch_options=options,
        data_dir=plan.data_dir,
        progress=progress,
        preprocess=plan.preprocess,
    )


# --------------------------------------------------------------------------------------------------
# Measure and scan


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
            preprocess, more = _sized(None, trained_at, TRAINED_AT), []
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


# --------------------------------------------------------------------------------------------------
# Layers


@dataclass
class LayerListing:
    """What ``probe layers`` shows: the architecture, the data the shapes are for, and the probeable layers."""

    arch: str
    data: str | None
    shape: tuple[int, ...]
    layers: list[LayerInfo]


def layer_listing(
    arch: str | None = None,
    *,
    source: str | os.PathLike | None = None,
    data: str | None = None,
    arch_options: dict | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
) -> LayerListing:
    """The probeable layers of a checkpoint's model (``source``) or of ``arch`` (paper-cnn) built for ``data``.

    A checkpoint's own record of its input format wins over ``data`` (default digits); no data is read.
    ``image_column`` / ``label_column`` name the columns of Hugging Face ``data``.
    """
    options = dict(arch_options or {})
    columns = with_columns(None, (data,), image_column, label_column)
    if source is not None:
        model = load_source(source, arch=arch, data=data, **options)
        info = recorded_info(model)
        name = info.arch or arch or type(model).__name__
        if info.in_chans is not None and info.input_size is not None:  # the format the source was built for
            shape: tuple[int, ...] = (info.in_chans, *info.input_size)
            data = info.dataset or data
        else:
            shape = input_shape(data or "digits")
        return LayerListing(name, data, shape, layer_table(model, shape))
    name, spec = arch or "paper-cnn", parse_spec(data or "digits")
    if spec.kind == "builtin":
        shape, classes = input_shape(spec), spec.num_classes
    else:  # images from anywhere: their format is known once read (decoded once into the cache)
        check_available(spec)
        task = load_task(spec, preprocess=columns)
        shape, classes = (task.in_chans, *task.input_size), task.num_classes
    model = create_model(name, num_classes=classes, in_chans=shape[0], input_size=shape[1:], **options)
    return LayerListing(name, str(spec), shape, layer_table(model, shape, arch=name))
