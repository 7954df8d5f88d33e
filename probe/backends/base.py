"""The one interface every back-end implements: run specs, yield results as they finish."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from ..engine.context import ProbeContext
from ..engine.progress import Progress
from ..results.schema import RunResult, RunSpec


class Executor(Protocol):
    """Runs ``specs`` and yields each RunResult as it finishes (in any order).

    ``progress`` receives a ProgressEvent per epoch of every run, whose ``run_index`` is ``offset`` plus the
    run's position in ``specs`` and whose ``total_runs`` is ``total`` (default ``len(specs)``). Back-end
    options (jobs, a Ray address, ...) are bound before the call (see :func:`probe.backends.executor_for`).
    """

    def __call__(
        self,
        context: ProbeContext,
        specs: Sequence[RunSpec],
        progress: Progress | None = None,
        *,
        offset: int = 0,
        total: int | None = None,
    ) -> Iterator[RunResult]: ...
