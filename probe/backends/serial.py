"""The serial back-end: one run after another in this process."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from ..engine.context import ProbeContext
from ..engine.progress import Progress, epoch_reporter
from ..engine.run import run_one
from ..results.schema import RunResult, RunSpec


def execute_serial(
    context: ProbeContext,
    specs: Sequence[RunSpec],
    progress: Progress | None = None,
    *,
    offset: int = 0,
    total: int | None = None,
) -> Iterator[RunResult]:
    """Run ``specs`` one after another in this process, yielding each result as it finishes."""
    total = len(specs) if total is None else total
    for index, spec in enumerate(specs, start=offset):
        yield run_one(context, spec, epoch_reporter(progress, spec, index, total))
