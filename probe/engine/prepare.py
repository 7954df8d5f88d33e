"""From a request to a run context: the source model, the tasks on the device, the target factory."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field

from torch import nn

from ..data.images.tasks import Preprocess, task_from_python
from ..data.spec import default_target
from ..data.task import limit_per_class
from ..data.tensors import TaskData, load_task
from ..errors import DataError, ProbeError
from ..models.checkpoint import SourceInfo, source_info
from ..models.targets import TargetFactory
from ..settings import RunSettings
from ..util.device import resolve_device
from .context import ProbeContext
from .record import state_dict_sha256
from .sources import load_source


@dataclass
class Prepared:
    """A measurement made ready: the run context, the source model as given (or loaded), its record."""

    context: ProbeContext
    model: nn.Module
    source_record: dict
    notes: list[str] = field(default_factory=list)  # one line each, said under the results


def default_target_of(model: nn.Module) -> str:
    """The paper-style target of the task ``model`` was trained on (a DataError when it records none)."""
    info = source_info(model)
    if info is None or info.dataset is None:
        raise DataError(
            "this model records no source task, so a target task is needed: "
            "probe.measure(model, 'layer', target='digits[5-9]')"
        )
    return str(default_target(info.dataset))


def _resolve_target(model: nn.Module, target, data_dir, preprocess: Preprocess | None) -> TaskData:
    if isinstance(target, TaskData):
        return target
    given = task_from_python(target, preprocess)
    if given is not None:
        return given
    return load_task(default_target_of(model) if target is None else target, data_dir=data_dir, preprocess=preprocess)


def check_format(model: nn.Module, task: TaskData) -> None:
    """A DataError when ``model`` records an image format other than ``task``'s (checked before any training)."""
    info = source_info(model) or SourceInfo()
    if info.in_chans is None or info.input_size is None:
        return
    if (info.in_chans, tuple(info.input_size)) != (task.in_chans, tuple(task.input_size)):
        raise DataError(
            f"the source takes {info.in_chans}×{info.input_size[0]}×{info.input_size[1]} inputs but "
            f"{task.spec} has {task.in_chans}×{task.input_size[0]}×{task.input_size[1]}; "
            "pick a target of the same image format"
        )


def no_control_note(model: nn.Module) -> str | None:
    """Why a pretrained source gets no AnA control (its task is data this toolkit does not have); else None."""
    info = source_info(model) or SourceInfo()
    if info.pretrained is None:
        return None
    return (
        f"no AnA control: {info.arch} was pretrained on data this toolkit does not have (e.g. ImageNet); "
        "name data of that task with --source-data (source_data=) to run it"
    )


def prepare(
    model: nn.Module | str | os.PathLike,
    target=None,
    *,
    settings: RunSettings,
    control: bool = False,
    source_data=None,
    data_dir=None,
    preprocess: Preprocess | None = None,
) -> Prepared:
    """Resolve model, tasks, device and target factory for a measurement.

    ``preprocess`` says how images from anywhere are prepared (size, channels, mean/std: a pretrained
    model's own, see :func:`probe.api.plan_scan`); built-in datasets ignore it. ``settings.train_size`` limits
    every task's training split (AnB and AnA alike) to that many images per class.
    """
    if isinstance(model, (str, os.PathLike)):
        model = load_source(model, data=source_data, data_dir=data_dir)
    if not isinstance(model, nn.Module):
        raise ProbeError(f"model must be an nn.Module or a checkpoint path, got {type(model).__name__}")
    info = source_info(model) or SourceInfo()
    target_task = _resolve_target(model, target, data_dir, preprocess)
    check_format(model, target_task)
    tasks = {"AnB": target_task}
    notes: list[str] = []
    if control:
        source_task_spec = source_data or info.dataset
        if source_task_spec is None and info.pretrained is not None:
            notes.append(str(no_control_note(model)))
        elif source_task_spec is None:
            raise DataError("the control (AnA) needs the source's task: pass source_data='digits[0-4]' (--source-data)")
        elif isinstance(source_task_spec, TaskData):
            tasks["AnA"] = source_task_spec
        else:
            given = task_from_python(source_task_spec, preprocess)
            tasks["AnA"] = given or load_task(source_task_spec, data_dir=data_dir, preprocess=preprocess)
    prepared = prepare_tasks(model, tasks, settings)
    prepared.notes += notes
    return prepared


def prepare_tasks(model: nn.Module, tasks: dict[str, TaskData], settings: RunSettings) -> Prepared:
    """The run context of ``model`` (the frozen source) and ``tasks`` as they are (AnB, and AnA for the control):
    each task's training split limited by ``settings.train_size``, on the settings' device."""
    device = resolve_device(settings.device)
    info = source_info(model) or SourceInfo()
    tasks = {name: limit_per_class(task, settings.train_size).to(device) for name, task in tasks.items()}
    # The source is never modified: a copy goes to another device, the original stays where it is.
    source = model if next(model.parameters()).device == device else copy.deepcopy(model).to(device)
    factory = TargetFactory(info.arch, dict(info.arch_options)) if info.arch else TargetFactory(template=model)
    context = ProbeContext(source, factory, tasks, settings, device)
    source_record = info.to_dict()
    source_record["class"] = type(model).__name__
    source_record["state_sha256"] = state_dict_sha256(model)
    return Prepared(context, model, source_record, [])
