"""The public API: train a source, measure one layer, scan every layer."""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from . import __version__
from .adapters import create_model, default_layers
from .checkpoint import (
    SourceInfo,
    attach_info,
    file_sha256,
    load_raw,
    load_state_into,
    save_checkpoint,
    source_info,
)
from .data import DatasetSpec, TaskData, default_target, load_task, parse_spec
from .device import resolve_device
from .errors import CheckpointError, DataError, LayerError, ProbeError, SettingsError
from .gate import QuantaGate
from .hooks import quanta_hooks, resolve_layer, source_forward
from .layers import check_layers, discover_layers
from .results import Measurement, RunResult, RunSpec, final_figures, run_grid
from .settings import RunSettings, init_seed
from .targets import TargetFactory
from .trainer import EpochEvent, autocast_for, fit, make_optimizer


@dataclass
class ProgressEvent:
    """Sent to a ``progress`` callback after every epoch of every run."""

    spec: RunSpec | None
    epoch: int
    epochs: int
    metrics: dict[str, float]
    run_index: int  # 0-based index of the run in the grid
    total_runs: int


Progress = Callable[[ProgressEvent], None]


# --------------------------------------------------------------------------------------------------
# Sources


def _settings(settings: RunSettings | None, overrides: dict) -> RunSettings:
    return (settings or RunSettings()).with_(**overrides) if overrides else (settings or RunSettings())


def train_source(
    arch: str = "paper-cnn",
    data: str | DatasetSpec = "digits[0-4]",
    *,
    settings: RunSettings | None = None,
    out: str | os.PathLike | None = None,
    arch_options: dict | None = None,
    data_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    **overrides,
) -> nn.Module:
    """Train a source model of ``arch`` on task ``data``; save a checkpoint to ``out`` when given.

    The returned model carries a :class:`SourceInfo` (architecture, options, data, settings, test top-1)
    that :func:`measure` and :func:`scan` use to pick the paper-style target task.
    """
    settings = _settings(settings, overrides)
    device = resolve_device(settings.device)
    task = load_task(data, data_dir=data_dir)
    arch_options = dict(arch_options or {})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed("source", settings.seed))
        model = create_model(
            arch, num_classes=task.num_classes, in_chans=task.in_chans, input_size=task.input_size, **arch_options
        )
    model.to(device)
    task = task.to(device)
    optimizer = make_optimizer(model, settings)
    on_epoch = None
    if progress is not None:
        on_epoch = lambda e: progress(ProgressEvent(None, e.epoch, e.epochs, e.metrics, 0, 1))  # noqa: E731
    outcome = fit(
        forward=lambda x, idx, split: model(x),
        trainable=model,
        optimizer=optimizer,
        task=task,
        settings=settings,
        seed=settings.seed,
        device=device,
        on_epoch=on_epoch,
    )
    if outcome.failure:
        raise ProbeError(f"source training diverged: {outcome.failure}; lower --lr")
    model.eval().cpu()
    info = SourceInfo(
        arch=arch,
        arch_options=arch_options,
        num_classes=task.num_classes,
        in_chans=task.in_chans,
        input_size=tuple(task.input_size),
        dataset=str(task.spec),
        settings=settings.to_dict(),
        test_top1=final_figures(outcome.history, 1)["top1"],
    )
    attach_info(model, info)
    if out is not None:
        save_checkpoint(model, info, out)
        info.checkpoint, info.sha256 = str(out), file_sha256(out)
    return model


