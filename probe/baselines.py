"""Baselines beside λS, on the same data, seeds and trainer: Yosinski transfer accuracy, LogME, H-score.

* ``yosinski`` -- Yosinski et al., "How transferable are features in deep neural networks?", NeurIPS
  2014. For layer n, the source's layers up to and including n are copied into a fresh target and the
  rest is trained on the target task: frozen (``AnB``; the copied weights never change and copied
  BatchNorm layers keep the source's statistics) and fine-tuned (``AnB+``; everything trains). The
  figure is the target's test top-1, the mean of the last ``settings.last_epochs`` epochs, as for
  QUANTA. With the control task, ``AnA`` / ``AnA+`` are the selffer variants; given a model trained on
  B (``self_source``), so are ``BnB`` / ``BnB+``. The target trained alone (Yosinski's baseB) is the
  reference every transfer is compared with.
* ``logme`` / ``hscore`` -- :func:`probe.scores.logme` and :func:`probe.scores.h_score` (the regularised,
  shrinkage variant, stable when a layer has more features than the task has examples) of the source's
  pooled layer-n tensors for the target task's training split, with the target labels.

:func:`run_baselines` also gives the rank correlation (Spearman, Kendall tau-b) across layers between
λS and each baseline, and :func:`comparison_figure` draws every measure, min-max normalised, over layers.
"""

from __future__ import annotations

import copy
import io
import itertools
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .checkpoint import atomic_write_bytes, source_info
from .errors import LayerError, SettingsError, ShapeMismatchError
from .hooks import resolve_layer, source_forward
from .results import Measurement, RunSpec, final_figures
from .scores import h_score, logme, pool_features
from .trainer import fit, make_optimizer

if TYPE_CHECKING:  # api imports this module lazily; importing api here would be circular at run time
    from .api import ProbeContext, Progress

__all__ = [
    "BASELINES",
    "comparison_figure",
    "kendall_tau_b",
    "layer_scores",
    "modules_through",
    "run_baselines",
    "spearman",
    "train_alone",
    "train_transfer",
    "transfer_layers",
    "transfer_target",
]

BASELINES = ("yosinski", "logme", "hscore")
H_SCORE_SHRINKAGE = True  # Ibrahim et al. (2022): plain H-score degenerates when features outnumber examples


class _StopForward(Exception):
    """Ends the dry run once the probed layer is reached."""


# --------------------------------------------------------------------------------------------------
# Which modules are "layers up to and including n"


def _owns_state(module: nn.Module) -> bool:
    return any(True for _ in itertools.chain(module.parameters(recurse=False), module.buffers(recurse=False)))


def _example_input(model: nn.Module) -> torch.Tensor:
    info = source_info(model)
    if info is None or info.in_chans is None or info.input_size is None:
        raise LayerError(
            f"cannot tell which layers of {type(model).__name__} come before a layer without an input: pass example=x"
        )
    device = next(itertools.chain(model.parameters(), model.buffers())).device
    return torch.zeros(1, info.in_chans, *info.input_size, device=device)


@torch.no_grad()
def modules_through(model: nn.Module, layer: str, example: torch.Tensor | None = None) -> list[str]:
    """Names of the modules holding state that run before ``layer``'s tensor exists, in forward order.

    A dry forward pass (eval mode, no autograd, stopped at the layer) records when each module that owns
    parameters or buffers is first entered. For ``"name"`` the layer's tensor exists once that module has
    returned, so the module itself and everything inside it count; for ``"name:input"`` only modules
    entered before it. A module that owns state and has children counts from the moment it is entered.
    """
    point = resolve_layer(model, layer)
    example = _example_input(model) if example is None else example
    owners = {name: module for name, module in model.named_modules() if _owns_state(module)}
    clock = itertools.count()
    entered: dict[str, int] = {}
    boundary: list[int] = []

    def enter(name: str) -> Callable:
        def hook(module, args) -> None:
            if name not in entered:
                entered[name] = next(clock)

        return hook

    def reached(*_) -> None:
        boundary.append(next(clock))
        raise _StopForward

    handles = [module.register_forward_pre_hook(enter(name)) for name, module in owners.items()]
    if point.on_input:  # prepended: a module that owns state is not "before" its own input
        handles.append(point.module.register_forward_pre_hook(reached, prepend=True))
    else:
        handles.append(point.module.register_forward_hook(reached))
    was_training = model.training
    model.eval()
    try:
        model(example)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if not boundary:
        raise LayerError(f"'{layer}' did not run in {type(model).__name__}'s forward pass; pick a layer that does")
    return sorted((name for name, time in entered.items() if time < boundary[0]), key=entered.__getitem__)


