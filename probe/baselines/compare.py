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

Lenses (:mod:`probe.baselines.lenses`), each a name of its own, on the frozen source's layer-n tensors of
the target task, pooled by :func:`~probe.baselines.scores.pool_features` (conv maps globally average-pooled,
token sequences averaged) and computed ONCE per layer and split for every lens (float32 on the device; the
lenses compute in float64 where the formula needs it):

* ``linear`` / ``knn`` -- linear-probe and cosine k-NN (k = 20) test accuracy, fitted on the train split;
* ``transrate``, ``hscore_plain`` -- TransRate and the plain H-score of the train split (``hscore`` above is
  the regularised one);
* ``cka`` -- linear CKA on the test split between the source's layer-n activations and (``cka``) those of the
  trained QUANTA target of each run (measured at the end of the run, :func:`cka_after_run`, AnB, first
  init, mean over runs) and (``cka_alone``) those of the target trained alone (Yosinski's baseB, shared
  with ``yosinski``);
* ``leep`` / ``nce`` -- the source head's softmax outputs on the target's train split: one figure per scan
  (``result["head"]``), not per layer, so not in the rank correlations or the per-layer figure.
"""

from __future__ import annotations

import copy
import itertools
import math
import statistics
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..engine.context import ProbeContext
from ..engine.progress import Progress, epoch_reporter
from ..errors import SettingsError
from ..results.quality import kendall_tau_b, spearman
from ..results.schema import Measurement, RunSpec, entry_value, lambda_per_layer
from ..training.trainer import EpochEvent
from . import lenses
from .scores import H_SCORE_SHRINKAGE, h_score, layer_features, logme
from .transfer import TransferRun, train_alone, train_transfer

FEATURE_LENSES = ("logme", "hscore", "hscore_plain", "transrate", "linear", "knn")
HEAD_LENSES = ("leep", "nce")
BASELINES = ("yosinski", *FEATURE_LENSES, "cka", *HEAD_LENSES)
POOLING = "conv maps (N, C, H, W) globally average-pooled to (N, C); token sequences (N, L, D) averaged over L"


def check_baselines(names: Sequence[str]) -> list[str]:
    """The baseline names, normalised and without repeats; a SettingsError names any unknown one."""
    chosen = list(dict.fromkeys(name.strip().lower() for name in names))
    unknown = [name for name in chosen if name not in BASELINES]
    if unknown:
        raise SettingsError(f"unknown baseline '{unknown[0]}': choose from {', '.join(BASELINES)}")
    return chosen


def run_baselines(
    context: ProbeContext,
    measurement: Measurement,
    names: Sequence[str],
    progress: Progress | None = None,
    *,
    self_source: nn.Module | None = None,
) -> dict:
    """Compute the baselines ``names`` (⊆ :data:`BASELINES`) for every layer of ``measurement``.

    Returns ``{"per_layer": {layer: {"AnB_frozen": {"mean", "std", "runs", ...}, "AnB_finetune": ...,
    "logme": float, "linear": float, "cka": {"mean", ...}, ...}}, "correlations": {key: {"spearman",
    "kendall"}}, "alone": {task: ...}, "head": {"leep": float, "nce": float}, "lens_settings": {...}}``.
    Yosinski runs cover every task of ``context`` (AnB, and AnA with the control) and, given
    ``self_source`` (a model trained on the target task), the selffer BnB. Correlations are across layers
    with λS (first init, mean over runs) of the matching task: AnA's λS for AnA keys, AnB's for the rest.
    ``cka`` reads the CKA each QUANTA run measured at its end (``RunResult.measures``; the scan asks for it
    with :func:`cka_after_run`); runs without one (resumed from a folder written without ``cka``) are left out.
    """
    chosen = check_baselines(names)
    layers = list(measurement.layers)
    per_layer: dict[str, dict] = {layer: {} for layer in layers}
    result: dict = {"per_layer": per_layer, "correlations": {}}
    settings = context.settings
    alone_models: list[nn.Module] = []
    if "yosinski" in chosen or "cka" in chosen:
        alone_tasks = list(context.tasks) if "yosinski" in chosen else ["AnB"]
        alone, alone_models = _run_yosinski(
            context, layers, per_layer, progress, self_source, alone_tasks, transfers="yosinski" in chosen
        )
        if "yosinski" in chosen:
            result["alone"] = alone

    train, test = context.tasks["AnB"].train, context.tasks["AnB"].test
    on_train = [name for name in FEATURE_LENSES if name in chosen]
    on_test = "linear" in chosen or "knn" in chosen or "cka" in chosen
    for layer in layers if on_train or on_test else []:
        # the source's features of this layer: one forward pass per split, shared by every lens
        f_train = layer_features(context.source, layer, train) if on_train else torch.zeros(0)
        f_test = layer_features(context.source, layer, test) if on_test else torch.zeros(0)
        for name in on_train:
            per_layer[layer][name] = _lens(
                name, layer, _feature_lens, name, f_train, f_test, train.y, test.y, settings.seed
            )
        if "cka" in chosen:
            per_layer[layer]["cka"] = _cka_of_runs(measurement, layer)
            per_layer[layer]["cka_alone"] = _summary_of(
                [
                    _lens("cka", layer, lenses.linear_cka, f_test, layer_features(model, layer, test))
                    for model in alone_models
                ]
            )
    if "hscore" in chosen:
        result["hscore_shrinkage"] = H_SCORE_SHRINKAGE
    if any(name in chosen for name in HEAD_LENSES):
        result["head"] = _head_scores(context, [name for name in HEAD_LENSES if name in chosen])
    if any(name in chosen for name in ("linear", "knn", "transrate", "cka")) or on_train:
        result["lens_settings"] = {
            "pooling": POOLING,
            "features": "the source's layer-n tensors of the target task (train split; test split for linear, "
            "knn and cka), computed once per layer",
            "knn_k": lenses.KNN_K,
            "linear_l2_grid": list(lenses.DEFAULT_L2_GRID),
            "linear_seed": settings.seed,
            "transrate_eps": lenses.TRANSRATE_EPS,
            "n_train": len(train),
            "n_test": len(test),
        }

    result["correlations"] = correlations(measurement, per_layer)
    return result


def _lens(name: str, layer: str, compute: Callable[..., float], *args) -> float:
    """``compute(*args)``, a lens's ValueError/TypeError turned into a one-line SettingsError naming the lens
    and the layer (the package's typed error: the CLI prints the line and exits with status 2)."""
    try:
        return compute(*args)
    except (ValueError, TypeError) as error:  # SettingsError too (a ValueError): the line names the lens
        raise SettingsError(f"baseline '{name}' at layer '{layer}': {error}") from None


def _feature_lens(name, f_train, f_test, y_train, y_test, seed: int) -> float:
    if name == "logme":
        return logme(f_train, y_train)
    if name == "hscore":
        return h_score(f_train, y_train, shrinkage=H_SCORE_SHRINKAGE)
    if name == "hscore_plain":
        return h_score(f_train, y_train, shrinkage=False)
    if name == "transrate":
        return lenses.transrate(f_train, y_train)
    if name == "linear":
        return lenses.linear_probe_accuracy(f_train, y_train, f_test, y_test, seed=seed)["accuracy"]
    if name == "knn":
        return lenses.knn_accuracy(f_train, y_train, f_test, y_test)["accuracy"]
    raise SettingsError(f"unknown feature lens '{name}'")


def _summary_of(values: list[float]) -> dict:
    good = [v for v in values if math.isfinite(v)]
    return {
        "mean": statistics.fmean(good) if good else math.nan,
        "std": statistics.stdev(good) if len(good) > 1 else (0.0 if good else math.nan),
        "runs": len(good),
        "values": values,
    }


def _cka_of_runs(measurement: Measurement, layer: str) -> dict:
    """The CKA each QUANTA run of ``layer`` (AnB, first init) measured at its end, as mean, std and values."""
    init = measurement.settings["init"][0]
    runs = [
        run
        for run in measurement.runs
        if run.spec.layer == layer and run.spec.task == "AnB" and math.isclose(run.spec.init, init) and run.ok
    ]
    return _summary_of([float(run.measures["cka"]) for run in runs if "cka" in (run.measures or {})])


@torch.no_grad()
def _head_scores(context: ProbeContext, names: list[str], batch_size: int = 256) -> dict[str, float]:
    """LEEP and NCE of the source's own head (softmax of its outputs) on the target task's train split."""
    source, train = context.source, context.tasks["AnB"].train
    was_training = source.training
    source.eval()
    try:
        logits = torch.cat([source(train.rows(i, i + batch_size)).double() for i in range(0, len(train), batch_size)])
    finally:
        source.train(was_training)
    probs = torch.softmax(logits, dim=1)
    scores = {}
    if "leep" in names:
        scores["leep"] = _lens("leep", "head", lenses.leep, probs, train.y)
    if "nce" in names:
        scores["nce"] = _lens("nce", "head", lenses.nce, probs.argmax(1), train.y)
    return scores


def cka_after_run(context: ProbeContext, spec: RunSpec, target: nn.Module) -> dict[str, float]:
    """``ProbeContext.after_run`` for ``cka``: linear CKA between the source's and the trained target's pooled
    layer-n tensors on the run's test split (the target without its QUANTA hooks: its own features)."""
    test = context.tasks[spec.task].test
    source = layer_features(context.source, spec.layer, test)
    return {"cka": _lens("cka", spec.layer, lenses.linear_cka, source, layer_features(target, spec.layer, test))}


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


def _run_yosinski(
    context, layers, per_layer, progress, self_source, alone_tasks, *, transfers: bool = True
) -> tuple[dict, list[nn.Module]]:
    """The targets trained alone on ``alone_tasks`` and (``transfers``) the Yosinski transfers; the summary of
    the alone runs by task and the AnB alone targets (for ``cka_alone``)."""
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
    if not transfers:
        donors = []
    total = len(alone_tasks) * len(seeds) + len(donors) * len(layers) * 2 * len(seeds)
    counter = itertools.count()

    def on_epoch(label: str, layer: str, seed: int) -> Callable[[EpochEvent], None] | None:
        return epoch_reporter(progress, RunSpec(layer, 0.0, label, seed), next(counter), total)

    runs = {
        task: [train_alone(context, task, seed, on_epoch(f"{task}_alone", "", seed)) for seed in seeds]
        for task in alone_tasks
    }
    alone = {task: _stats(outcomes) for task, outcomes in runs.items()}
    models = [run.model for run in runs.get("AnB", []) if run.failure is None]
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
    return alone, models


def _stats(outcomes: list[TransferRun]) -> dict:
    values = [o.top1 for o in outcomes if o.failure is None]
    return {
        "mean": statistics.fmean(values) if values else math.nan,
        "std": statistics.stdev(values) if len(values) > 1 else (0.0 if values else math.nan),
        "runs": len(values),
        "failed": len(outcomes) - len(values),
        "values": [o.top1 for o in outcomes],
    }
