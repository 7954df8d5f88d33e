"""Sources: the frozen model a scan probes, trained here (and cached), loaded from a checkpoint or pretrained."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import torch
from torch import nn

from ..core.surgery import require_head
from ..data.images.tasks import Preprocess, for_spec, with_columns
from ..data.spec import DatasetSpec, parse_spec
from ..data.task import TaskData, limit_per_class
from ..data.tensors import load_task
from ..errors import ArchitectureError, CheckpointError, ProbeError, ResultsError
from ..models.checkpoint import PretrainedWeights, SourceInfo, attach_info, load_raw, load_state_into, save_checkpoint
from ..models.pretrained import pretrained_file
from ..models.registry import create_model
from ..results.schema import final_figures
from ..settings import DEFAULT_ARCH, DEFAULT_SOURCE_DATA, RunSettings, init_seed
from ..training.trainer import fit, make_optimizer
from ..util.cache import cache_root
from ..util.device import resolve_device
from ..util.files import check_writable, file_sha256
from .progress import Progress, epoch_reporter

# How a source is trained: the training settings of the scan it serves, without the gate's. The first ones
# change its weights and key the source cache; the performance knobs never change a result on CPU.
SOURCE_TRAINING = ("epochs", "batch_size", "lr", "weight_decay", "seed", "augment", "train_size")
SOURCE_PERFORMANCE = ("device", "amp", "channels_last")


def source_settings(settings: RunSettings) -> RunSettings:
    """The settings a scan's source is trained with: its :data:`SOURCE_TRAINING` and :data:`SOURCE_PERFORMANCE`."""
    return RunSettings(**{name: getattr(settings, name) for name in SOURCE_TRAINING + SOURCE_PERFORMANCE})


def check_checkpoint_path(out: str | os.PathLike) -> None:
    """A one-line ResultsError, before any training, when a checkpoint cannot be written to ``out``."""
    out = Path(out)
    if out.is_dir():
        raise ResultsError(f"--out '{out}' is a folder; give a file name such as {out / 'source.pt'}")
    check_writable(out.parent, what="the checkpoint")


def train_source(
    arch: str = DEFAULT_ARCH,
    data: str | DatasetSpec | TaskData = DEFAULT_SOURCE_DATA,
    *,
    settings: RunSettings | None = None,
    out: str | os.PathLike | None = None,
    arch_options: dict | None = None,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    progress: Progress | None = None,
    preprocess: Preprocess | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    **overrides,
) -> nn.Module:
    """Train a source model of ``arch`` on task ``data`` (a spec, or a task already loaded); save a checkpoint to
    ``out`` when given.

    ``out`` is checked to be writable before anything else; ``download`` fetches missing data;
    ``image_column`` / ``label_column`` name the columns of Hugging Face ``data``. The checkpoint records an
    image folder by its absolute path, so it can be used from any directory.

    The returned model carries a :class:`SourceInfo` (architecture, options, data, settings, test top-1)
    that :func:`measure` and :func:`scan` use to pick the paper-style target task.
    """
    spec = data.spec if isinstance(data, TaskData) else data
    preprocess = with_columns(preprocess, (spec,), image_column, label_column)
    settings = (settings or RunSettings()).with_(**overrides)
    if out is not None:
        check_checkpoint_path(out)
    device = resolve_device(settings.device)
    if isinstance(data, TaskData):
        task = data
    else:
        task = load_task(data, data_dir=data_dir, download=download, preprocess=preprocess)
    task = limit_per_class(task, settings.train_size)
    arch_options = dict(arch_options or {})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed("source", settings.seed))
        model = create_model(
            arch, num_classes=task.num_classes, in_chans=task.in_chans, input_size=task.input_size, **arch_options
        )
    model.to(device)
    task = task.to(device)
    optimizer = make_optimizer(model, settings)
    outcome = fit(
        forward=lambda x, idx, split: model(x),
        trainable=model,
        optimizer=optimizer,
        task=task,
        settings=settings,
        seed=settings.seed,
        device=device,
        on_epoch=epoch_reporter(progress, None),
    )
    if outcome.failure:
        raise ProbeError(f"source training diverged: {outcome.failure}; lower --lr")
    model.eval().cpu()
    info = SourceInfo(
        arch=arch,
        arch_options=arch_options,
        num_classes=task.num_classes,
        in_chans=task.in_chans,
        input_size=task.input_size,
        dataset=recorded_name(task.spec),
        settings={**settings.to_dict(), **_preprocess_record(preprocess)},
        test_top1=final_figures(outcome.history, 1)["top1"],
    )
    attach_info(model, info)
    if out is not None:
        save_checkpoint(model, info, out)
        info.checkpoint, info.sha256 = str(out), file_sha256(out)
    return model


