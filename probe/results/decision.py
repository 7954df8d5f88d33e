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

from .schema import Measurement

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
    if len(cases) < 2:
        raise ValueError(f"leave-one-case-out needs at least 2 cases, got {len(cases)}")
    chosen = {}
    for index, case in enumerate(cases):
        others = [other for position, other in enumerate(cases) if position != index]
        tau = best_threshold(others, rule, grid)
        chosen[case.name] = (tau, rule(case, tau))
    return chosen


# --------------------------------------------------------------------------------------------------
# Predictors and how they are judged


TAU_GRID = tuple(round(0.5 + 0.005 * i, 3) for i in range(101))  # 0.500, 0.505, ..., 1.000


@dataclass(frozen=True)
class Predictor:
    """A way of choosing a cut: a fixed rule of one case (``choose``), or a threshold rule whose τ is chosen by
    leave-one-case-out (``rule``); ``cost`` is its compute per decision in target training runs."""

    name: str
    kind: str  # "λS", "lens", "anchor" or "oracle"
    cost: str  # how its compute is counted, e.g. "layers × runs"
    choose: Callable[[Case], str] | None = None
    rule: ThresholdRule | None = None


def lambda_threshold(case: Case, tau: float) -> str:
    """The λS rule: freeze the longest prefix of probe points whose AnB λS stays ≥ τ."""
    return threshold_cut(case.profiles["lambda"], case.layers, tau)


def lens_threshold(lens: str) -> ThresholdRule:
    """A lens's threshold rule: the longest prefix whose min-max normalised score stays ≥ τ."""
    return lambda case, tau: threshold_cut(normalised(case.profiles[lens], case.layers), case.layers, tau)


def lens_argmax(lens: str) -> Callable[[Case], str]:
    return lambda case: argmax_cut(case.profiles[lens], case.layers)


def size_table_of(case: Case) -> str:
    return size_table_cut(case.layers, case.images_per_class)


def predictors(lenses: Sequence[str]) -> list[Predictor]:
    """Every predictor the benchmark judges: the λS rule, two rules per lens, the anchors and the oracle."""
    found = [Predictor("λS ≥ τ (longest prefix)", "λS", "layers × runs", rule=lambda_threshold)]
    for lens in lenses:
        found.append(Predictor(f"{lens}: argmax", "lens", "≈ 0", choose=lens_argmax(lens)))
        found.append(Predictor(f"{lens}: normalised ≥ τ", "lens", "≈ 0", rule=lens_threshold(lens)))
    found += [
        Predictor("full fine-tuning", "anchor", "0", choose=lambda case: NO_FREEZE),
        Predictor("head only", "anchor", "0", choose=lambda case: case.layers[-1]),
        Predictor("middle cut", "anchor", "0", choose=lambda case: middle_cut(case.layers)),
        Predictor(
            "data-size table", "anchor", "0", choose=lambda case: size_table_cut(case.layers, case.images_per_class)
        ),
        Predictor("oracle (brute force)", "oracle", "cuts × seeds", choose=lambda case: best_cut(case.table)),
    ]
    return found


def judge(cases: Sequence[Case], predictor: Predictor, grid: Sequence[float] = TAU_GRID) -> dict:
    """Per case the cut ``predictor`` chooses (threshold rules: τ from the other cases), its regret in points and
    whether it is within the seeds' noise of the best; and the mean and worst regret and the share within noise."""
    if predictor.rule is not None:
        outside = leave_one_case_out(cases, predictor.rule, grid)
        chosen = {name: cut for name, (_, cut) in outside.items()}
        taus = {name: tau for name, (tau, _) in outside.items()}
    else:
        assert predictor.choose is not None  # a predictor has a rule or a choice
        chosen = {case.name: predictor.choose(case) for case in cases}
        taus = {}
    regrets = {case.name: regret(case.table, chosen[case.name]) for case in cases}
    within = {case.name: chosen[case.name] in noise_set(case.table) for case in cases}
    per_case = {
        name: {"cut": chosen[name], "regret": regrets[name], "within_noise": within[name]}
        | ({"tau": taus[name]} if taus else {})
        for name in chosen
    }
    return {
        "name": predictor.name,
        "kind": predictor.kind,
        "cost": predictor.cost,
        "mean_regret": statistics.fmean(regrets.values()),
        "worst_regret": max(regrets.values()),
        "within_noise": statistics.fmean(within.values()),
        "cases": per_case,
    }


# --------------------------------------------------------------------------------------------------
# The recommendation a scan ends with


