"""Baselines beside λS on the same data, seeds and trainer, and how λS ranks the layers against them:
Yosinski transfer accuracy, LogME, H-score.

* ``yosinski`` -- Yosinski et al., "How transferable are features in deep neural networks?", NeurIPS
  2014. For layer n, the source's layers up to and including n are copied into a fresh target and the
  rest is trained on the target task: frozen (``AnB``; the copied weights never change and copied
  BatchNorm layers keep the source's statistics) and fine-tuned (``AnB+``; everything trains). The
  figure is the target's test top-1, the mean of the last ``settings.last_epochs`` epochs, as for
  QUANTA. With the control task, ``AnA`` / ``AnA+`` are the selffer variants; given a model trained on
  B (``self_source``), so are ``BnB`` / ``BnB+``. The target trained alone (Yosinski's baseB) is the
  reference every transfer is compared with.
* ``logme`` / ``hscore`` -- :func:`~probe.baselines.scores.logme` and :func:`~probe.baselines.scores.h_score`
  (the regularised, shrinkage variant, stable when a layer has more features than the task has examples)
  of the source's pooled layer-n tensors for the target task's training split, with the target labels.

:func:`run_baselines` also gives the rank correlation (Spearman, Kendall tau-b, from
:mod:`probe.results.quality`) across layers between λS and each baseline;
:func:`probe.report.figures.comparison_figure` draws every measure, min-max normalised, over layers.
"""

from __future__ import annotations

import copy
import itertools
import math
import statistics
from collections.abc import Callable, Sequence

from torch import nn

from ..engine.context import ProbeContext
from ..engine.progress import Progress, epoch_reporter
from ..errors import SettingsError
from ..results.quality import kendall_tau_b, spearman
from ..results.schema import Measurement, RunSpec
from ..training.trainer import EpochEvent
from .scores import H_SCORE_SHRINKAGE, layer_scores
from .transfer import TransferRun, train_alone, train_transfer

BASELINES = ("yosinski", "logme", "hscore")
# What each per-layer baseline entry is called in tables and figures.
BASELINE_LABELS = {
    "AnB_frozen": "Yosinski AnB (frozen)",
    "AnB_finetune": "Yosinski AnB+ (fine-tuned)",
    "AnA_frozen": "Yosinski AnA (frozen)",
    "AnA_finetune": "Yosinski AnA+ (fine-tuned)",
    "BnB_frozen": "Yosinski BnB (selffer, frozen)",
    "BnB_finetune": "Yosinski BnB+ (selffer, fine-tuned)",
    "logme": "LogME",
    "hscore": "H-score",
}


def check_baselines(names: Sequence[str]) -> list[str]:
    """The baseline names, normalised and without repeats; a SettingsError names any unknown one."""
    chosen = list(dict.fromkeys(name.strip().lower() for name in names))
    unknown = [name for name in chosen if name not in BASELINES]
    if unknown:
        raise SettingsError(f"unknown baseline '{unknown[0]}': choose from {', '.join(BASELINES)}")
    return chosen


def lambda_per_layer(measurement: Measurement, task: str) -> list[float]:
    """λS (mean over runs, first init) per layer for ``task``; NaN where there is none."""
    init = measurement.settings["init"][0]
    values = []
    for layer in measurement.layers:
        try:
            values.append(measurement.summary(layer, init, task).mean["lambda_source"])
        except KeyError:
            values.append(math.nan)
    return values


def entry_value(entry) -> float:
    """A per-layer entry as a number: a run summary's mean or a score; NaN for a missing one (JSON null)."""
    value = entry.get("mean") if isinstance(entry, dict) else entry
    return math.nan if value is None else float(value)