@torch.no_grad()
def transfer_layers(source: nn.Module, target: nn.Module, layer: str, example: torch.Tensor | None = None) -> list[str]:
    """Copy the source's layers up to and including ``layer`` into ``target`` (in place); return their names.

    Each named module's own parameters and buffers are copied (see :func:`modules_through`); the source is
    only read.
    """
    names = modules_through(source, layer, example)
    for name in names:
        donor, receiver = source.get_submodule(name), target.get_submodule(name)
        own = dict(itertools.chain(donor.named_parameters(recurse=False), donor.named_buffers(recurse=False)))
        theirs = dict(itertools.chain(receiver.named_parameters(recurse=False), receiver.named_buffers(recurse=False)))
        for key, tensor in own.items():
            if key not in theirs or theirs[key].shape != tensor.shape:
                found = tuple(theirs[key].shape) if key in theirs else "nothing"
                raise ShapeMismatchError(
                    f"cannot transfer '{name}.{key}' up to '{layer}': the source has {tuple(tensor.shape)}, the target "
                    f"{found}; transfer a layer before the head or use a target of the same architecture"
                )
            theirs[key].copy_(tensor)
    return names


# --------------------------------------------------------------------------------------------------
# Yosinski transfer runs


class _KeepEval(nn.Module):
    """Wraps a target for the trainer so that ``train()`` leaves the frozen modules in eval mode."""

    def __init__(self, target: nn.Module, frozen: Sequence[nn.Module]) -> None:
        super().__init__()
        self.target = target
        self.frozen = list(frozen)  # a plain list: not registered twice as submodules

    def train(self, mode: bool = True) -> "_KeepEval":
        super().train(mode)
        for module in self.frozen:
            module.train(False)
        return self


def _fresh_target(context: ProbeContext, task_name: str, seed: int) -> nn.Module:
    from .api import fresh_target  # api imports this module lazily

    return fresh_target(context, task_name, seed)  # the same fresh target as the QUANTA run with this seed


@dataclass
class TransferRun:
    """One baseline training: the final top-1 (NaN when it failed), why it failed, and the trained target."""

    top1: float
    failure: str | None
    model: nn.Module


def _train(
    context: ProbeContext, target: nn.Module, trainable: nn.Module, task_name: str, seed: int, on_epoch
) -> TransferRun:
    outcome = fit(
        forward=lambda x, idx, split: target(x),
        trainable=trainable,
        optimizer=make_optimizer(target, context.settings),
        task=context.tasks[task_name],
        settings=context.settings,
        seed=seed,
        device=context.device,
        on_epoch=on_epoch,
    )
    top1 = (
        final_figures(outcome.history, context.settings.last_epochs).get("top1", math.nan)
        if outcome.history
        else math.nan
    )
    return TransferRun(math.nan if outcome.failure else top1, outcome.failure, target)


def transfer_target(
    context: ProbeContext, layer: str, task_name: str, seed: int, donor: nn.Module | None = None
) -> tuple[nn.Module, list[str]]:
    """A fresh target for ``task_name`` seeded like the QUANTA run, with ``donor``'s layers ≤ ``layer`` copied in.

    Returns the target and the names of the copied modules; ``donor`` defaults to the context's source.
    """
    target = _fresh_target(context, task_name, seed)
    donor = context.source if donor is None else donor
    return target, transfer_layers(donor, target, layer, context.tasks[task_name].train.x[:1])


def train_transfer(
    context: ProbeContext,
    layer: str,
    task_name: str,
    seed: int,
    *,
    frozen: bool,
    donor: nn.Module | None = None,
    on_epoch: Callable | None = None,
) -> TransferRun:
    """One Yosinski run: :func:`transfer_target`, then train on ``task_name`` with the context's settings.

    ``frozen``: the copied parameters do not train and the copied modules stay in eval mode (BatchNorm keeps
    the donor's statistics); otherwise everything is fine-tuned.
    """
    target, names = transfer_target(context, layer, task_name, seed, donor)
    copied = [target.get_submodule(name) for name in names]
    if frozen:
        for module in copied:
            for parameter in module.parameters(recurse=False):
                parameter.requires_grad_(False)
        if not any(p.requires_grad for p in target.parameters()):
            raise LayerError(f"transferring up to '{layer}' leaves nothing to train; pick a layer before the head")
    return _train(context, target, _KeepEval(target, copied if frozen else ()), task_name, seed, on_epoch)


def train_alone(context: ProbeContext, task_name: str, seed: int, on_epoch: Callable | None = None) -> TransferRun:
    """The target trained alone on ``task_name`` (Yosinski's baseB): no transfer, no gate, same seed."""
    target = _fresh_target(context, task_name, seed)
    return _train(context, target, target, task_name, seed, on_epoch)


def _stats(outcomes: list[TransferRun]) -> dict:
    values = [o.top1 for o in outcomes if o.failure is None]
    return {
        "mean": statistics.fmean(values) if values else math.nan,
        "std": statistics.stdev(values) if len(values) > 1 else (0.0 if values else math.nan),
        "runs": len(values),
        "failed": len(outcomes) - len(values),
        "values": [o.top1 for o in outcomes],
    }


