"""The run context: everything a run needs (frozen source, target factory, tasks, settings, device),
and the fresh target of a run."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core.hooks import resolve_layer, source_forward
from ..data.tensors import TaskData
from ..models.targets import TargetFactory
from ..settings import RunSettings, init_seed
from ..training.trainer import autocast_for


@dataclass
class ProbeContext:
    """Everything a run needs; a run is a pure function of (context, spec)."""

    source: nn.Module
    target_factory: TargetFactory
    tasks: dict[str, TaskData]
    settings: RunSettings
    device: torch.device
    # Measures taken at the end of each run from its trained target, e.g. a baseline's CKA: called as
    # ``after_run(context, spec, target)`` with the hooks removed, returning {name: float} for RunResult.measures.
    # None (the default) costs nothing. A module-level function, so that it travels to worker processes and Ray.
    after_run: Callable[[ProbeContext, Any, nn.Module], dict[str, float]] | None = None
    _cache_key: tuple | None = field(default=None, repr=False)
    _cache: dict | None = field(default=None, repr=False)

    def source_tensors(self, layer: str, task_name: str) -> dict[str, torch.Tensor] | None:
        """Source tensors at ``layer`` for the examples of each split that can reuse them, by split name.

        The test split is never augmented, so its tensors are the same every epoch; the train split's are too
        when there is no augmentation. Within the memory budget only; None (or a split missing from the dict)
        means: recompute them for every batch.
        """
        task = self.tasks[task_name]
        if not self.settings.cache_source:
            return None
        augmented = self.settings.augment and task.augment.enabled
        key = (layer, task_name, augmented)
        if self._cache_key == key:
            return self._cache
        self._cache_key, self._cache = None, None  # release the previous layer's tensors first
        point = resolve_layer(self.source, layer)
        with autocast_for(self.device, self.settings):
            probe = source_forward(self.source, point, task.train.rows(0, 1))
        splits = (("test", task.test),) if augmented else (("train", task.train), ("test", task.test))
        examples = sum(len(split) for _, split in splits)
        if probe.element_size() * probe[0].numel() * examples > self.settings.cache_budget_mb * 2**20:
            return None
        cache = {}
        for split_name, split in splits:
            parts = []
            for start in range(0, len(split), 256):
                with autocast_for(self.device, self.settings):
                    parts.append(source_forward(self.source, point, split.rows(start, start + 256)))
            cache[split_name] = torch.cat(parts)
        self._cache_key, self._cache = key, cache
        return cache

    def without_cache(self, **changes: Any) -> ProbeContext:
        """A copy with ``changes`` and no source-tensor cache (what a worker process or Ray task receives)."""
        return dataclasses.replace(self, _cache_key=None, _cache=None, **changes)


def fresh_target(context: ProbeContext, task_name: str, seed: int) -> nn.Module:
    """The fresh target of run seed ``seed`` for task ``task_name``, on the context's device."""
    task = context.tasks[task_name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed("target", seed))
        target = context.target_factory(task.num_classes, task.in_chans, task.input_size)
    target.to(context.device)
    if context.device.type == "cuda" and context.settings.channels_last:
        target.to(memory_format=torch.channels_last)
    return target
