"""The live progress display of the CLI, fed by the engine's ProgressEvents."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column

from ..api.estimate import duration


class LiveProgress:
    """A rich progress display on stderr fed by ProgressEvents; silent when stderr is no terminal.

    One bar per phase (training the source, the scan, baselines) in units of epochs, so the ETA covers
    the whole scan; the description shows the latest run, epoch, λS and top-1.
    """

    def __init__(self, enabled: bool, console: Console | None = None, estimate: float | None = None) -> None:
        self.enabled = enabled
        self.finished_runs: set[int] = set()
        self._tasks: dict[Any, Any] = {}
        self._done: dict[Any, dict[int, int]] = {}
        self._base: dict[Any, int] = {}
        # Bar, percentage and times first: on a narrow terminal only the description's tail is cut. Before rich has
        # a rate to extrapolate, the scan's estimate (measured before it started) says what to expect.
        expected = [TextColumn(f"of ~{duration(estimate)}")] if estimate else []
        self._progress = Progress(
            SpinnerColumn(),
            BarColumn(bar_width=20),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            *expected,
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn(
                "{task.description}", table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis", min_width=10)
            ),
            console=console or Console(file=sys.stderr),
            expand=True,
            transient=True,
            disable=not enabled,
        )

    def __enter__(self) -> LiveProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def phase(self, label: str) -> Callable:
        """A progress callback for one phase (``source``, ``scan``)."""
        return lambda event: self._update(label, event)

    def _update(self, phase: str, event) -> None:
        spec = event.spec
        quanta = spec is not None and spec.task in ("AnB", "AnA")  # else a baseline's own training run
        if phase == "scan" and quanta and event.epoch >= event.epochs:
            self.finished_runs.add(event.run_index)
        if not self.enabled:
            return
        key = (phase, quanta, spec is None, event.total_runs, event.epochs)
        total = max(1, event.total_runs) * max(1, event.epochs)
        if key not in self._tasks:
            base = event.run_index if spec is not None else 0
            self._base[key], self._done[key] = base, {}
            self._tasks[key] = self._progress.add_task("", total=total, completed=base * event.epochs)
        self._done[key][event.run_index] = event.epoch
        completed = min(total, self._base[key] * event.epochs + sum(self._done[key].values()))
        metrics = event.metrics or {}
        parts = []
        if spec is None:
            parts.append("training the source" if phase == "source" else phase)
        elif quanta:
            parts.append(f"run {event.run_index + 1}/{event.total_runs}")
            parts.append(f"{spec.task} [bold]{escape(spec.layer)}[/bold] init {spec.init:g} seed {spec.seed}")
        else:  # baselines report their own runs (e.g. Yosinski transfers) with their task as label
            parts.append(f"baseline run {event.run_index + 1}/{event.total_runs}")
            parts.append(f"{escape(spec.task)} [bold]{escape(spec.layer)}[/bold] seed {spec.seed}")
        parts.append(f"epoch {event.epoch}/{event.epochs}")
        if "lambda_source" in metrics:
            parts.append(f"λS [cyan]{metrics['lambda_source']:.3f}[/cyan]")
        if "top1" in metrics:
            parts.append(f"top-1 {metrics['top1']:.3f}")
        self._progress.update(self._tasks[key], completed=completed, description=" · ".join(parts))


def live_progress(quiet: bool, estimate: float | None = None) -> LiveProgress:
    """The display of a command: on stderr when it is a terminal; ``estimate`` (seconds) shown beside the time."""
    return LiveProgress(enabled=not quiet and sys.stderr.isatty(), estimate=estimate)
