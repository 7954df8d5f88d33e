"""Progress events: what a ``progress`` callback receives after every epoch of every run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..results.schema import RunSpec
from ..training.trainer import EpochEvent


@dataclass
class ProgressEvent:
    """Sent to a ``progress`` callback after every epoch of every run."""

    spec: RunSpec | None  # None while the source trains
    epoch: int
    epochs: int
    metrics: dict[str, float]
    run_index: int  # 0-based index of the run in the grid
    total_runs: int

    @classmethod
    def of(cls, spec: RunSpec | None, event: EpochEvent, index: int, total: int) -> ProgressEvent:
        """The progress event of run ``index`` of ``total`` for one trainer epoch event."""
        return cls(spec, event.epoch, event.epochs, event.metrics, index, total)


Progress = Callable[[ProgressEvent], None]


def epoch_reporter(
    progress: Progress | None, spec: RunSpec | None, index: int = 0, total: int = 1
) -> Callable[[EpochEvent], None] | None:
    """An ``on_epoch`` callback reporting run ``index`` of ``total`` to ``progress``; None without a listener."""
    if progress is None:
        return None
    return lambda event: progress(ProgressEvent.of(spec, event, index, total))