# --------------------------------------------------------------------------------------------------
# Score-based estimators


@torch.no_grad()
def layer_scores(
    source: nn.Module, layer: str, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256
) -> dict[str, float]:
    """LogME and H-score of the source's pooled tensors at ``layer`` for inputs ``x`` with labels ``y``."""
    point = resolve_layer(source, layer)
    was_training = source.training
    source.eval()
    try:
        features = torch.cat(
            [
                pool_features(source_forward(source, point, x[i : i + batch_size])).float()
                for i in range(0, len(x), batch_size)
            ]
        )
    finally:
        source.train(was_training)
    return {"logme": logme(features, y), "hscore": h_score(features, y, shrinkage=H_SCORE_SHRINKAGE)}


# --------------------------------------------------------------------------------------------------
# Rank correlations (scipy is not a dependency)


def _paired(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise SettingsError(f"rank correlation needs two sequences of one length, got {a.shape} and {b.shape}")
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


# --------------------------------------------------------------------------------------------------
# The whole set


def _lambda_per_layer(measurement: Measurement, task: str) -> list[float]:
    """λS (mean over runs, first init) per layer for ``task``; NaN where there is none."""
    init = measurement.settings["init"][0]
    values = []
    for layer in measurement.layers:
        try:
            values.append(measurement.summary(layer, init, task).mean["lambda_source"])
        except KeyError:
            values.append(math.nan)
    return values


def _value(entry) -> float:
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
    chosen = list(dict.fromkeys(name.strip().lower() for name in names))
    unknown = [name for name in chosen if name not in BASELINES]
    if unknown:
        raise SettingsError(f"unknown baseline(s) {', '.join(unknown)}; valid: {', '.join(BASELINES)}")
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
    lambdas = {task: _lambda_per_layer(measurement, task) for task in ("AnB", "AnA")}
    found = {}
    for key in keys:
        reference = lambdas["AnA" if key.startswith("AnA") else "AnB"]
        values = [_value(per_layer.get(layer, {}).get(key, math.nan)) for layer in layers]
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

    def on_epoch(label: str, layer: str, seed: int):
        if progress is None:
            return None
        from .api import ProgressEvent

        index, spec = next(counter), RunSpec(layer, 0.0, label, seed)
        return lambda e: progress(ProgressEvent(spec, e.epoch, e.epochs, e.metrics, index, total))

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


# --------------------------------------------------------------------------------------------------
# The figure

_LABELS = {
    "AnB_frozen": "Yosinski AnB (frozen)",
    "AnB_finetune": "Yosinski AnB+ (fine-tuned)",
    "AnA_frozen": "Yosinski AnA (frozen)",
    "AnA_finetune": "Yosinski AnA+ (fine-tuned)",
    "BnB_frozen": "Yosinski BnB (selffer, frozen)",
    "BnB_finetune": "Yosinski BnB+ (selffer, fine-tuned)",
    "logme": "LogME",
    "hscore": "H-score",
}


def _normalised(values: Sequence[float]) -> np.ndarray:
    """Min-max over the finite values: 0 = the measure's lowest layer, 1 = its highest; constant → 0.5."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return v
    low, high = finite.min(), finite.max()
    return np.full_like(v, 0.5) if high == low else (v - low) / (high - low)


def comparison_figure(measurement: Measurement, path: str | Path) -> Path:
    """Write ``path`` (PNG): λS, QUANTA top-1 and every baseline over layers, each min-max normalised.

    Each measure is scaled to its own range across layers so that their shapes (drops, recoveries) can be
    compared at a glance; the legend gives each baseline's Spearman ρ with λS.
    """
    from matplotlib.figure import Figure  # the object API: no pyplot state, Agg when saved

    layers = list(measurement.layers)
    init = measurement.settings["init"][0]
    series: list[tuple[str, list[float], dict]] = [
        (f"QUANTA λS (AnB, init {init:g})", _lambda_per_layer(measurement, "AnB"), {"linewidth": 3, "color": "black"}),
    ]
    top1 = []
    for layer in layers:
        try:
            top1.append(measurement.summary(layer, init, "AnB").mean["top1"])
        except KeyError:
            top1.append(math.nan)
    series.append(("QUANTA target top-1 (AnB)", top1, {"linestyle": "--", "color": "grey"}))
    control = _lambda_per_layer(measurement, "AnA")
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
    for key in keys:
        rho = _value((correlations.get(key) or {}).get("spearman"))
        label = _LABELS.get(key, key) + ("" if not math.isfinite(rho) else f"  (ρ={rho:+.2f})")
        series.append((label, [_value(per_layer[layer].get(key)) for layer in layers], {}))

    figure = Figure(figsize=(max(6.0, 0.9 * len(layers) + 3.0), 4.8))
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
    axes.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)
