"""The tables a researcher reads: the results table, the rank correlations, strict JSON for ``--json``.

* :func:`results_table` — one rich table, a row per layer in forward order (λS, top-1, top-3, loss,
  precision and recall as mean ± std over runs; AnA and baseline columns when present).
* :func:`to_json` — strict JSON (NaN and ±inf become ``null``) for ``--json`` output.
"""

from __future__ import annotations

import json
import math
from typing import Any

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..results.assessment import assess
from ..results.labels import BASELINE_LABELS, METRIC_LABELS
from ..results.quality import SETTLED_DRIFT
from ..results.schema import TEST_METRICS, Measurement, Summary, strict_json
from .views import describe, finite, inits_of, layer_order, summary_index, tasks_of


def format_mean_std(mean: float, std: float, ok_runs: int, digits: int = 3) -> str:
    """``0.812 ± 0.014``; the mean alone for a single run; ``—`` when there is no value."""
    if not finite(mean):
        return "—"
    if ok_runs < 2 or not finite(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def to_json(data: Any) -> str:
    """Strict, indented JSON of ``data`` (NaN and ±inf become null)."""
    return json.dumps(strict_json(data), indent=2, allow_nan=False, ensure_ascii=False)


UNSETTLED_MARK = "*"


def _cell(summary: Summary | None, metric: str) -> str:
    if summary is None:
        return "—"
    text = format_mean_std(summary.mean.get(metric, math.nan), summary.std.get(metric, math.nan), summary.ok_runs)
    if metric == "lambda_source" and summary.ok_runs and summary.settled is False:
        text += f" {UNSETTLED_MARK}"  # still moving over the averaged epochs: see the caption
    return text


def _baseline_cell(value: Any) -> str:
    """A baseline's cell: mean ± std over its runs, the plain number for one run or a score, ``—`` when none."""
    if isinstance(value, dict):
        runs = value.get("runs")
        several = runs > 1 if isinstance(runs, int) else finite(value.get("std"))
        return format_mean_std(value.get("mean", math.nan), value.get("std", math.nan), 2 if several else 1)
    if finite(value):
        return f"{value:.3f}"
    return "—"


def _budgets(measurement: Measurement) -> str:
    by_task: dict[str, float] = {}
    for s in measurement.summaries:
        by_task[s.task] = max(by_task.get(s.task, 0.0), s.gate_budget)
    if not by_task:
        return "—"
    if len(set(round(v, 6) for v in by_task.values())) == 1:
        return f"{next(iter(by_task.values())):.3g}"
    return ", ".join(f"{value:.3g} ({task})" for task, value in by_task.items())


def _epochs_run(measurement: Measurement) -> int:
    """The most epochs a successful run trained (0 without one)."""
    return max((s.epochs for s in measurement.summaries), default=0)


def _last_epochs(measurement: Measurement) -> int:
    return int((measurement.settings or {}).get("last_epochs", 10))


def caption(measurement: Measurement) -> str:
    """The line under the table: source accuracy, gate budget, runs, what a cell is (the mean of the epochs it
    averages) and, when some are, that λS was still moving or that the runs were too short to tell."""
    source = measurement.source or {}
    settings = measurement.settings or {}
    parts = []
    top1 = source.get("test_top1")
    if finite(top1):
        parts.append(f"source test top-1 {top1:.3f}")
    gate_lrs = sorted({round(r.gate_lr, 12) for r in measurement.runs})
    schedules = {r.lr_schedule for r in measurement.runs}
    if schedules == {"cosine"}:
        peak = f"peak {gate_lrs[0]:.3g}, " if len(gate_lrs) == 1 else ""
        gate_lr = f"gate lr {peak}cosine, summed over the steps"
    else:
        gate_lr = f"gate_lr {gate_lrs[0]:.3g} × steps" if len(gate_lrs) == 1 else "gate_lr × steps"
    parts.append(f"gate budget ({gate_lr}) {_budgets(measurement)}")
    runs = settings.get("runs", 1)
    averaged = min(_last_epochs(measurement), _epochs_run(measurement) or _last_epochs(measurement))
    cell = f"mean ± std over {runs} runs" if runs and runs > 1 else "1 run"
    cell += f", each the mean of its last {averaged} epochs" if averaged > 1 else ", each its last epoch"
    parts.append(cell)
    summaries = [s for s in measurement.summaries if s.ok_runs]
    if any(s.settled is False for s in summaries):
        parts.append(
            f"{UNSETTLED_MARK} λS still moving over those epochs (drift > {SETTLED_DRIFT:g}): not a result yet, "
            "train longer (see dynamics.png)"
        )
    if any(s.settled is None for s in summaries):
        parts.append(f"whether λS settled is not judged: {_too_short(measurement)}")
    return " · ".join(parts)


def _too_short(measurement: Measurement) -> str:
    """Why the runs could not be judged settled or not."""
    last = _last_epochs(measurement)
    if last < 2:
        return "one averaged epoch shows no drift"
    ran = _epochs_run(measurement)
    runs = f"runs of {ran} epoch{'' if ran == 1 else 's'}"
    return f"{runs}, shorter than the averaging window of {last} (train {last} or more)"


def quality_line(measurement: Measurement) -> str:
    """One line on how far the table can be trusted (probe.results.assessment): separation, repeatability,
    agreement with Yosinski, impairment, and the unsettled layers or those whose runs were too short to judge, as
    far as the measurement has them."""
    quality = assess(measurement)
    parts = []
    separation = quality.get("separation") or {}
    if separation:
        last = list(separation)[-1]
        entry = separation[last]
        spread = entry["in_spread"]
        parts.append(
            f"AnA − AnB λS at {last} {entry['difference']:+.3f}" + (f" ({spread:.1f} sd)" if finite(spread) else "")
        )
    if "repeatability" in quality:
        parts.append(f"layer ranking over disjoint seeds ρ {quality['repeatability']:.2f}")
    if finite(quality.get("agreement_yosinski")):
        reference = quality.get("yosinski_repeatability")
        parts.append(
            f"ρ(λS, Yosinski AnB frozen) {quality['agreement_yosinski']:.2f}"
            + (f" (Yosinski's own ranking over disjoint seeds ρ {reference:.2f})" if finite(reference) else "")
        )
    if finite(quality.get("impairment")):
        parts.append(f"top-1 lost to the gate vs the target alone {quality['impairment']:+.3f}")
    unsettled, not_judged = quality["unsettled"], quality["not_judged"]
    if unsettled:
        parts.append("unsettled: " + ", ".join(f"{u['layer']} ({u['task']})" for u in unsettled))
    if not_judged:
        judged = len(unsettled) + sum(1 for s in measurement.summaries if s.ok_runs and s.settled)
        which = "" if not judged else ", ".join(f"{u['layer']} ({u['task']})" for u in not_judged) + ": "
        parts.append(f"settling not judged: {which}{_too_short(measurement)}")
    elif not unsettled:
        parts.append("every λS settled")
    return "quality: " + " · ".join(parts)


def results_table(measurement: Measurement) -> Table:
    """One row per layer in forward order; see the module docstring for the columns."""
    inits, tasks = inits_of(measurement), tasks_of(measurement)
    index = summary_index(measurement)
    first = inits[0] if inits else None
    several = len(inits) > 1
    partial = any(s.ok_runs < s.runs for s in index.values())
    baselines = (measurement.extras or {}).get("baselines") or {}
    per_layer = baselines.get("per_layer") or {}
    baseline_keys = list(dict.fromkeys(k for row in per_layer.values() for k in row))

    note = caption(measurement)
    head = baselines.get("head") or {}
    if head:  # LEEP, NCE: the source head, one figure per scan
        scores = ", ".join(f"{BASELINE_LABELS.get(k, k)} {_baseline_cell(v)}" for k, v in head.items())
        note += f" · source head on the target train split: {scores}"
    if several:
        note += f" · top-1 to recall: runs with λS init {first:g}"
    table = Table(
        title=escape(f"QUANTA transferability: {describe(measurement)}"), caption=escape(note), header_style="bold"
    )
    table.add_column("layer", style="bold")  # names are added as Text: never read as markup
    for init in inits:
        table.add_column(f"λS (init {init:g})" if several else "λS", justify="right", style="cyan")
    for metric in TEST_METRICS:
        table.add_column(METRIC_LABELS[metric], justify="right")
    if partial:
        table.add_column("ok / runs", justify="right")
    control = "AnA" in tasks
    if control:
        for init in inits:
            table.add_column(f"AnA λS (init {init:g})" if several else "AnA λS", justify="right", style="magenta")
        table.add_column("AnA top-1", justify="right", style="magenta")
    for key in baseline_keys:
        table.add_column(BASELINE_LABELS.get(key, key), justify="right", style="green")

    for layer in layer_order(measurement):
        main = index.get(("AnB", first, layer)) if first is not None else None
        row: list = [Text(layer)]
        row += [_cell(index.get(("AnB", init, layer)), "lambda_source") for init in inits]
        row += [_cell(main, metric) for metric in TEST_METRICS]
        if partial:
            group = [index[k] for k in index if k[0] == "AnB" and k[2] == layer]
            ok, runs = sum(s.ok_runs for s in group), sum(s.runs for s in group)
            row.append(Text(f"{ok} / {runs}", style="red" if ok < runs else ""))
        if control:
            row += [_cell(index.get(("AnA", init, layer)), "lambda_source") for init in inits]
            row.append(_cell(index.get(("AnA", first, layer)) if first is not None else None, "top1"))
        row += [_baseline_cell(per_layer.get(layer, {}).get(key)) for key in baseline_keys]
        table.add_row(*row)
    return table


def correlations_table(measurement: Measurement) -> Table | None:
    """Rank correlations of λS with each baseline (from ``extras['baselines']``), or None."""
    correlations = ((measurement.extras or {}).get("baselines") or {}).get("correlations") or {}
    if not correlations:
        return None
    kinds = list(dict.fromkeys(k for row in correlations.values() if isinstance(row, dict) for k in row))
    head = list(((measurement.extras or {}).get("baselines") or {}).get("head") or {})
    table = Table(
        title="rank correlation of λS with the baselines, over layers",
        header_style="bold",
        caption=escape(
            f"{', '.join(BASELINE_LABELS.get(k, k) for k in head)}: one figure per scan (the source head), no rank"
            " over layers"
        )
        if head
        else None,
    )
    table.add_column("baseline", style="bold")
    for kind in kinds:
        table.add_column(kind.capitalize(), justify="right")
    for name, row in correlations.items():
        row = row if isinstance(row, dict) else {}
        table.add_row(Text(BASELINE_LABELS.get(name, name)), *[_baseline_cell(row.get(kind)) for kind in kinds])
    return table