def load_source(
    path: str | os.PathLike,
    arch: str | None = None,
    *,
    num_classes: int | None = None,
    data: str | DatasetSpec | None = None,
    data_dir: str | os.PathLike | None = None,
    **arch_options,
) -> nn.Module:
    """Load a source from a checkpoint (``probe train`` output, a plain state_dict, or .safetensors).

    The file is read with ``weights_only=True`` and never written. A plain state_dict needs ``arch`` and
    the source task ``data`` (or ``num_classes``, with in_chans/input_size from ``data``).
    """
    digest = file_sha256(path) if Path(path).is_file() else None
    raw = load_raw(path)
    if "info" in raw:
        info = SourceInfo.from_dict(raw["info"])
        if arch is not None and info.arch is not None and arch != info.arch:
            raise CheckpointError(
                f"'{path}' holds a '{info.arch}' model, not '{arch}'; drop --arch or pass the right checkpoint"
            )
        info.arch_options = {**info.arch_options, **arch_options}
    else:
        if arch is None:
            raise CheckpointError(f"'{path}' is a plain state_dict: say which architecture it is (--arch NAME)")
        if data is None:
            raise CheckpointError(f"'{path}' records no source task: give it (--source-data, e.g. cifar10)")
        task = load_task(data, data_dir=data_dir)
        info = SourceInfo(
            arch=arch,
            arch_options=dict(arch_options),
            num_classes=num_classes or task.num_classes,
            in_chans=task.in_chans,
            input_size=tuple(task.input_size),
            dataset=str(task.spec),
        )
    # The weights come from the file: never ask for (or download) pretrained ones.
    info.arch_options = {k: v for k, v in info.arch_options.items() if k != "pretrained"}
    model = create_model(
        info.arch, num_classes=info.num_classes, in_chans=info.in_chans, input_size=info.input_size, **info.arch_options
    )
    load_state_into(model, raw["state_dict"], origin=f"checkpoint '{path}'")
    model.eval()
    info.checkpoint, info.sha256 = str(path), digest
    return attach_info(model, info)


# The settings that change how a source is trained (and so key the source cache).
SOURCE_TRAINING_FIELDS = ("epochs", "batch_size", "lr", "weight_decay", "seed", "augment")


def _cache_dir() -> Path:
    return Path(os.environ.get("PROBE_CACHE", Path.home() / ".cache" / "quanta-probe"))


def cached_source(
    arch: str = "paper-cnn",
    data: str = "digits[0-4]",
    *,
    settings: RunSettings | None = None,
    arch_options: dict | None = None,
    data_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> tuple[nn.Module, bool]:
    """A source trained on ``data``, reused from the cache when one with the same settings exists.

    Returns ``(model, reused)``. The cache key covers architecture, options, data and training settings.
    """
    settings = settings or RunSettings()
    trained_with = {k: v for k, v in settings.to_dict().items() if k in SOURCE_TRAINING_FIELDS}
    key_data = {"arch": arch, "options": arch_options or {}, "data": str(parse_spec(data)), "settings": trained_with}
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:16]
    path = (
        _cache_dir()
        / "sources"
        / f"{arch.replace(':', '_')}-{str(parse_spec(data)).replace('[', '_').replace(']', '')}-{key}.pt"
    )
    if path.is_file():
        try:
            return load_source(path), True
        except ProbeError:
            path.unlink(missing_ok=True)  # a corrupt cache entry is rebuilt
    model = train_source(
        arch, data, settings=settings, out=path, arch_options=arch_options, data_dir=data_dir, progress=progress
    )
    return model, False


# --------------------------------------------------------------------------------------------------
# Runs


@dataclass
class ProbeContext:
    """Everything a run needs; a run is a pure function of (context, spec)."""

    source: nn.Module
    targets: TargetFactory
    tasks: dict[str, TaskData]
    settings: RunSettings
    device: torch.device
    _cache_key: tuple | None = field(default=None, repr=False)
    _cache: dict | None = field(default=None, repr=False)

    def source_tensors(self, layer: str, task_name: str) -> dict[str, torch.Tensor] | None:
        """Source tensors at ``layer`` for every train and test example, when they can be reused.

        Only without augmentation (then they are the same every epoch) and within the memory budget;
        None means: recompute them for every batch.
        """
        task = self.tasks[task_name]
        if not self.settings.cache_source or (self.settings.augment and task.augment.enabled):
            return None
        key = (layer, task_name)
        if self._cache_key == key:
            return self._cache
        self._cache_key, self._cache = None, None  # release the previous layer's tensors first
        point = resolve_layer(self.source, layer)
        with autocast_for(self.device, self.settings):
            probe = source_forward(self.source, point, task.train.x[:1])
        examples = len(task.train) + len(task.test)
        if probe.element_size() * probe[0].numel() * examples > self.settings.cache_budget_mb * 2**20:
            return None
        cache = {}
        for split_name, split in (("train", task.train), ("test", task.test)):
            parts = []
            for start in range(0, len(split), 256):
                with autocast_for(self.device, self.settings):
                    parts.append(source_forward(self.source, point, split.x[start : start + 256]))
            cache[split_name] = torch.cat(parts)
        self._cache_key, self._cache = key, cache
        return cache


