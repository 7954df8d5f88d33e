"""Results as data: per-epoch history of each run, per-run finals, per-(layer, init, task) summaries.

One schema (``SCHEMA``) serialises to ``results.json``; ``results.csv`` has one row per summary.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..settings import lr_scale_sum
from .quality import SETTLED_DRIFT, can_judge, settled_drift

SCHEMA = "quanta-probe/results/1"
TEST_METRICS = ("top1", "top3", "loss", "precision", "recall")  # what the trainer's evaluate measures
METRICS = ("lambda_source", *TEST_METRICS)


@dataclass(frozen=True)
class RunSpec:
    """One QUANTA training: layer n, λS init, task (AnB or AnA control) and seed."""

    layer: str
    init: float
    task: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.task}__{self.layer}__init{self.init:g}__seed{self.seed}"


def run_grid(
    layers: Sequence[str], inits: Sequence[float], seed: int, runs: int, tasks: Sequence[str]
) -> list[RunSpec]:
    """Every run of a scan, task-major then init, layer, seed (the order the results are shown in)."""
    seeds = range(seed, seed + runs)
    return [RunSpec(layer, float(init), task, s) for task in tasks for init in inits for layer in layers for s in seeds]


@dataclass
class RunResult:
    """One run: its per-epoch history on the test split and its final figures (mean of the last epochs)."""

    spec: RunSpec
    history: list[dict[str, float]]
    final: dict[str, float]
    steps: int
    gate_lr: float
    status: str = "ok"  # "ok" | "failed"
    failure: str | None = None
    seconds: float = 0.0
    # Figures measured on the trained target at the end of the run when asked (e.g. {"cka": ...}); else empty.
    measures: dict[str, float] = field(default_factory=dict)
    lr_schedule: str = "constant"  # gate_lr is the schedule's set (peak) value

    @property
    def gate_budget(self) -> float:
        """How far (in logit units) Adam could move each gate parameter: gate_lr × Σ of the schedule's factors."""
        return self.gate_lr * lr_scale_sum(self.lr_schedule, self.steps) if self.steps else 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict:
        data = asdict(self)
        data["gate_budget"] = self.gate_budget
        return data

    @classmethod
    def from_dict(cls, data: dict) -> RunResult:
        data = dict(data)
        data.pop("gate_budget", None)
        data["spec"] = RunSpec(**data["spec"])
        return cls(**data)


def strict_json(value: Any) -> Any:
    """``value`` with every NaN/±inf float replaced by None (strict JSON has no NaN), tuples as lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def final_figures(history: list[dict[str, float]], last_epochs: int) -> dict[str, float]:
    """Mean of each metric over the last ``last_epochs`` epochs (all of them when there are fewer)."""
    tail = history[-last_epochs:]
    return {m: sum(h[m] for h in tail) / len(tail) for m in METRICS if tail and m in tail[0]}


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


@dataclass
class Summary:
    """Mean ± sample std over the successful runs of one (layer, init, task).

    ``lambda_drift`` is the largest :func:`~probe.results.quality.settled_drift` of the runs' λS over the
    averaged epochs; ``settled`` says it is at most :data:`~probe.results.quality.SETTLED_DRIFT` (a λS still
    moving there is not a result yet). Only runs that :func:`~probe.results.quality.can_judge` are judged: when
    none can (runs of 2 epochs against a window of 3, or a window of one epoch), ``settled`` is None (not judged)
    and ``lambda_drift`` NaN.
    """

    layer: str
    init: float
    task: str
    runs: int
    ok_runs: int
    mean: dict[str, float]
    std: dict[str, float]
    gate_budget: float
    lambda_drift: float = math.nan
    settled: bool | None = None  # None: not judged (no run as long as its averaging window)
    epochs: int = 0  # the most epochs a successful run trained

    @classmethod
    def of(cls, runs: list[RunResult], last_epochs: int = 10) -> Summary:
        spec = runs[0].spec
        good = [r for r in runs if r.ok]
        mean, std = {}, {}
        for m in METRICS:
            mean[m], std[m] = _mean_std([r.final[m] for r in good if m in r.final])
        budget = max((r.gate_budget for r in runs), default=0.0)
        judged = [r for r in good if can_judge(len(r.history), last_epochs)]
        drifts = [settled_drift([h["lambda_source"] for h in r.history], last_epochs) for r in judged]
        drift = max(drifts, default=math.nan)
        settled = drift <= SETTLED_DRIFT if drifts else None
        epochs = max((len(r.history) for r in good), default=0)
        return cls(spec.layer, spec.init, spec.task, len(runs), len(good), mean, std, budget, drift, settled, epochs)


def entry_value(entry) -> float:
    """A per-layer baseline entry as a number: a run summary's mean or a score; NaN for a missing one (JSON null)."""
    value = entry.get("mean") if isinstance(entry, dict) else entry
    return math.nan if value is None else float(value)