def recorded_name(spec: DatasetSpec) -> str:
    """How a checkpoint records its task: the spec, an image folder by its absolute path."""
    if spec.kind != "folder":
        return str(spec)
    return str(DatasetSpec(str(Path(spec.name).expanduser().resolve()), spec.classes))


def _preprocess_record(pre: Preprocess | None) -> dict:
    """What a checkpoint records of how its images were read: the size, and the Hugging Face columns named."""
    if pre is None:
        return {}
    return {"image_size": pre.image_size, **pre.columns()}


def load_source(
    path: str | os.PathLike,
    arch: str | None = None,
    *,
    num_classes: int | None = None,
    data: str | DatasetSpec | None = None,
    data_dir: str | os.PathLike | None = None,
    preprocess: Preprocess | None = None,
    **arch_options,
) -> nn.Module:
    """Load a source from a checkpoint (``probe train`` output, a plain state_dict, or .safetensors).

    The file is read with ``weights_only=True`` and never written. A plain state_dict needs ``arch`` and
    the source task ``data`` (or ``num_classes``, with in_chans/input_size from ``data``, read as
    ``preprocess`` says).
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
        task = load_task(data, data_dir=data_dir, preprocess=preprocess)
        info = SourceInfo(
            arch=arch,
            arch_options=dict(arch_options),
            num_classes=num_classes or task.num_classes,
            in_chans=task.in_chans,
            input_size=task.input_size,
            dataset=str(task.spec),
        )
    if info.arch is None or info.num_classes is None or info.in_chans is None or info.input_size is None:
        raise CheckpointError(f"'{path}' records an incomplete source (architecture, classes or image format missing)")
    # The weights come from the file: never ask for (or download) pretrained ones.
    info.arch_options = {k: v for k, v in info.arch_options.items() if k != "pretrained"}
    model = create_model(
        info.arch, num_classes=info.num_classes, in_chans=info.in_chans, input_size=info.input_size, **info.arch_options
    )
    load_state_into(model, raw["state_dict"], origin=f"checkpoint '{path}'")
    model.eval()
    info.checkpoint, info.sha256 = str(path), digest
    return attach_info(model, info)


def source_cache_path(
    arch: str,
    data: str | DatasetSpec | TaskData,
    *,
    settings: RunSettings,
    arch_options: dict | None = None,
    data_dir: str | os.PathLike | None = None,
    preprocess: Preprocess | None = None,
) -> Path:
    """Where :func:`cached_source` keeps the source of these arguments; the key covers architecture, options, data
    (for images from anywhere: their cache entry) and training settings."""
    # A setting left at None (train_size: every image) is left out, so the keys of earlier sources still match.
    trained_with = {k: v for k, v in settings.to_dict().items() if k in SOURCE_TRAINING and v is not None}
    spec = data.spec if isinstance(data, TaskData) else parse_spec(data)
    preprocess = for_spec(preprocess, spec)  # a Hugging Face target's columns do not change a digits source
    key_data = {"arch": arch, "options": arch_options or {}, "data": str(spec), "settings": trained_with}
    if preprocess is not None:
        key_data["preprocess"] = preprocess.to_dict()
    if spec.kind != "builtin":  # images from anywhere: their cache entry names their content and preprocessing
        task = data if isinstance(data, TaskData) else load_task(spec, data_dir=data_dir, preprocess=preprocess)
        key_data["images"] = {"cache": task.meta.get("cache"), "preprocessing": task.meta.get("preprocessing")}
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True, default=str).encode()).hexdigest()[:16]
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{arch}-{spec}").strip("_")[-60:]
    return cache_root() / "sources" / f"{label}-{key}.pt"


def cached_source(
    arch: str = DEFAULT_ARCH,
    data: str | DatasetSpec | TaskData = DEFAULT_SOURCE_DATA,
    *,
    settings: RunSettings | None = None,
    arch_options: dict | None = None,
    data_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    preprocess: Preprocess | None = None,
) -> tuple[nn.Module, bool]:
    """A source trained on ``data`` (a spec, or a task already loaded), reused from the cache when one with the same
    settings exists (:func:`source_cache_path`). Returns ``(model, reused)``."""
    settings = settings or RunSettings()
    spec = data.spec if isinstance(data, TaskData) else parse_spec(data)
    preprocess = for_spec(preprocess, spec)
    path = source_cache_path(
        arch, data, settings=settings, arch_options=arch_options, data_dir=data_dir, preprocess=preprocess
    )
    if path.is_file():
        try:
            return load_source(path), True
        except ProbeError:
            path.unlink(missing_ok=True)  # a corrupt cache entry is rebuilt
    model = train_source(
        arch, data, settings=settings, out=path, arch_options=arch_options, data_dir=data_dir, progress=progress,
        preprocess=preprocess,
    )  # fmt: skip
    return model, False


def pretrained_source(
    arch: str,
    data=None,
    *,
    data_dir: str | os.PathLike | None = None,
    in_chans: int | None = None,
    input_size: tuple[int, int] | None = None,
    weights: str | os.PathLike | None = None,
    preprocess: Preprocess | None = None,
    **options,
) -> nn.Module:
    """A source with pretrained weights (e.g. ImageNet) for images of ``data``'s format.

    ``arch`` is any registered name (``resnet18``, ``timm:convnext_atto``, ``tv:resnet18``). The weights come
    from timm's or torchvision's cache, downloaded there by those libraries when missing (see
    :mod:`probe.models.pretrained`), or from the local file ``weights`` (a state_dict of ``arch``). The source
    keeps its pretrained head (e.g. 1000 classes); targets built from its SourceInfo get a fresh model with
    their own head (``pretrained`` is not recorded in ``arch_options``). ``data`` (a dataset spec, prepared
    as ``preprocess`` says, or a task already loaded) or ``in_chans``/``input_size`` give the image format; grey
    images go to timm's adapted first conv, or are repeated to 3 channels for torchvision models.
    """
    dataset = None
    chans, size = (3 if in_chans is None else in_chans), ((224, 224) if input_size is None else input_size)
    if data is not None:
        task = data if isinstance(data, TaskData) else load_task(data, data_dir=data_dir, preprocess=preprocess)
        chans, size, dataset = task.in_chans, task.input_size, str(task.spec)
    options.pop("pretrained", None)
    if weights is not None:
        model = create_model(arch, num_classes=None, in_chans=chans, input_size=size, **options)
        load_state_into(model, load_raw(weights)["state_dict"], origin=f"weights file '{weights}'")
        source = str(Path(weights).expanduser().resolve())
    else:
        pretrained_file(arch)  # a cached copy, or a download that may start (else a one-line CheckpointError)
        model = create_model(arch, num_classes=None, in_chans=chans, input_size=size, pretrained=True, **options)
        source = pretrained_file(arch)  # the cached file now
    model.eval()
    info = SourceInfo(
        arch=arch,
        arch_options=dict(options),
        num_classes=_num_classes(model),
        in_chans=chans,
        input_size=(size[0], size[1]),
        dataset=None,
        pretrained=PretrainedWeights(source, dataset),
        checkpoint=source,
        sha256=file_sha256(source) if Path(source).is_file() else None,
    )
    return attach_info(model, info)


def _num_classes(model: nn.Module) -> int:
    classes = getattr(model, "num_classes", None)
    if isinstance(classes, int):
        return classes
    head = model.get_submodule(require_head(model))
    if not isinstance(head, nn.Linear):  # pragma: no cover - require_head finds an nn.Linear
        raise ArchitectureError(f"cannot tell how many classes {type(model).__name__}'s head has")
    return head.out_features


__all__ = [
    "SOURCE_PERFORMANCE",
    "SOURCE_TRAINING",
    "cached_source",
    "check_checkpoint_path",
    "load_source",
    "pretrained_source",
    "recorded_name",
    "source_cache_path",
    "source_settings",
    "train_source",
]