def fresh_target(context: ProbeContext, task_name: str, seed: int) -> nn.Module:
    """The fresh target of run seed ``seed`` for task ``task_name``, on the context's device."""
    task = context.tasks[task_name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed("target", seed))
        target = context.targets(task.num_classes, task.in_chans, task.input_size)
    target.to(context.device)
    if context.device.type == "cuda" and context.settings.channels_last:
        target.to(memory_format=torch.channels_last)
    return target


def run_one(context: ProbeContext, spec: RunSpec, on_epoch: Callable[[EpochEvent], None] | None = None) -> RunResult:
    """Train one fresh target with a QUANTA gate at ``spec.layer``; return its history and finals."""
    settings, device = context.settings, context.device
    task = context.tasks[spec.task]
    target = fresh_target(context, spec.task, spec.seed)
    if settings.compile:
        torch.compiler.reset()  # this run's graphs only: a scan's many layers would exceed dynamo's recompile limit
        target.compile()  # in place: the layer names and the QUANTA hooks on submodules are kept
    gate = QuantaGate(spec.init).to(device)
    optimizer = make_optimizer(target, settings, gate)
    with quanta_hooks(context.source, target, spec.layer, gate) as wiring:
        cache = context.source_tensors(spec.layer, spec.task)
        if cache is None:
            forward = lambda x, idx, split: wiring(x)  # noqa: E731
        else:
            forward = lambda x, idx, split: wiring(x, z_source=cache[split].index_select(0, idx))  # noqa: E731
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
    return RunResult(
        spec=spec,
        history=outcome.history,
        final=final_figures(outcome.history, settings.last_epochs) if outcome.history else {},
        steps=outcome.steps,
        gate_lr=settings.effective_gate_lr,
        status="failed" if outcome.failure else "ok",
        failure=outcome.failure,
        seconds=outcome.seconds,
    )


# --------------------------------------------------------------------------------------------------
# Measure and scan


def probeable_layers(model: nn.Module, input_shape: Sequence[int] | None = None) -> list[str]:
    """The default probe layers: the adapter's set when the model has one, else every discovered point."""
    info = source_info(model)
    if info is not None and info.arch is not None:
        layers = default_layers(info.arch, model)
        if layers is not None:
            return layers
    if input_shape is None and info is not None and info.input_size is not None:
        input_shape = (info.in_chans, *info.input_size)
    if input_shape is None:
        raise LayerError("cannot discover layers without an input shape: pass layers=[...] or a target task")
    return [layer.name for layer in discover_layers(model, tuple(input_shape)) if layer.default]


def all_layers(model: nn.Module, input_shape: Sequence[int]) -> list[str]:
    """Every discovered probe point of ``model`` in forward order (what glob patterns match)."""
    return [layer.name for layer in discover_layers(model, tuple(input_shape))]


def expand_layers(model: nn.Module, patterns: Sequence[str], candidates: Callable[[], Sequence[str]]) -> list[str]:
    """Names and glob patterns → concrete layer names (checked); globs match ``candidates()`` in forward order."""
    layers: list[str] = []
    known: list[str] | None = None
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            known = list(candidates()) if known is None else known
            matched = [name for name in known if fnmatch.fnmatch(name, pattern)]
            if not matched:
                raise LayerError(f"no probeable layer matches '{pattern}'; available: {', '.join(known)}")
            layers += matched
        else:
            resolve_layer(model, pattern)
            layers.append(pattern)
    return list(dict.fromkeys(layers))