def summarise(runs: Iterable[RunResult], layer_order: list[str] | None = None, last_epochs: int = 10) -> list[Summary]:
    """Group runs by (task, init, layer) in forward layer order."""
    groups: dict[tuple, list[RunResult]] = {}
    for run in runs:
        groups.setdefault((run.spec.task, run.spec.init, run.spec.layer), []).append(run)
    order = {name: i for i, name in enumerate(layer_order or [])}
    keys = sorted(groups, key=lambda k: (k[0] != "AnB", -k[1], order.get(k[2], len(order)), k[2]))
    return [Summary.of(sorted(groups[k], key=lambda r: r.spec.seed), last_epochs) for k in keys]


@dataclass
class Measurement:
    """Everything a measurement produced: settings, source and target description, and every run."""

    settings: dict
    source: dict
    target: str
    layers: list[str]
    runs: list[RunResult] = field(default_factory=list)
    environment: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)

    @property
    def summaries(self) -> list[Summary]:
        return summarise(self.runs, self.layers, int(self.settings.get("last_epochs", 10)))

    def summary(self, layer: str, init: float | None = None, task: str = "AnB") -> Summary:
        """The summary of one layer (the first init when ``init`` is None)."""
        for s in self.summaries:
            if s.layer == layer and s.task == task and (init is None or math.isclose(s.init, init)):
                return s
        raise KeyError(f"no results for layer '{layer}' init {init} task {task}")

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA,
            "settings": self.settings,
            "source": self.source,
            "target": self.target,
            "layers": self.layers,
            "environment": self.environment,
            "summaries": [asdict(s) for s in self.summaries],
            "runs": [r.to_dict() for r in self.runs],
            "extras": self.extras,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Measurement:
        if data.get("schema") != SCHEMA:
            raise ValueError(f"unsupported results schema {data.get('schema')!r}, expected {SCHEMA}")
        return cls(
            settings=data["settings"],
            source=data["source"],
            target=data["target"],
            layers=data["layers"],
            runs=[RunResult.from_dict(r) for r in data["runs"]],
            environment=data.get("environment", {}),
            extras=data.get("extras", {}),
        )

    def to_csv(self) -> str:
        """One row per (layer, init, task): mean and std of every metric (``settled`` empty: not judged)."""
        buffer = io.StringIO()
        header = ["layer", "init", "task", "runs", "ok_runs", "gate_budget", "lambda_drift", "settled"]
        header += [f"{m}_{kind}" for m in METRICS for kind in ("mean", "std")]
        extra_header, extra_cells = self._baseline_columns()
        header += extra_header
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        for s in self.summaries:
            row = [
                s.layer,
                s.init,
                s.task,
                s.runs,
                s.ok_runs,
                f"{s.gate_budget:.6g}",
                f"{s.lambda_drift:.6g}",
                "" if s.settled is None else s.settled,  # empty: not judged
            ]
            row += [f"{v:.6g}" for m in METRICS for v in (s.mean[m], s.std[m])]
            row += extra_cells(s.layer)
            writer.writerow(row)
        return buffer.getvalue()

    def _baseline_columns(self) -> tuple[list[str], Callable[[str], list[str]]]:
        """The baselines' columns (appended after the metrics) and the cells of a layer's row.

        A per-layer baseline of several runs (a dict with mean and std, e.g. Yosinski's) is ``KEY_mean``,
        ``KEY_std``; a score is ``KEY``; the scores of the source head (LEEP, NCE: one per scan) repeat on every
        row. A missing value is an empty cell. Each row of a layer (every init and task) holds the same values.
        """
        baselines = (self.extras or {}).get("baselines") or {}
        per_layer = baselines.get("per_layer") or {}
        head = baselines.get("head") or {}
        keys = list(dict.fromkeys(key for entry in per_layer.values() for key in entry))
        several = {key for entry in per_layer.values() for key, value in entry.items() if isinstance(value, dict)}
        header = [column for key in keys for column in ((f"{key}_mean", f"{key}_std") if key in several else (key,))]
        header += list(head)

        def number(value: Any) -> str:
            return "" if value is None else f"{float(value):.6g}"

        def cells(layer: str) -> list[str]:
            entry = per_layer.get(layer) or {}
            row = []
            for key in keys:
                value = entry.get(key)
                if key in several:
                    value = value if isinstance(value, dict) else {"mean": value}
                    row += [number(value.get("mean")), number(value.get("std"))]
                else:
                    row.append(number(value))
            return row + [number(value) for value in head.values()]

        return header, cells


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
