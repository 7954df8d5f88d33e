"""Which layers to freeze before fine-tuning on a target: rules from per-layer measurements to a cut, and how good a
rule is against brute force (pure Python; ``experiments/decision.py`` measures the ground truth).

A *cut* is the last probe point frozen: the source's layers up to and including it are kept as they are, the rest
(head included) fine-tuned; :data:`NO_FREEZE` fine-tunes everything, the last probe point trains only the head.
Given the accuracy of every cut over seeds (:func:`cut_table`), a choice's *regret* is the best cut's mean accuracy
minus the chosen one's, in points, and the *noise set* holds the cuts whose mean is within the seeds' noise of the
best (:func:`noise_set`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

NO_FREEZE = "none"  # the cut that freezes nothing: full fine-tuning
NOISE_Z = 2.0  # a cut is within the seeds' noise of the best when the difference is under 2 standard errors


@dataclass(frozen=True)
class CutStats:
    """One cut's accuracy over seeds."""

    mean: float
    std: float
    runs: int

    @property
    def standard_error(self) -> float:
        return self.std / math.sqrt(self.runs) if self.runs > 1 else 0.0


def cut_table(accuracies: Mapping[str, Sequence[float]]) -> dict[str, CutStats]:
    """Mean, std and count of each cut's accuracies (failed runs, NaN, left out; a cut with none is dropped)."""
    table = {}
    for cut, values in accuracies.items():
        good = [v for v in values if math.isfinite(v)]
        if good:
            std = statistics.stdev(good) if len(good) > 1 else 0.0
            table[cut] = CutStats(statistics.fmean(good), std, len(good))
    return table


def best_cut(table: Mapping[str, CutStats]) -> str:
    """The cut with the highest mean accuracy (ties: the one that freezes less, listed first)."""
    return max(table, key=lambda cut: table[cut].mean)


def regret(table: Mapping[str, CutStats], chosen: str) -> float:
    """Points of accuracy lost by choosing ``chosen`` instead of the best cut (0 for the best itself)."""
    return 100.0 * (table[best_cut(table)].mean - table[chosen].mean)


def noise_set(table: Mapping[str, CutStats], z: float = NOISE_Z) -> set[str]:
    """The cuts whose mean is within ``z`` standard errors of the difference from the best cut's mean."""
    best = table[best_cut(table)]
    found = set()
    for cut, stats in table.items():
        spread = math.hypot(best.standard_error, stats.standard_error)
        if best.mean - stats.mean <= z * spread:
            found.add(cut)
    return found


# --------------------------------------------------------------------------------------------------
# Rules: a profile (one value per probe point, in forward order) to a cut


def threshold_cut(profile: Mapping[str, float], layers: Sequence[str], tau: float) -> str:
    """The deepest point k whose value stays ≥ ``tau`` at every point up to and including k; :data:`NO_FREEZE`
    when the first point is already below it. (For λS: freeze what the target kept of the source.)"""
    cut = NO_FREEZE
    for layer in layers:
        if not profile[layer] >= tau:  # NaN stops the cut too
            break
        cut = layer
    return cut


def normalised(profile: Mapping[str, float], layers: Sequence[str]) -> dict[str, float]:
    """The profile rescaled to [0, 1] over the layers (min → 0, max → 1); a flat profile is 1 everywhere."""
    values = [profile[layer] for layer in layers]
    low, high = min(values), max(values)
    if not high > low:
        return {layer: 1.0 for layer in layers}
    return {layer: (profile[layer] - low) / (high - low) for layer in layers}


def argmax_cut(profile: Mapping[str, float], layers: Sequence[str]) -> str:
    """The point with the highest value (the first of equals): freeze up to the most useful features."""
    return max(layers, key=lambda layer: profile[layer])


def middle_cut(layers: Sequence[str]) -> str:
    """The middle probe point (of 7: the 4th)."""
    return layers[(len(layers) - 1) // 2]


def size_table_cut(layers: Sequence[str], images_per_class: int) -> str:
    """The usual advice by data size, fixed before any measurement: very little data (≤ 10 images per class) trains
    the head only, a little (≤ 100) freezes the first half, more fine-tunes everything."""
    if images_per_class <= 10:
        return layers[-1]
    if images_per_class <= 100:
        return middle_cut(layers)
    return NO_FREEZE


def cut_depth(cut: str, layers: Sequence[str]) -> int:
    """How many probe points ``cut`` freezes (0 for :data:`NO_FREEZE`)."""
    return 0 if cut == NO_FREEZE else list(layers).index(cut) + 1


# --------------------------------------------------------------------------------------------------
# Choosing a rule's threshold without the judged case


@dataclass(frozen=True)
class Case:
    """One benchmark case: the probe points, a profile per measurement, the images per class, the ground truth."""

    name: str
    layers: tuple[str, ...]
    profiles: Mapping[str, Mapping[str, float]]  # measurement (e.g. "lambda", "linear") -> layer -> value
    images_per_class: int
    table: Mapping[str, CutStats]


ThresholdRule = Callable[[Case, float], str]


def mean_regret(cases: Sequence[Case], choose: Callable[[Case], str]) -> float:
    return statistics.fmean(regret(case.table, choose(case)) for case in cases)


def best_threshold(cases: Sequence[Case], rule: ThresholdRule, grid: Sequence[float]) -> float:
    """The threshold of ``grid`` with the lowest mean regret over ``cases`` (ties: the median of the tied ones,
    so that a plateau is not left at its edge)."""
    scores = [(statistics.fmean(regret(case.table, rule(case, tau)) for case in cases), tau) for tau in grid]
    lowest = min(score for score, _ in scores)
    tied = sorted(tau for score, tau in scores if score <= lowest + 1e-9)
    return tied[(len(tied) - 1) // 2]


def leave_one_case_out(
    cases: Sequence[Case], rule: ThresholdRule, grid: Sequence[float]
) -> dict[str, tuple[float, str]]:
    """For each case, the threshold chosen on the *other* cases and the cut it gives on this one."""
    chosen = {}
    for index, case in enumerate(cases):
        others = [other for position, other in enumerate(cases) if position != index]
        tau = best_threshold(others, rule, grid)
        chosen[case.name] = (tau, rule(case, tau))
    return chosen