def _environment(device: torch.device) -> dict:
    env = {
        "quanta_probe": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    try:
        import torchvision

        env["torchvision"] = torchvision.__version__
    except ImportError:  # pragma: no cover
        pass
    try:
        root = Path(__file__).resolve().parent.parent
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if commit.returncode == 0 and (root / "probe").is_dir():
            env["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return env


def _resolve_target(model: nn.Module, target, data_dir) -> TaskData:
    if isinstance(target, TaskData):
        return target
    if target is None:
        info = source_info(model)
        if info is None or info.dataset is None:
            raise DataError(
                "this model records no source task, so a target task is needed: "
                "probe.measure(model, 'layer', target='digits[5-9]')"
            )
        target = default_target(info.dataset)
    return load_task(target, data_dir=data_dir)


def prepare(
    model: nn.Module | str | os.PathLike,
    target=None,
    *,
    settings: RunSettings,
    control: bool = False,
    source_data=None,
    data_dir=None,
) -> tuple[ProbeContext, nn.Module, dict]:
    """Resolve model, tasks, device and target factory for a measurement."""
    if isinstance(model, (str, os.PathLike)):
        model = load_source(model, data=source_data, data_dir=data_dir)
    if not isinstance(model, nn.Module):
        raise ProbeError(f"model must be an nn.Module or a checkpoint path, got {type(model).__name__}")
    device = resolve_device(settings.device)
    info = source_info(model) or SourceInfo()
    target_task = _resolve_target(model, target, data_dir)
    if info.in_chans is not None and (info.in_chans, tuple(info.input_size)) != (
        target_task.in_chans,
        tuple(target_task.input_size),
    ):
        raise DataError(
            f"the source takes {info.in_chans}×{info.input_size[0]}×{info.input_size[1]} inputs but "
            f"{target_task.spec} has {target_task.in_chans}×{target_task.input_size[0]}×{target_task.input_size[1]}; "
            "pick a target of the same image format"
        )
    tasks = {"AnB": target_task}
    if control:
        source_task_spec = source_data or info.dataset
        if source_task_spec is None:
            raise DataError("the control (AnA) needs the source's task: pass source_data='digits[0-4]' (--source-data)")
        tasks["AnA"] = load_task(source_task_spec, data_dir=data_dir)
    tasks = {name: task.to(device) for name, task in tasks.items()}
    # The source is never modified: a copy goes to another device, the original stays where it is.
    source = model if next(model.parameters()).device == device else copy.deepcopy(model).to(device)
    factory = TargetFactory(info.arch, dict(info.arch_options)) if info.arch else TargetFactory(template=model)
    context = ProbeContext(source, factory, tasks, settings, device)
    source_record = info.to_dict()
    source_record["class"] = type(model).__name__
    source_record["state_sha256"] = state_dict_sha256(model)
    return context, model, source_record


def state_dict_sha256(model: nn.Module) -> str:
    """A hash of every tensor in ``model.state_dict()`` (names, shapes, dtypes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def grid(layers: Sequence[str], settings: RunSettings, tasks: Sequence[str]) -> list[RunSpec]:
    """Every run of a scan, task-major then init, layer, seed (the order the results are shown in)."""
    return run_grid(layers, settings.init, settings.seed, settings.runs, tasks)


def execute_serial(
    context: ProbeContext,
    specs: Sequence[RunSpec],
    progress: Progress | None = None,
    offset: int = 0,
    total: int | None = None,
) -> Iterator[RunResult]:
    """Run ``specs`` one after another in this process, yielding each result as it finishes."""
    total = len(specs) if total is None else total
    for index, spec in enumerate(specs, start=offset):
        on_epoch = None
        if progress is not None:
            on_epoch = lambda e, spec=spec, index=index: progress(  # noqa: E731
                ProgressEvent(spec, e.epoch, e.epochs, e.metrics, index, total)
            )
        yield run_one(context, spec, on_epoch)


def execute(
    context: ProbeContext,
    specs: Sequence[RunSpec],
    progress: Progress | None = None,
    *,
    backend: str = "local",
    backend_options: dict | None = None,
    offset: int = 0,
    total: int | None = None,
) -> Iterator[RunResult]:
    """Run ``specs`` on the chosen back-end and yield results as they finish (in any order).

    ``local`` runs in this process (``settings.jobs == 1``) or in worker processes; ``ray`` on a Ray cluster.
    """
    if backend == "ray":
        from .ray_backend import execute_ray

        yield from execute_ray(context, specs, progress, offset=offset, total=total, **(backend_options or {}))
    elif backend != "local":
        raise SettingsError(f"unknown backend '{backend}': use local or ray")
    elif context.settings.jobs > 1 and len(specs) > 1:
        from .parallel import execute_parallel

        yield from execute_parallel(context, specs, progress, offset=offset, total=total)
    else:
        yield from execute_serial(context, specs, progress, offset=offset, total=total)


def fingerprint(context: ProbeContext, source_record: dict, layers: Sequence[str]) -> dict:
    """What must match for a results folder to be resumed: everything that changes a run's numbers."""
    settings = context.settings.to_dict()
    for knob in ("jobs", "cache_source", "cache_budget_mb", "device"):
        settings.pop(knob, None)
    return {
        # Runs of another release are not mixed into one folder (the trainer may have changed).
        "quanta_probe": __version__,
        "arch": source_record.get("arch") or source_record.get("class"),
        "arch_options": source_record.get("arch_options", {}),
        "source_sha256": source_record.get("sha256") or source_record.get("state_sha256"),
        "source_dataset": source_record.get("dataset"),
        "tasks": {name: str(task.spec) for name, task in context.tasks.items()},
        "layers": list(layers),
        "settings": settings,
    }


def scan(
    model: nn.Module | str | os.PathLike,
    layers: Sequence[str] | None = None,
    target=None,
    *,
    settings: RunSettings | None = None,
    control: bool = False,
    source_data=None,
    data_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    out: str | os.PathLike | None = None,
    fresh: bool = False,
    backend: str = "local",
    backend_options: dict | None = None,
    baselines: Sequence[str] = (),
    **overrides,
) -> Measurement:
    """Measure λS at each layer (default: every probeable layer, in forward order), one fresh target per run.

    ``target`` is a dataset spec such as ``'digits[5-9]'`` or ``'cifar100'``; None uses the pairing recorded
    with a source trained by the toolkit. ``control=True`` also runs AnA (target task = source task).
    With ``out`` every finished run is saved at once and a re-run resumes (``fresh=True`` starts over);
    ``baselines`` adds Yosinski transfer accuracy, LogME and H-score per layer (see probe.baselines).
    """
    settings = _settings(settings, overrides)
    context, model, source_record = prepare(
        model, target, settings=settings, control=control, source_data=source_data, data_dir=data_dir
    )
    target_task = context.tasks["AnB"]
    shape = (target_task.in_chans, *target_task.input_size)
    if layers is None:
        chosen = probeable_layers(model, shape)
    else:
        chosen = expand_layers(model, [layers] if isinstance(layers, str) else layers, lambda: all_layers(model, shape))
    check_layers(model, chosen, shape)
    specs = grid(chosen, settings, list(context.tasks))
    store = None
    if out is not None:
        from .store import ResultsFolder

        store = ResultsFolder(out, fingerprint(context, source_record, chosen), fresh=fresh)
    finished = store.finished() if store is not None else {}
    todo = [spec for spec in specs if spec.key not in finished]
    results = {key: finished[key] for key in (spec.key for spec in specs) if key in finished}
    started = time.perf_counter()
    try:
        for result in execute(
            context,
            todo,
            progress,
            backend=backend,
            backend_options=backend_options,
            offset=len(specs) - len(todo),
            total=len(specs),
        ):
            if store is not None:
                store.save_run(result)
            results[result.spec.key] = result
    except BaseException:
        if store is not None:
            store.close()
        raise
    environment = _environment(context.device)
    environment["seconds"] = time.perf_counter() - started
    environment["resumed_runs"] = len(specs) - len(todo)
    if store is not None and store.corrupt:
        environment["redone_corrupt_runs"] = [name for name, _ in store.corrupt]
    measurement = Measurement(
        settings=settings.to_dict(),
        source=source_record,
        target=str(target_task.spec),
        layers=list(chosen),
        runs=[results[spec.key] for spec in specs],
        environment=environment,
        extras={"tasks": {name: str(t.spec) for name, t in context.tasks.items()}},
    )
    if baselines:
        from .baselines import run_baselines

        measurement.extras["baselines"] = run_baselines(context, measurement, list(baselines), progress=progress)
    if store is not None:
        try:
            store.save_measurement(measurement)
        finally:
            store.close()
    return measurement


def measure(
    model: nn.Module | str | os.PathLike,
    layer: str,
    target=None,
    *,
    settings: RunSettings | None = None,
    control: bool = False,
    source_data=None,
    data_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    out: str | os.PathLike | None = None,
    fresh: bool = False,
    **overrides,
) -> Measurement:
    """Measure how transferable ``layer`` of the frozen ``model`` is to ``target`` (see :func:`scan`)."""
    return scan(
        model,
        [layer],
        target,
        settings=settings,
        control=control,
        source_data=source_data,
        data_dir=data_dir,
        progress=progress,
        out=out,
        fresh=fresh,
        **overrides,
    )
