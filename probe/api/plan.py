"""A scan request checked and planned before anything is trained: the source (a checkpoint, pretrained
weights, or one to train here), the target, the settings and how images are prepared.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..data import check_available, default_target, load_task, parse_spec
from ..data.images.tasks import Preprocess
from ..data.spec import input_shape
from ..engine.progress import Progress
from ..engine.selection import smallest_input_size
from ..engine.sources import cached_source, load_source, pretrained_source, source_settings
from ..errors import SettingsError
from ..models.checkpoint import recorded_info
from ..models.registry import create_model
from ..settings import RunSettings
from .policy import (
    TRAINED_AT,
    check_request,
    columns_only,
    preprocessing_for,
    resized,
    scan_settings,
    source_training_settings,
)


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
    if source is not None and not pretrained:
        columns = columns_only(preprocess)  # how a plain state_dict's source data is read
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
        if download:  # (plan_scan has checked the target's folder before this)
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
        preprocess = resized(preprocess, trained_at, TRAINED_AT)
    if target is None:
        if source_data is None:
            raise SettingsError(
                "this source records no task, so there is no default target: give --target (e.g. cifar10)"
            )
        target = str(default_target(source_data))
    settings = scan_settings(target, preset=preset, **given)
    trained = None
    if model is None and source_data is not None:  # the source is trained here: with its preset's settings
        # --train-size limits the scan's tasks; the source is trained on its whole task (probe train limits it)
        trained = source_training_settings(source_data, preset=preset, **{**given, "train_size": None})
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
    return resized(pre, size, "smallest size keeping the probed maps ≥ 2×2"), note


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
