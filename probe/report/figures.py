"""The figures, drawn with matplotlib's object API on the Agg canvas (no pyplot state, no display) and
written atomically, so an interrupted write never leaves half a PNG.

* :func:`transferability_figure` — the paper's fig. 4: λS per layer with error bars and the target's
  top-1 on a second axis, the source's accuracy as a dashed line; a panel per task (AnA, AnB).
* :func:`dynamics_figure` — the paper's fig. 5, bottom row: λS against epoch, a line per layer
  (mean, band ± std over runs); a panel per task and λS init.
* :func:`comparison_figure` — λS, QUANTA top-1 and every baseline over layers, each min-max normalised.

Names the font cannot draw (a class folder or layer named in Chinese) show as empty boxes; matplotlib's
"Glyph … missing from font" warnings are kept off the terminal while the figures are drawn.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from ..results.labels import BASELINE_LABELS
from ..results.schema import Measurement, entry_value, lambda_per_layer
from ..util.files import save_png
from .views import TASK_TITLES, describe, finite, inits_of, layer_order, summary_index, tasks_of

Drawn = TypeVar("Drawn", bound=Callable[..., object])


def _without_glyph_warnings(draw: Drawn) -> Drawn:
    """``draw`` with matplotlib's warnings about characters its font lacks silenced (the figure is still drawn)."""

    @functools.wraps(draw)
    def drawing(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from", category=UserWarning)
            return draw(*args, **kwargs)

    return drawing  # type: ignore[return-value]


def _new_figure(panels: tuple[int, int], panel_size: tuple[float, float] = (6.4, 4.4)):
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    rows, cols = panels
    figure = Figure(figsize=(panel_size[0] * cols, panel_size[1] * rows), dpi=100, layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False)
    return figure, axes


def _series_colors(count: int, cmap: str = "viridis") -> list:
    from matplotlib import colormaps

    palette = colormaps[cmap]
    return [palette(0.85 * i / max(1, count - 1)) for i in range(count)]


@_without_glyph_warnings
def transferability_figure(measurement: Measurement, path: str | os.PathLike) -> Path:
    """The paper's fig. 4: λS per layer (points, error bars = std over runs) and top-1 per layer on a
    second axis, with the source's test accuracy as a dashed line; one panel per task, a series per init."""
    tasks, inits, layers = tasks_of(measurement), inits_of(measurement), layer_order(measurement)
    index = summary_index(measurement)
    figure, axes = _new_figure((1, max(1, len(tasks))), panel_size=(max(6.4, 0.5 * len(layers)), 4.4))
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    source_top1 = (measurement.source or {}).get("test_top1")
    positions = list(range(len(layers)))
    shift = 0.08
    # one panel per task (a single empty panel when there is none)
    for axis, task in zip(axes[0], tasks, strict=False):
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
                yerr=[v if finite(v) else 0.0 for v in lam_std],
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
        if finite(source_top1):
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
    return save_png(figure, path, dpi=150)


def _epoch_band(histories: list[list[dict]], metric: str) -> tuple[list[int], list[float], list[float]]:
    """Mean and std of ``metric`` at each epoch over the runs that reached it."""
    length = max((len(h) for h in histories), default=0)
    epochs, means, stds = [], [], []
    for e in range(length):
        values = [h[e][metric] for h in histories if e < len(h) and finite(h[e].get(metric))]
        if not values:
            continue
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
        epochs.append(int(histories[0][e].get("epoch", e + 1)) if e < len(histories[0]) else e + 1)
        means.append(mean)
        stds.append(math.sqrt(var))
    return epochs, means, stds


@_without_glyph_warnings
def dynamics_figure(measurement: Measurement, path: str | os.PathLike) -> Path:
    """The paper's fig. 5, bottom row: λS during training, a line per layer (mean over runs, band ±
    std); a panel per (task, init)."""
    tasks, inits, layers = tasks_of(measurement), inits_of(measurement), layer_order(measurement)
    from matplotlib.ticker import MaxNLocator

    figure, axes = _new_figure((max(1, len(tasks)), max(1, len(inits))), panel_size=(5.6, 4.2))
    colors = dict(zip(layers, _series_colors(len(layers)), strict=True))
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
                        [m - s for m, s in zip(mean, std, strict=True)],
                        [m + s for m, s in zip(mean, std, strict=True)],
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
    return save_png(figure, path, dpi=150)


def write_figures(measurement: Measurement, folder: str | os.PathLike) -> list[Path]:
    """``transferability.png`` and ``dynamics.png`` (and ``comparison.png`` when baselines ran) in ``folder``."""
    folder = Path(folder)
    written = [
        transferability_figure(measurement, folder / "transferability.png"),
        dynamics_figure(measurement, folder / "dynamics.png"),
    ]
    if (measurement.extras or {}).get("baselines"):
        written.append(comparison_figure(measurement, folder / "comparison.png"))
    return written


def _normalised(values: Sequence[float]) -> np.ndarray:
    """Min-max over the finite values: 0 = the measure's lowest layer, 1 = its highest; constant → 0.5."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return v
    low, high = finite.min(), finite.max()
    return np.full_like(v, 0.5) if high == low else (v - low) / (high - low)


@_without_glyph_warnings
def comparison_figure(measurement: Measurement, path: str | Path) -> Path:
    """Write ``path`` (PNG): λS, QUANTA top-1 and every baseline over layers, each min-max normalised.

    Each measure is scaled to its own range across layers so that their shapes (drops, recoveries) can be
    compared at a glance (a score where lower is better would read upside down: every lens here is higher =
    more transferable); the legend, below the axes, gives each baseline's Spearman ρ with λS. LEEP and NCE
    are one figure per scan, not per layer, and are not drawn.
    """
    from matplotlib.figure import Figure  # the object API: no pyplot state, Agg when saved

    layers = list(measurement.layers)
    init = measurement.settings["init"][0]
    series: list[tuple[str, list[float], dict]] = [
        (f"QUANTA λS (AnB, init {init:g})", lambda_per_layer(measurement, "AnB"), {"linewidth": 3, "color": "black"}),
    ]
    top1 = []
    for layer in layers:
        try:
            top1.append(measurement.summary(layer, init, "AnB").mean["top1"])
        except KeyError:
            top1.append(math.nan)
    series.append(("QUANTA target top-1 (AnB)", top1, {"linestyle": "--", "color": "grey"}))
    control = lambda_per_layer(measurement, "AnA")
    if any(math.isfinite(v) for v in control):  # AnA baselines' ρ are against this one
        series.append(
            (f"QUANTA λS (AnA control, init {init:g})", control, {"linestyle": ":", "linewidth": 2.5, "color": "black"})
        )
    baselines = (measurement.extras or {}).get("baselines") or {}
    per_layer = {
        layer: per_layer.get(layer) or {} for per_layer in [baselines.get("per_layer") or {}] for layer in layers
    }
    correlations = baselines.get("correlations") or {}
    keys = list(dict.fromkeys(key for layer in layers for key in per_layer[layer]))
    from matplotlib import colormaps

    # 18 distinct colours (tab20 without its greys, which the QUANTA lines use), one per baseline
    tab20 = colormaps["tab20"]
    palette = [tab20(i / 20 + 1 / 40) for i in range(20) if i not in (14, 15)]
    for index, key in enumerate(keys):
        rho = entry_value((correlations.get(key) or {}).get("spearman"))
        label = BASELINE_LABELS.get(key, key) + ("" if not math.isfinite(rho) else f"  (ρ={rho:+.2f})")
        values = [entry_value(per_layer[layer].get(key)) for layer in layers]
        series.append((label, values, {"color": palette[(2 * index) % 18 + (2 * index // 18) % 2]}))

    columns = 2 if len(series) > 5 else 1
    rows = math.ceil(len(series) / columns)
    figure = Figure(figsize=(max(7.0, 0.9 * len(layers) + 3.0), 4.8 + 0.22 * rows), layout="constrained")
    axes = figure.add_subplot()
    x = np.arange(len(layers))
    markers = itertools.cycle("osD^vP*X")
    for label, values, style in series:
        axes.plot(x, _normalised(values), marker=next(markers), label=label, **style)
    axes.set_xticks(x, layers, rotation=30 if len(layers) > 8 else 0, ha="right" if len(layers) > 8 else "center")
    axes.set_xlabel("probed layer n (forward order)")
    axes.set_ylabel("measure, min-max normalised over layers")
    axes.set_ylim(-0.05, 1.05)
    source = measurement.source.get("dataset") or measurement.source.get("class") or "source"
    axes.set_title(f"Transferability per layer: {source} → {measurement.target}")
    axes.grid(alpha=0.3)
    # below the axes, in as many columns as it needs: it never covers a line, whatever the number of lenses
    figure.legend(fontsize=8, loc="outside lower center", ncols=columns, frameon=False)
    return save_png(figure, path, dpi=120, bbox_inches="tight")
