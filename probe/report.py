"""What a researcher reads and publishes: the results table, machine-readable JSON and the figures.

* :func:`results_table` — one rich table, a row per layer in forward order (λS, top-1, top-3, loss,
  precision and recall as mean ± std over runs; AnA and baseline columns when present).
* :func:`to_json` — strict JSON (NaN and ±inf become ``null``) for ``--json`` output.
* :func:`transferability_figure` — the paper's fig. 4: λS per layer with error bars and the target's
  top-1 on a second axis, the source's accuracy as a dashed line; a panel per task (AnA, AnB).
* :func:`dynamics_figure` — the paper's fig. 5, bottom row: λS against epoch, a line per layer
  (mean, band ± std over runs); a panel per task and λS init.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot state, no display
needed) and written atomically, so an interrupted write never leaves half a PNG.
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .checkpoint import atomic_write_bytes
from .results import Measurement, Summary, strict_json

METRIC_LABELS = {
    "lambda_source": "λS",
    "top1": "top-1",
    "top3": "top-3",
    "loss": "loss",
    "precision": "precision",
    "recall": "recall",
}
BASELINE_LABELS = {
    "AnB_frozen": "Yosinski AnB",
    "AnB_finetune": "Yosinski AnB+",
    "AnA_frozen": "Yosinski AnA",
    "AnA_finetune": "Yosinski AnA+",
    "BnB_frozen": "Yosinski BnB",
    "BnB_finetune": "Yosinski BnB+",
    "logme": "LogME",
    "hscore": "H-score",
}
TASK_TITLES = {"AnB": "AnB (transfer to the target task)", "AnA": "AnA (control: the source's own task)"}
FIGURES = ("transferability.png", "dynamics.png")


# --------------------------------------------------------------------------------------- numbers


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def format_mean_std(mean: float, std: float, ok_runs: int, digits: int = 3) -> str:
    """``0.812 ± 0.014``; the mean alone for a single run; ``—`` when there is no value."""
    if not _finite(mean):
        return "—"
    if ok_runs < 2 or not _finite(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def to_json(data: Any) -> str:
    """Strict, indented JSON of ``data`` (NaN and ±inf become null)."""
    return json.dumps(strict_json(data), indent=2, allow_nan=False, ensure_ascii=False)


# ----------------------------------------------------------------------------------------- table


def _inits(measurement: Measurement) -> list[float]:
    return sorted({run.spec.init for run in measurement.runs}, reverse=True)


def _tasks(measurement: Measurement) -> list[str]:
    present = {run.spec.task for run in measurement.runs}
    return [t for t in ("AnB", "AnA") if t in present] + sorted(present - {"AnB", "AnA"})


def _summary_index(measurement: Measurement) -> dict[tuple[str, float, str], Summary]:
    return {(s.task, s.init, s.layer): s for s in measurement.summaries}


def _layer_order(measurement: Measurement) -> list[str]:
    """Every measured layer in forward order (a partial folder's layers without runs show as —)."""
    seen = {run.spec.layer for run in measurement.runs}
    return list(measurement.layers) + sorted(seen - set(measurement.layers))


def _cell(summary: Summary | None, metric: str) -> str:
    if summary is None:
        return "—"
    return format_mean_std(summary.mean.get(metric, math.nan), summary.std.get(metric, math.nan), summary.ok_runs)


def _baseline_cell(value: Any) -> str:
    if isinstance(value, dict):
        return format_mean_std(
            value.get("mean", math.nan), value.get("std", math.nan), 2 if _finite(value.get("std")) else 1
        )
    if _finite(value):
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


def describe(measurement: Measurement) -> str:
    """``paper-cnn digits[0-4] → digits[5-9]``: what was measured, in a few words."""
    source = measurement.source or {}
    arch = source.get("arch") or source.get("class") or "model"
    data = source.get("dataset")
    return f"{arch} {data} → {measurement.target}" if data else f"{arch} → {measurement.target}"


def caption(measurement: Measurement) -> str:
    """The line under the table: source accuracy, gate budget, runs and what a cell is."""
    source = measurement.source or {}
    settings = measurement.settings or {}
    parts = []
    top1 = source.get("test_top1")
    if _finite(top1):
        parts.append(f"source test top-1 {top1:.3f}")
    gate_lr = settings.get("gate_lr") or settings.get("lr")
    parts.append(
        f"gate budget (gate_lr {gate_lr:g} × steps) {_budgets(measurement)}"
        if gate_lr
        else f"gate budget {_budgets(measurement)}"
    )
    runs = settings.get("runs", 1)
    last = settings.get("last_epochs")
    cell = f"mean ± std over {runs} runs" if runs and runs > 1 else "1 run"
    if last:
        cell += f", each the mean of its last {last} epochs"
    parts.append(cell)
    return " · ".join(parts)


def results_table(measurement: Measurement) -> Table:
    """One row per layer in forward order; see the module docstring for the columns."""
    inits, tasks = _inits(measurement), _tasks(measurement)
    index = _summary_index(measurement)
    first = inits[0] if inits else None
    several = len(inits) > 1
    partial = any(s.ok_runs < s.runs for s in index.values())
    baselines = (measurement.extras or {}).get("baselines") or {}
    per_layer = baselines.get("per_layer") or {}
    baseline_keys = list(dict.fromkeys(k for row in per_layer.values() for k in row))

    note = caption(measurement)
    if several:
        note += f" · top-1 to recall: runs with λS init {first:g}"
    table = Table(
        title=escape(f"QUANTA transferability: {describe(measurement)}"), caption=escape(note), header_style="bold"
    )
    table.add_column("layer", style="bold")  # names are added as Text: never read as markup
    for init in inits:
        table.add_column(f"λS (init {init:g})" if several else "λS", justify="right", style="cyan")
    for metric in ("top1", "top3", "loss", "precision", "recall"):
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

    for layer in _layer_order(measurement):
        main = index.get(("AnB", first, layer)) if first is not None else None
        row: list = [Text(layer)]
        row += [_cell(index.get(("AnB", init, layer)), "lambda_source") for init in inits]
        row += [_cell(main, metric) for metric in ("top1", "top3", "loss", "precision", "recall")]
        if partial:
            group = [index[k] for k in index if k[0] == "AnB" and k[2] == layer]
            ok, runs = sum(s.ok_runs for s in group), sum(s.runs for s in group)
            row.append(Text(f"{ok} / {runs}", style="red" if ok < runs else ""))
        if control:
            row += [_cell(index.get(("AnA", init, layer)), "lambda_source") for init in inits]
            row.append(_cell(index.get(("AnA", first, layer)), "top1"))
        row += [_baseline_cell(per_layer.get(layer, {}).get(key)) for key in baseline_keys]
        table.add_row(*row)
    return table


def correlations_table(measurement: Measurement) -> Table | None:
    """Rank correlations of λS with each baseline (from ``extras['baselines']``), or None."""
    correlations = ((measurement.extras or {}).get("baselines") or {}).get("correlations") or {}
    if not correlations:
        return None
    kinds = list(dict.fromkeys(k for row in correlations.values() if isinstance(row, dict) for k in row))
    table = Table(title="rank correlation of λS with the baselines, over layers", header_style="bold")
    table.add_column("baseline", style="bold")
    for kind in kinds:
        table.add_column(kind.capitalize(), justify="right")
    for name, row in correlations.items():
        row = row if isinstance(row, dict) else {}
        table.add_row(Text(BASELINE_LABELS.get(name, name)), *[_baseline_cell(row.get(kind)) for kind in kinds])
    return table


# --------------------------------------------------------------------------------------- figures


def _new_figure(panels: tuple[int, int], panel_size: tuple[float, float] = (6.4, 4.4)):
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    rows, cols = panels
    figure = Figure(figsize=(panel_size[0] * cols, panel_size[1] * rows), dpi=100, layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False)
    return figure, axes


def save_figure(figure, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Render ``figure`` to PNG and write it atomically to ``path``."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def _series_colors(count: int, cmap: str = "viridis") -> list:
    from matplotlib import colormaps

    palette = colormaps[cmap]
    return [palette(0.85 * i / max(1, count - 1)) for i in range(count)]


def transferability_figure(measurement: Measurement, path: str | os.PathLike) -> Path:
    """The paper's fig. 4: λS per layer (points, error bars = std over runs) and top-1 per layer on a
    second axis, with the source's test accuracy as a dashed line; one panel per task, a series per init."""
    tasks, inits, layers = _tasks(measurement), _inits(measurement), _layer_order(measurement)
    index = _summary_index(measurement)
    figure, axes = _new_figure((1, max(1, len(tasks))), panel_size=(max(6.4, 0.5 * len(layers)), 4.4))
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    source_top1 = (measurement.source or {}).get("test_top1")
    positions = list(range(len(layers)))
    shift = 0.08
    for axis, task in zip(axes[0], tasks):
        accuracy_axis = axis.twinx()
        for i, init in enumerate(inits):
            color = colors[i % len(colors)]
            offset = (i - (len(inits) - 1) / 2) * shift
            summaries = [index.get((task, init, layer)) for layer in layers]
            lam = [s.mean["lambda_source"] if s else math.nan for s in summaries]
            lam_std = [s.std["lambda_source"] if s else 0.0 for s in summaries]
            top1 = [s.mean["top1"] if s else math.nan for s in summaries]
            axis.errorbar(
                [p + offset for p in positions],
                lam,
                yerr=[v if _finite(v) else 0.0 for v in lam_std],
                fmt="o-",
                color=color,
                capsize=4,
                label=f"λS, init {init:g}",
            )
            accuracy_axis.plot(
                [p + offset for p in positions],
                top1,
                "s:",
                color=color,
                alpha=0.7,
                markersize=5,
                label=f"target top-1, init {init:g}",
            )
        if _finite(source_top1):
            accuracy_axis.axhline(
                source_top1, color="black", linestyle="--", linewidth=1.2, label=f"source top-1 ({source_top1:.3f})"
            )
        task_data = (measurement.extras or {}).get("tasks", {}).get(task)
        axis.set_title(TASK_TITLES.get(task, task) + (f": {task_data}" if task_data else ""))
        long_names = max((len(name) for name in layers), default=0) > 6
        axis.set_xticks(positions, layers, rotation=30 if long_names else 0, ha="right" if long_names else "center")
        axis.set_xlabel("probed layer n (forward order)")
        axis.set_ylabel("transferability λS (final)")
        accuracy_axis.set_ylabel("target top-1 accuracy")
        axis.set_ylim(0.0, 1.05)
        accuracy_axis.set_ylim(0.0, 1.05)
        axis.grid(True, alpha=0.3)
        handles, labels = axis.get_legend_handles_labels()
        more_handles, more_labels = accuracy_axis.get_legend_handles_labels()
        axis.legend(handles + more_handles, labels + more_labels, loc="lower left", fontsize="small", framealpha=0.85)
    figure.suptitle(f"Layer-wise transferability (QUANTA): {describe(measurement)}")
    return save_figure(figure, path)


def _epoch_band(histories: list[list[dict]], metric: str) -> tuple[list[int], list[float], list[float]]:
    """Mean and std of ``metric`` at each epoch over the runs that reached it."""
    length = max((len(h) for h in histories), default=0)
    epochs, means, stds = [], [], []
    for e in range(length):
        values = [h[e][metric] for h in histories if e < len(h) and _finite(h[e].get(metric))]
        if not values:
            continue
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
        epochs.append(int(histories[0][e].get("epoch", e + 1)) if e < len(histories[0]) else e + 1)
        means.append(mean)
        stds.append(math.sqrt(var))
    return epochs, means, stds


def dynamics_figure(measurement: Measurement, path: str | os.PathLike) -> Path:
    """The paper's fig. 5, bottom row: λS during training, a line per layer (mean over runs, band ±
    std); a panel per (task, init)."""
    tasks, inits, layers = _tasks(measurement), _inits(measurement), _layer_order(measurement)
    from matplotlib.ticker import MaxNLocator

    figure, axes = _new_figure((max(1, len(tasks)), max(1, len(inits))), panel_size=(5.6, 4.2))
    colors = dict(zip(layers, _series_colors(len(layers))))
    for row, task in enumerate(tasks):
        for col, init in enumerate(inits):
            axis = axes[row][col]
            for layer in layers:
                runs = [
                    r
                    for r in measurement.runs
                    if r.ok and r.spec.task == task and r.spec.layer == layer and math.isclose(r.spec.init, init)
                ]
                epochs, mean, std = _epoch_band([r.history for r in runs], "lambda_source")
                if not epochs:
                    continue
                epochs, mean, std = [0, *epochs], [init, *mean], [0.0, *std]  # every gate starts at its init
                axis.plot(
                    epochs,
                    mean,
                    "-",
                    color=colors[layer],
                    linewidth=1.6,
                    label=layer,
                    marker="o" if len(epochs) < 6 else None,
                )
                if len(runs) > 1:
                    axis.fill_between(
                        epochs,
                        [m - s for m, s in zip(mean, std)],
                        [m + s for m, s in zip(mean, std)],
                        color=colors[layer],
                        alpha=0.18,
                        linewidth=0,
                    )
            axis.axhline(init, color="grey", linestyle=":", linewidth=1)
            axis.set_title(f"{task}, λS init {init:g}")
            axis.set_xlabel("epoch")
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            axis.set_ylabel("λS")
            axis.set_ylim(0.0, 1.02)
            axis.grid(True, alpha=0.3)
            axis.legend(title="layer", fontsize="small", loc="best", ncols=2 if len(layers) > 4 else 1)
    runs = (measurement.settings or {}).get("runs", 1)
    band = f"\nmean ± std over {runs} runs" if runs and runs > 1 else ""
    figure.suptitle(f"Evolution of λS during training\n{describe(measurement)}{band}")
    return save_figure(figure, path)


def write_figures(measurement: Measurement, folder: str | os.PathLike) -> list[Path]:
    """``transferability.png`` and ``dynamics.png`` (and ``comparison.png`` when baselines ran) in ``folder``."""
    folder = Path(folder)
    written = [
        transferability_figure(measurement, folder / "transferability.png"),
        dynamics_figure(measurement, folder / "dynamics.png"),
    ]
    if (measurement.extras or {}).get("baselines"):
        from .baselines import comparison_figure

        written.append(comparison_figure(measurement, folder / "comparison.png"))
    return written
