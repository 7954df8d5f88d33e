"""The request policy, below the CLI so that ``probe.scan(...)`` and ``probe scan`` agree: the dataset presets,
the default number of jobs, how images are prepared for a model, and the checks ``probe train`` makes before any
work (a scan's are made once by :func:`probe.api.plan.plan_scan`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from ..backends import check_backend, default_jobs
from ..baselines import check_baselines
from ..data import DatasetSpec, TaskData, check_available, parse_spec
from ..data.images.rules import max_image_side
from ..data.images.tasks import Preprocess, with_columns
from ..data.registry import get_dataset
from ..engine.selection import check_layer_list
from ..engine.sources import source_settings
from ..errors import SettingsError
from ..models.pretrained import pretrained_input_config
from ..settings import RunSettings, averaged_epochs, check_preset, preset_settings, source_preset_settings
from ..util.device import resolve_device
from ..util.files import check_writable

# A dataset spec ('digits[5-9]', './flowers[0-4]', 'tv:SVHN', 'hf:beans'), a task, or data in Python: a Dataset
# pair, ((x_train, y_train), (x_test, y_test)) or (x, y) tensors.
Target = str | DatasetSpec | TaskData | tuple

TRAINED_AT = "the size the source was trained at"  # why a checkpoint's images are resized


def preset_name_for(data: Target | None, preset: str | None = None) -> str:
    """The preset a request on ``data`` starts from: ``preset`` when named, else the built-in data set's own
    (digits: ``digits``), else ``default``."""
    if preset is not None:
        return check_preset(preset)
    if isinstance(data, TaskData):
        data = data.spec
    if data is None or isinstance(data, (tuple, list)):
        return "default"
    spec = parse_spec(data)
    return get_dataset(spec.name).preset if spec.kind == "builtin" else "default"


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
    Built-in datasets (digits, CIFAR, Fashion-MNIST) keep their native format and statistics unless
    ``image_size`` is given (e.g. digits at Fashion-MNIST's 28×28, for a source of one and a target of the
    other). ``image_column`` / ``label_column`` apply to every Hugging Face spec of ``target`` and
    ``source_data`` (a SettingsError when there is none).
    """
    pre, notes = _model_preprocessing(target, arch, pretrained, image_size)
    return with_columns(pre, (target, source_data), image_column, label_column), notes


def _model_preprocessing(
    target: Target | None, arch: str | None, pretrained: bool, image_size: int | None
) -> tuple[Preprocess | None, list[str]]:
    """:func:`preprocessing_for` without the columns: the size, channels and statistics."""
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise SettingsError(f"--image-size {image_size} is invalid; give a positive number of pixels, e.g. 64")
    if image_size is not None and (side := max_image_side()) is not None and image_size > side:
        raise SettingsError(
            f"--image-size {image_size} is too large: images of {image_size}×{image_size} pixels are above PIL's "
            f"decompression-bomb limit; give at most {side}, e.g. 224"
        )
    builtin = _is_spec(target) and parse_spec(target).kind == "builtin"  # type: ignore[arg-type]
    if not (pretrained and arch):
        if image_size is None:
            return None, []
        return Preprocess(image_size=image_size, origin="--image-size"), []  # built-in data too: a common input
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
    base = preset_settings(preset_name_for(target, preset))
    chosen = RunSettings().with_(**{**base, **given})
    if chosen.lr_schedule == "cosine" and "last_epochs" not in base and "last_epochs" not in given:
        chosen = chosen.with_(last_epochs=averaged_epochs(chosen.epochs))
    return chosen if "jobs" in given else chosen.with_(jobs=default_jobs(device=chosen.device))


def source_training_settings(data: Target, *, preset: str | None = None, **given: Any) -> RunSettings:
    """The settings a source for ``data`` is trained with (``probe train``, and the scan's own source): the
    preset's source settings, then ``given`` (values of None count as not given)."""
    given = {name: value for name, value in given.items() if value is not None}
    base = source_preset_settings(preset_name_for(data, preset))
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


def resized(pre: Preprocess | None, size: int, origin: str) -> Preprocess:
    """``pre`` (None, or only the columns to read) resized to ``size``, saying why."""
    return replace(pre or Preprocess(), image_size=size, origin=origin)
