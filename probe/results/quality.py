"""Is λS a measurement? The quality measures of a protocol (issue 12), from plain numbers.

* :func:`separation` -- AnA λS − AnB λS per layer, also in units of the runs' spread: a protocol that cannot
  tell the same task from another one at the last layer measures nothing there.
* :func:`spearman` -- rank agreement across layers (λS against Yosinski's frozen transfer accuracy, or two
  sets of seeds against each other: :func:`repeatability`).
* :func:`settled_drift` -- how far λS still moved during the epochs that are averaged: a drifting λS is not a
  result yet (:data:`SETTLED_DRIFT` is the threshold); a run shorter than its averaging window, or one that
  averages fewer than two epochs, cannot show it and is not judged (:func:`can_judge`).
* :func:`impairment` -- how much top-1 the QUANTA target lost against the target trained alone.

Nothing here imports the rest of the package: the measures work on lists, so the experiment that chose the
defaults (experiments/protocol.py), the results and the report all share them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

import numpy as np

SETTLED_DRIFT = 0.05
"""A layer is settled when λS moved by at most this much (the least-squares line's change) over the averaged epochs."""


def _paired(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"rank correlation needs two sequences of one length, got {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep]


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n; tied values share the mean of the ranks they span."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)
    return (last - (counts - 1) / 2.0)[inverse]


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson on average ranks); NaN for < 3 finite pairs or a constant input."""
    a, b = _paired(x, y)
    if len(a) < 3:
        return math.nan
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    norm = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return math.nan if norm == 0.0 else float(ra @ rb) / norm


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b: (concordant - discordant) / sqrt(pairs untied in x · pairs untied in y).

    NaN for < 3 finite pairs or a constant input.
    """
    a, b = _paired(x, y)
    if len(a) < 3:
        return math.nan
    upper = np.triu_indices(len(a), k=1)
    sign_a = np.sign(a[:, None] - a[None, :])[upper]
    sign_b = np.sign(b[:, None] - b[None, :])[upper]
    untied = float(np.count_nonzero(sign_a)) * float(np.count_nonzero(sign_b))
    return math.nan if untied == 0.0 else float(np.sum(sign_a * sign_b)) / math.sqrt(untied)


def separation(
    control: Mapping[str, Sequence[float]], transfer: Mapping[str, Sequence[float]]
) -> dict[str, dict[str, float]]:
    """Per layer: ``difference`` = mean AnA λS − mean AnB λS, and ``in_spread`` = that over the pooled run std.

    ``control`` and ``transfer`` map a layer to its runs' λS. ``in_spread`` is NaN with fewer than two runs
    on either side, and ±inf when both sides have no spread at all but differ.
    """
    found = {}
    for layer in transfer:
        if layer not in control or not control[layer] or not transfer[layer]:
            continue
        a, b = list(control[layer]), list(transfer[layer])
        difference = statistics.fmean(a) - statistics.fmean(b)
        if len(a) < 2 or len(b) < 2:
            in_spread = math.nan
        else:
            pooled = math.sqrt((statistics.variance(a) + statistics.variance(b)) / 2)
            in_spread = (
                difference / pooled if pooled > 0 else (math.copysign(math.inf, difference) if difference else 0.0)
            )
        found[layer] = {"difference": difference, "in_spread": in_spread}
    return found


def repeatability(per_layer_runs: Mapping[str, Sequence[float]]) -> float:
    """Spearman ρ across layers between the mean λS of the even-indexed runs and that of the odd-indexed runs.

    Two disjoint sets of seeds must rank the layers alike; NaN with fewer than two runs or three layers.
    """
    layers = [layer for layer, runs in per_layer_runs.items() if len(runs) >= 2]
    if len(layers) < 3:
        return math.nan
    first = [statistics.fmean(per_layer_runs[layer][0::2]) for layer in layers]
    second = [statistics.fmean(per_layer_runs[layer][1::2]) for layer in layers]
    return spearman(first, second)


def can_judge(epochs_run: int, last_epochs: int) -> bool:
    """Whether a run of ``epochs_run`` epochs that averages its last ``last_epochs`` can be judged settled or not:
    it ran the whole averaging window, and that window has at least two epochs (one epoch has no slope)."""
    return last_epochs >= 2 and epochs_run >= last_epochs


def settled_drift(trajectory: Sequence[float], last_epochs: int) -> float:
    """How far λS moved over the last ``last_epochs`` epochs: |least-squares slope| × (epochs − 1).

    The fitted change, not max − min, so epoch-to-epoch noise around a level is not read as drift (the
    noise shows in the runs' spread instead). 0.0 for fewer than two epochs.
    """
    tail = np.asarray(list(trajectory)[-last_epochs:], dtype=np.float64)
    if len(tail) < 2 or not np.all(np.isfinite(tail)):
        return 0.0 if len(tail) < 2 else math.inf
    epochs = np.arange(len(tail), dtype=np.float64)
    slope = np.polyfit(epochs, tail, 1)[0]
    return float(abs(slope) * (len(tail) - 1))


def impairment(quanta_top1: Sequence[float], alone_top1: float) -> float:
    """Top-1 of the target trained alone minus the mean QUANTA target top-1 over layers (positive = worse)."""
    values = [v for v in quanta_top1 if math.isfinite(v)]
    if not values or not math.isfinite(alone_top1):
        return math.nan
    return alone_top1 - statistics.fmean(values)
