"""How far a measurement can be trusted: the quality measures of :mod:`probe.results.quality` applied to it.

:func:`assess` is what ``results.json`` records under ``quality`` and what the report prints under the table:
the layers whose λS was still moving over the averaged epochs and those whose runs were too short to tell
(``not_judged``), AnA − AnB λS per layer (with the control),
the repeatability of the layer profile over disjoint seeds (with 2+ runs and 3+ layers), and, with the
Yosinski baselines, the agreement of λS with frozen transfer accuracy, the repeatability of that reference's
own layer profile (an agreement cannot be read more finely than the reference repeats), and the QUANTA target's
top-1 against the target trained alone (the paper's question 1: does the gate impair learning?).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from .decision import recommend
from .quality import SETTLED_DRIFT, impairment, repeatability, separation
from .schema import Measurement


def _finals(measurement: Measurement, task: str, init: float, metric: str) -> dict[str, list[float]]:
    """Per layer (forward order), the successful runs' final ``metric`` for ``task`` at λS init ``init``."""
    found: dict[str, list[float]] = {layer: [] for layer in measurement.layers}
    for run in sorted(measurement.runs, key=lambda r: r.spec.seed):
        spec = run.spec
        if run.ok and spec.task == task and math.isclose(spec.init, init) and metric in run.final:
            found.setdefault(spec.layer, []).append(run.final[metric])
    return {layer: values for layer, values in found.items() if values}


def assess(measurement: Measurement) -> dict[str, Any]:
    """The quality of ``measurement`` as plain data (see the module docstring); absent parts are left out."""
    inits = measurement.settings.get("init") or sorted({r.spec.init for r in measurement.runs}, reverse=True)
    init = float(inits[0]) if inits else 0.9
    summaries = measurement.summaries
    quality: dict[str, Any] = {
        "settled_threshold": SETTLED_DRIFT,
        "unsettled": [
            {"layer": s.layer, "task": s.task, "init": s.init, "drift": s.lambda_drift}
            for s in summaries
            if s.ok_runs and s.settled is False
        ],
        "not_judged": [
            {"layer": s.layer, "task": s.task, "init": s.init, "epochs": s.epochs}
            for s in summaries
            if s.ok_runs and s.settled is None
        ],
    }
    transfer = _finals(measurement, "AnB", init, "lambda_source")
    control = _finals(measurement, "AnA", init, "lambda_source")
    if control:
        quality["separation"] = separation(control, transfer)
    rho = repeatability(transfer)
    if not math.isnan(rho):
        quality["repeatability"] = rho
    baselines = (measurement.extras or {}).get("baselines") or {}
    agreement = (baselines.get("correlations") or {}).get("AnB_frozen", {}).get("spearman")
    if agreement is not None:
        quality["agreement_yosinski"] = agreement
    # how well the reference ranks the layers over its own disjoint seeds: agreement cannot be read past it
    frozen = {
        layer: lenses["AnB_frozen"]["values"]
        for layer, lenses in (baselines.get("per_layer") or {}).items()
        if "AnB_frozen" in lenses
    }
    reference_rho = repeatability(frozen)
    if not math.isnan(reference_rho):
        quality["yosinski_repeatability"] = reference_rho
    alone = ((baselines.get("alone") or {}).get("AnB") or {}).get("mean")
    top1 = [statistics.fmean(v) for v in _finals(measurement, "AnB", init, "top1").values()]
    if alone is not None and top1:
        quality["impairment"] = impairment(top1, float(alone))
    return quality


def results_document(measurement: Measurement) -> dict[str, Any]:
    """``results.json``: the measurement's data and, derived from it, its ``quality`` and the ``recommendation`` of
    which layers to freeze (:func:`probe.results.decision.recommend`)."""
    return {**measurement.to_dict(), "quality": assess(measurement), "recommendation": recommend(measurement)}