@dataclass(frozen=True)
class ShippedRule:
    """The rule ``probe scan`` recommends with, and what it scored on the benchmark (docs/decision.md)."""

    predictor: str  # its name in the benchmark
    measurement: str  # "lambda" (AnB λS) or a lens's name
    tau: float  # fitted on every case of the benchmark
    mean_regret: float  # leave-one-case-out, in points of accuracy
    worst_regret: float
    within_noise: float  # share of cases where its choice was within the seeds' noise of the best cut
    anchors: Mapping[str, float]  # each anchor's mean regret on the same cases
    cases: int


# Written from `python experiments/decision.py --summary` (tests/test_decision.py checks it against the committed
# JSONL). None: no rule beat every anchor on the benchmark's mean regret, and the tool says so instead.
SHIPPED: ShippedRule | None = None
WITHHELD = (
    "no rule beat every anchor (full fine-tuning, head only, the middle cut, a data-size table) on the benchmark's "
    "mean regret (docs/decision.md), so none is recommended"
)


def profile_of(measurement: Measurement, quantity: str) -> dict[str, float]:
    """AnB λS per probed layer (first init, mean over the successful runs), or a lens's value per layer; layers
    without a value are left out."""
    if quantity != "lambda":
        per_layer = ((measurement.extras or {}).get("baselines") or {}).get("per_layer") or {}
        return {layer: float(values[quantity]) for layer, values in per_layer.items() if quantity in values}
    inits = measurement.settings.get("init") or sorted({r.spec.init for r in measurement.runs}, reverse=True)
    found: dict[str, list[float]] = {}
    for run in measurement.runs:
        if run.ok and run.spec.task == "AnB" and inits and math.isclose(run.spec.init, float(inits[0])):
            found.setdefault(run.spec.layer, []).append(run.final["lambda_source"])
    return {layer: statistics.fmean(found[layer]) for layer in measurement.layers if layer in found}


def recommend(measurement: Measurement, rule: ShippedRule | None = None) -> dict:
    """Which probed layers to freeze before fine-tuning on the target, by the shipped rule, as plain data:
    ``status`` "recommended" (with ``freeze``, ``fine_tune``, the rule and its benchmark figures), "withheld" (no
    rule earned it on the benchmark) or "unavailable" (this measurement lacks what the rule reads), with a
    ``reason``."""
    rule = SHIPPED if rule is None else rule
    if rule is None:
        return {"status": "withheld", "reason": WITHHELD}
    layers = list(measurement.layers)
    profile = profile_of(measurement, rule.measurement)
    what = "AnB λS" if rule.measurement == "lambda" else f"the {rule.measurement} lens (--baselines {rule.measurement})"
    missing = [layer for layer in layers if layer not in profile]
    if missing or len(layers) < 2:
        need = f"{what} at every probed layer" + ("" if len(layers) >= 2 else ", and at least two probed layers")
        return {
            "status": "unavailable",
            "reason": f"the recommendation needs {need}; missing at {', '.join(missing) or '—'}",
        }
    cut = threshold_cut(profile, layers, rule.tau)
    depth = cut_depth(cut, layers)
    return {
        "status": "recommended",
        "cut": cut,
        "freeze": layers[:depth],
        "fine_tune": layers[depth:],
        "rule": f"freeze the longest prefix of probed layers whose {what} is at least {rule.tau:g}",
        "profile": profile,
        "benchmark": {
            "predictor": rule.predictor,
            "mean_regret": rule.mean_regret,
            "worst_regret": rule.worst_regret,
            "within_noise": rule.within_noise,
            "anchors": dict(rule.anchors),
            "cases": rule.cases,
            "where": "docs/decision.md",
        },
    }


def recommendation_line(recommendation: Mapping) -> str:
    """The recommendation in one line, for the table's footer and ``probe recommend``."""
    status = recommendation.get("status")
    if status != "recommended":
        return f"recommendation: none ({recommendation.get('reason', status)})"
    freeze, fine_tune = recommendation["freeze"], recommendation["fine_tune"]
    frozen = f"freeze {_span(freeze)}" if freeze else "freeze nothing"
    trained = f"fine-tune {', '.join(fine_tune)} and the head" if fine_tune else "train only a new head"
    bench = recommendation["benchmark"]
    return (
        f"recommendation: {frozen}, {trained} ({recommendation['rule']}; on the benchmark it lost "
        f"{bench['mean_regret']:.1f} points of accuracy on average against the best cut, at worst "
        f"{bench['worst_regret']:.1f}, over {bench['cases']} cases: {bench['where']})"
    )


def _span(layers: Sequence[str]) -> str:
    return layers[0] if len(layers) == 1 else f"{layers[0]}–{layers[-1]} ({len(layers)} layers)"
