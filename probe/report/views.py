"""How a measurement is read: its tasks, inits and layers in display order, and a one-line description."""

from __future__ import annotations

import math
from typing import Any

from ..results.schema import Measurement, Summary

TASK_TITLES = {"AnB": "AnB (transfer to the target task)", "AnA": "AnA (control: the source's own task)"}


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def inits_of(measurement: Measurement) -> list[float]:
    return sorted({run.spec.init for run in measurement.runs}, reverse=True)


def tasks_of(measurement: Measurement) -> list[str]:
    present = {run.spec.task for run in measurement.runs}
    return [t for t in ("AnB", "AnA") if t in present] + sorted(present - {"AnB", "AnA"})


def summary_index(measurement: Measurement) -> dict[tuple[str, float, str], Summary]:
    return {(s.task, s.init, s.layer): s for s in measurement.summaries}


def layer_order(measurement: Measurement) -> list[str]:
    """Every measured layer in forward order (a partial folder's layers without runs show as —)."""
    seen = {run.spec.layer for run in measurement.runs}
    return list(measurement.layers) + sorted(seen - set(measurement.layers))


def describe(measurement: Measurement) -> str:
    """``paper-cnn digits[0-4] → digits[5-9]``: what was measured, in a few words."""
    source = measurement.source or {}
    arch = source.get("arch") or source.get("class") or "model"
    data = source.get("dataset")
    return f"{arch} {data} → {measurement.target}" if data else f"{arch} → {measurement.target}"