def run_baselines(
    context: ProbeContext,
    measurement: Measurement,
    names: Sequence[str],
    progress: Progress | None = None,
    *,
    self_source: nn.Module | None = None,
) -> dict:
    """Compute the baselines ``names`` (⊆ yosinski, logme, hscore) for every layer of ``measurement``.

    Returns ``{"per_layer": {layer: {"AnB_frozen": {"mean", "std", "runs", ...}, "AnB_finetune": ...,
    "logme": float, "hscore": float}}, "correlations": {key: {"spearman", "kendall"}}, "alone": {task: ...}}``.
    Yosinski runs cover every task of ``context`` (AnB, and AnA with the control) and, given
    ``self_source`` (a model trained on the target task), the selffer BnB. Correlations are across layers
    with λS (first init, mean over runs) of the matching task: AnA's λS for AnA keys, AnB's for the rest.
    """
    chosen = check_baselines(names)
    layers = list(measurement.layers)
    per_layer: dict[str, dict] = {layer: {} for layer in layers}
    result: dict = {"per_layer": per_layer, "correlations": {}}

    if "yosinski" in chosen:
        result["alone"] = _run_yosinski(context, layers, per_layer, progress, self_source)

    if "logme" in chosen or "hscore" in chosen:
        train = context.tasks["AnB"].train
        for layer in layers:
            scores = layer_scores(context.source, layer, train.x, train.y)
            per_layer[layer].update({name: scores[name] for name in ("logme", "hscore") if name in chosen})
        if "hscore" in chosen:
            result["hscore_shrinkage"] = H_SCORE_SHRINKAGE

    result["correlations"] = correlations(measurement, per_layer)
    return result


def correlations(measurement: Measurement, per_layer: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Spearman and Kendall rank correlation, across layers, between λS and each baseline in ``per_layer``."""
    layers = list(measurement.layers)
    keys = list(dict.fromkeys(key for entry in per_layer.values() for key in entry))
    lambdas = {task: lambda_per_layer(measurement, task) for task in ("AnB", "AnA")}
    found = {}
    for key in keys:
        reference = lambdas["AnA" if key.startswith("AnA") else "AnB"]
        values = [entry_value(per_layer.get(layer, {}).get(key, math.nan)) for layer in layers]
        found[key] = {"spearman": spearman(reference, values), "kendall": kendall_tau_b(reference, values)}
    return found


def _run_yosinski(context, layers, per_layer, progress, self_source) -> dict:
    settings = context.settings
    seeds = list(range(settings.seed, settings.seed + settings.runs))
    donors: list[tuple[str, str, nn.Module]] = [(task, task, context.source) for task in context.tasks]
    if self_source is not None:
        own = (
            self_source
            if next(self_source.parameters()).device == context.device
            else copy.deepcopy(self_source).to(context.device)
        )
        donors.append(("BnB", "AnB", own))  # only read: its layers are copied, it never runs in training
    total = len(context.tasks) * len(seeds) + len(donors) * len(layers) * 2 * len(seeds)
    counter = itertools.count()

    def on_epoch(label: str, layer: str, seed: int) -> Callable[[EpochEvent], None] | None:
        return epoch_reporter(progress, RunSpec(layer, 0.0, label, seed), next(counter), total)

    alone = {
        task: _stats([train_alone(context, task, seed, on_epoch(f"{task}_alone", "", seed)) for seed in seeds])
        for task in context.tasks
    }
    for prefix, task, donor in donors:
        for frozen, suffix in ((True, "frozen"), (False, "finetune")):
            key = f"{prefix}_{suffix}"
            for layer in layers:
                outcomes = [
                    train_transfer(
                        context, layer, task, seed, frozen=frozen, donor=donor, on_epoch=on_epoch(key, layer, seed)
                    )
                    for seed in seeds
                ]
                per_layer[layer][key] = _stats(outcomes)
    return alone


def _stats(outcomes: list[TransferRun]) -> dict:
    values = [o.top1 for o in outcomes if o.failure is None]
    return {
        "mean": statistics.fmean(values) if values else math.nan,
        "std": statistics.stdev(values) if len(values) > 1 else (0.0 if values else math.nan),
        "runs": len(values),
        "failed": len(outcomes) - len(values),
        "values": [o.top1 for o in outcomes],
    }
