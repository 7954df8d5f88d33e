"""Does λS measure something beyond 8×8 digits? The `default` preset on Fashion-MNIST (issue 22).

One resumable command trains the sources, then runs every unit of work (one training run each) in worker processes
of one thread, and appends one JSON line per training run to ``--out`` (λS and top-1 after every epoch, so any
averaging window is recomputed without training). Stages:

* ``main``: paper-cnn sources (width 0.25) trained on the whole training half of ``fashion[0-4]`` (halves) and
  ``fashion[0,2,4,6,8]`` (parity); targets with the settings a user gets for fashion (the ``default`` preset:
  lr 1e-4, weight decay 1e-6, batch 32, augmentation, cosine schedule, gate budget 13.85), sized by
  ``--epochs 20 --train-size 640`` (640 images per class, 100 steps per epoch, 2,000 steps per run); all 7
  layers, AnB and AnA, seeds 0-2; Yosinski's frozen AnB transfer per layer; the target alone; the lenses.
* ``rule``: the budget rule over an 8× range of steps (500, 1,000 and 4,000: 5, 10 and 40 epochs, beside main's
  2,000), halves, fc, AnB and AnA, seeds 0-1: the gate budget kept (the rule) and, at 5 epochs, the 20-epoch
  run's gate lr kept instead ("same-lr", a quarter of the budget).
* ``small``: the small end, ``--train-size 10`` (50 images, 2 steps per epoch, 40 steps), halves, conv1, conv4
  and fc, AnB and AnA, seeds 0-2: the budget rule uncapped, as it was before this experiment (peak gate lr 0.68),
  against the gate lr capped at 0.1 (the shipped ``gate_lr_max``).
* ``cross``: when, not only what: every pair of {digits[0-4], fashion[0-4]} sources and {digits[5-9],
  fashion[5-9]} targets at one input, 28×28 grey (digits resized), AnB, all 7 layers, seeds 0-2, with Yosinski's
  frozen transfer, the target alone and the lenses; each target with its own preset (digits: ``digits``).
* ``inits``: the paper's question 3 on fashion halves: inits 0.75 and 0.5, conv1, conv4, fc, AnB and AnA,
  seeds 0-1.

Cross and inits run seed-major, so a run stopped for time leaves whole seeds (docs/protocol.md says what ran).
Summaries average each run's last quarter of epochs, the rule the presets ship (main also shows the fixed last 10).

    python experiments/fashion.py                     # everything missing, 2 workers (resumable)
    python experiments/fashion.py --stage main        # one stage (sources first, always)
    python experiments/fashion.py --summary           # the tables of docs/protocol.md from the JSONL

Sources are checkpoints in ``--results`` (default results/fashion), reused when present. The Debian package
``dataset-fashion-mnist`` (or ``--data-dir`` / ``$PROBE_DATA``) provides the data.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

from _common import load, run_missing, tied_below

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "fc")
WIDTH = 0.25  # a step of the full-width CNN on 28×28 takes ~1 s on these cores; 0.25 takes ~0.05 s
# The target's size: the fashion preset's epochs cut from 60 to 20 and 640 training images per class (of 6,000), so
# that a run has 2,000 optimiser steps (7× a digits run) and a split's units fit about 3 CPU-hours on 2 cores.
EPOCHS = 20
TRAIN_SIZE = 640
SEEDS = 3
# How the sources are trained: the default (paper) source settings (lr 1e-4, augmentation) on the whole training
# half (30,000 images), 10 epochs instead of 60 (9,400 steps; 60 would take ~40 min a source here).
SOURCE_EPOCHS = 10
SOURCES = {
    "fashion-halves": dict(data="fashion[0-4]", image_size=None, epochs=SOURCE_EPOCHS),
    "fashion-parity": dict(data="fashion[0,2,4,6,8]", image_size=None, epochs=SOURCE_EPOCHS),
    # digits at Fashion-MNIST's input (28×28 grey), trained with the digits source settings (12 epochs, lr 1e-3)
    "digits-halves-28": dict(data="digits[0-4]", image_size=28, epochs=None),
}
# pair name -> (source, target, AnA task or None, image size the target is fed at)
PAIRS = {
    "halves": ("fashion-halves", "fashion[5-9]", "fashion[0-4]", None),
    "parity": ("fashion-parity", "fashion[1,3,5,7,9]", "fashion[0,2,4,6,8]", None),
    "digits→fashion": ("digits-halves-28", "fashion[5-9]", None, None),
    "fashion→digits": ("fashion-halves", "digits[5-9]", None, 28),
    "digits→digits": ("digits-halves-28", "digits[5-9]", None, 28),
}
LENSES = ("linear", "knn", "logme", "hscore", "transrate")
SMALL_CAP = 0.1  # the digits default's peak gate lr


def unit(stage: str, pair: str, kind: str, *, task: str = "AnB", layer: str | None = None, seed: int = 0, **extra):
    return dict(stage=stage, pair=pair, kind=kind, task=task, layer=layer, seed=seed, **extra)


def stage_units(stage: str) -> list[dict]:
    units: list[dict] = []
    if stage == "main":
        for pair in ("halves", "parity"):
            for seed in range(SEEDS):
                units += [unit(stage, pair, "alone", seed=seed)]
                for layer in LAYERS:
                    units += [unit(stage, pair, "quanta", task=task, layer=layer, seed=seed) for task in ("AnB", "AnA")]
                    units += [unit(stage, pair, "frozen", layer=layer, seed=seed)]
            units += [unit(stage, pair, "lenses")]
    elif stage == "rule":
        # 500, 1,000 and 4,000 steps (5, 10, 40 epochs) beside main's 2,000: an 8x range; "same-lr" keeps the
        # 2,000-step run's peak gate lr at 500 steps (a quarter of the budget), the unscaled rate the rule replaces.
        peak = 13.85 / ((EPOCHS * 100 + 1) / 2)  # the 20-epoch run's peak gate lr (2,000 steps)
        for seed in range(2):
            for variant, epochs, gate_lr in (
                ("rule", 5, None),
                ("same-lr", 5, peak),
                ("rule", 10, None),
                ("rule", 40, None),
            ):
                units += [
                    unit(stage, "halves", "quanta", task=task, layer="fc", seed=seed, variant=variant,
                         epochs=epochs, gate_lr=gate_lr)
                    for task in ("AnB", "AnA")
                ]  # fmt: skip
    elif stage == "small":
        for seed in range(SEEDS):
            for variant, gate_lr in (("rule", None), ("cap", SMALL_CAP)):
                for layer in ("conv1", "conv4", "fc"):
                    units += [
                        unit(stage, "halves", "quanta", task=task, layer=layer, seed=seed, variant=variant,
                             train_size=10, gate_lr=gate_lr)
                        for task in ("AnB", "AnA")
                    ]  # fmt: skip
    elif stage == "cross":
        # Seed 0 of every pair and the lenses first, then the cheap digits targets' other seeds, then
        # digits→fashion's (a Fashion-MNIST target run costs ~5 digits ones): a run stopped early leaves whole seeds.
        pairs = ("digits→fashion", "fashion→digits", "digits→digits")
        order = [(0, pair) for pair in pairs] + [(None, pair) for pair in pairs]
        order += [(seed, pair) for pair in pairs[1:] for seed in range(1, SEEDS)]
        order += [(seed, pairs[0]) for seed in range(1, SEEDS)]
        for seed, pair in order:
            if seed is None:
                units += [unit(stage, pair, "lenses")]
                continue
            if pair != "digits→fashion":  # the fashion target alone is main's (same task, settings, seeds)
                units += [unit(stage, pair, "alone", seed=seed)]
            for layer in LAYERS:
                units += [unit(stage, pair, "quanta", layer=layer, seed=seed)]
                units += [unit(stage, pair, "frozen", layer=layer, seed=seed)]
    elif stage == "inits":
        for seed in range(2):
            for init in (0.5, 0.75):  # 0.5 first: the init furthest from the default
                for layer in ("conv1", "conv4", "fc"):
                    units += [
                        unit(stage, "halves", "quanta", task=task, layer=layer, seed=seed, init=init)
                        for task in ("AnB", "AnA")
                    ]
    return units


STAGES = ("main", "rule", "small", "cross", "inits")


def unit_key(u: dict) -> str:
    # Not gate_lr: a record's gate_lr is the rate its run used; the units that set one differ by their variant.
    fields = ("stage", "pair", "kind", "task", "layer", "seed", "variant", "epochs", "train_size", "init")
    return json.dumps([u.get(name) for name in fields])


# --------------------------------------------------------------------------------------------------
# Work (in worker processes)

_RESULTS = Path("results/fashion")


def source_path(name: str) -> Path:
    return _RESULTS / "sources" / f"{name}.pt"


def train_source(name: str) -> dict:
    from probe.api import source_training_settings
    from probe.data.images.tasks import Preprocess
    from probe.engine.sources import train_source as train

    spec = SOURCES[name]
    given = {"epochs": spec["epochs"]} if spec["epochs"] else {}
    settings = source_training_settings(spec["data"], device="cpu", **given)
    preprocess = Preprocess(image_size=spec["image_size"], origin="--image-size") if spec["image_size"] else None
    path = source_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model = train(
        "paper-cnn", spec["data"], settings=settings, out=path, arch_options={"width": WIDTH}, preprocess=preprocess
    )
    info = model.quanta_source
    return dict(
        kind="source",
        name=name,
        data=spec["data"],
        test_top1=info.test_top1,
        sha256=info.sha256,
        settings=settings.to_dict(),
        seconds=time.perf_counter() - started,
    )


def settings_for(u: dict):
    """The settings of a unit: the target's preset as the API chooses it (probe.api.scan_settings), sized."""
    from probe.api import scan_settings

    target = PAIRS[u["pair"]][1]
    given: dict = dict(device="cpu", jobs=1, runs=1, seed=u["seed"])
    if target.startswith("fashion"):  # digits targets keep their preset's size (12 epochs, every image)
        given.update(epochs=u.get("epochs") or EPOCHS, train_size=u.get("train_size") or TRAIN_SIZE)
    if u.get("gate_lr") is not None:
        given["gate_lr"] = u["gate_lr"]
    if u.get("init") is not None:
        given["init"] = (u["init"],)
    settings = scan_settings(target, **given)
    if u["stage"] == "small" and u.get("variant") == "rule":  # the budget rule as it was before its cap
        settings = settings.with_(gate_lr_max=None)
    return settings


def context_for(u: dict):
    from probe.data.images.tasks import Preprocess
    from probe.engine.prepare import prepare
    from probe.engine.sources import load_source

    source_name, target, control, size = PAIRS[u["pair"]]
    model = load_source(source_path(source_name))
    recorded = (model.quanta_source.settings or {}).get("image_size") or size
    preprocess = Preprocess(image_size=recorded, origin="--image-size") if recorded else None
    prepared = prepare(
        model, target, settings=settings_for(u), control=u["task"] == "AnA", source_data=control, preprocess=preprocess
    )
    return prepared.context


def run_unit(u: dict) -> list[dict]:
    from probe.baselines.transfer import train_alone, train_transfer

    if u["kind"] == "source":
        return [dict(u, **train_source(u["pair"]))]
    context = context_for(u)
    settings = context.settings
    base = dict(u, settings={k: settings.to_dict()[k] for k in ("epochs", "lr", "train_size", "last_epochs")})
    base["train_examples"] = len(context.tasks[u["task"]].train)
    started = time.perf_counter()
    if u["kind"] == "quanta":
        from probe.engine.run import run_one
        from probe.results.schema import RunSpec

        run = run_one(context, RunSpec(u["layer"], settings.init[0], u["task"], u["seed"]))
        return [
            dict(
                base,
                status=run.status,
                steps=run.steps,
                gate_lr=run.gate_lr,
                seconds=run.seconds,
                lambda_trajectory=[h["lambda_source"] for h in run.history],
                top1_trajectory=[h["top1"] for h in run.history],
            )
        ]
    if u["kind"] in ("frozen", "alone"):
        if u["kind"] == "frozen":
            outcome = train_transfer(context, u["layer"], u["task"], u["seed"], frozen=True)
        else:
            outcome = train_alone(context, u["task"], u["seed"])
        return [
            dict(
                base,
                status="failed" if outcome.failure else "ok",
                seconds=time.perf_counter() - started,
                top1_trajectory=[h["top1"] for h in outcome.history],
            )
        ]
    if u["kind"] == "lenses":
        return [dict(base, values=lens_values(context), seconds=time.perf_counter() - started)]
    raise ValueError(f"unknown unit kind {u['kind']}")


def lens_values(context) -> dict:
    """Each lens of :data:`LENSES` per layer, on the source's features of the target task (as probe scan does)."""
    from probe.baselines.compare import _feature_lens
    from probe.baselines.scores import layer_features

    train, test = context.tasks["AnB"].train, context.tasks["AnB"].test
    values: dict = {}
    for layer in LAYERS:
        f_train = layer_features(context.source, layer, train)
        f_test = layer_features(context.source, layer, test)
        values[layer] = {
            name: _feature_lens(name, f_train, f_test, train.y, test.y, context.settings.seed) for name in LENSES
        }
    return values


def _use_results(results: str) -> None:
    global _RESULTS
    _RESULTS = Path(results)


def run_units(units: list[dict], out: Path, results: Path, jobs: int) -> None:
    run_missing(units, out, run_unit, key=unit_key, jobs=jobs, describe=describe, setup=_use_results,
                setup_args=(str(results),), maxtasksperchild=8)  # fmt: skip


def describe(record: dict) -> str:
    return " ".join(str(record.get(k)) for k in ("stage", "pair", "kind", "task", "layer", "seed") if record.get(k))


def sources_needed(stages: list[str]) -> list[str]:
    pairs = {u["pair"] for stage in stages for u in stage_units(stage)}
    return sorted({PAIRS[pair][0] for pair in pairs})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=STAGES, action="append", help="stages to run (default: all, in order)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".jsonl"))
    parser.add_argument("--results", type=Path, default=_RESULTS, help="where the source checkpoints go")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--summary", action="store_true", help="print the tables from --out; train nothing")
    parser.add_argument("--markdown", action="store_true", help="with --summary: markdown tables")
    parser.add_argument("--figure", type=Path, help="with --summary: write the λS dynamics figure (main stage) here")
    args = parser.parse_args()
    if args.summary:
        print_summary(load(args.out), args.markdown)
        if args.figure:
            plot_dynamics(load(args.out), args.figure)
        return
    stages = args.stage or list(STAGES)
    recorded = {r["pair"] for r in load(args.out) if r["kind"] == "source"}
    missing = [name for name in sources_needed(stages) if name not in recorded]
    run_units([unit("sources", name, "source") for name in missing], args.out, args.results, args.jobs)
    for stage in stages:
        run_units(stage_units(stage), args.out, args.results, args.jobs)


# --------------------------------------------------------------------------------------------------
# Analysis (probe.results.quality does the arithmetic of the measures)

ONE_TEST_IMAGE = {"fashion": 1 / 5000, "digits": 1 / 180}  # a half of Fashion-MNIST's test split has 5,000 images
WINDOWS = ("quarter", "fixed")
WINDOW_NAMES = {
    "quarter": "the last quarter (5 of 20 epochs: the shipped rule, probe.settings.averaged_epochs)",
    "fixed": "the last 10 epochs (the preset's window before this experiment)",
}


def window_of(record: dict, window: str) -> int:
    """Epochs averaged: the last quarter of the run (the rule the presets ship), or the fixed last 10 epochs."""
    from probe.settings import averaged_epochs

    epochs = len(record["lambda_trajectory"] if "lambda_trajectory" in record else record["top1_trajectory"])
    if window == "quarter":
        return min(averaged_epochs(epochs), epochs)
    return min(10, epochs)


def tail(values: list, last: int) -> float:
    kept = [v for v in values[-last:] if v is not None]
    return statistics.fmean(kept) if kept else math.nan


def pick(records: list[dict], **match) -> list[dict]:
    return sorted(
        (r for r in records if all(r.get(k) == v for k, v in match.items())),
        key=lambda r: (r.get("seed"), r["layer"] or ""),
    )


def measures(records: list[dict], stage: str, pair: str, window: str, layers=LAYERS, **match) -> dict:
    """The quality measures of one pair's QUANTA runs (per-layer λS of AnB and AnA, separation, drift, repeatability,
    agreement with Yosinski's frozen transfer, impairment), as docs/protocol.md defines them."""
    from probe.results.quality import impairment, repeatability, separation, settled_drift, spearman

    runs = pick(records, stage=stage, pair=pair, kind="quanta", status="ok", **match)
    lam = {
        task: {
            layer: [
                tail(r["lambda_trajectory"], window_of(r, window))
                for r in runs
                if r["task"] == task and r["layer"] == layer
            ]
            for layer in layers
        }
        for task in ("AnB", "AnA")
    }
    lam = {task: {layer: v for layer, v in per.items() if v} for task, per in lam.items()}
    drift = {
        layer: max(settled_drift(r["lambda_trajectory"], window_of(r, window)) for r in runs if r["layer"] == layer)
        for layer in layers
        if any(r["layer"] == layer for r in runs)
    }
    top1 = {
        layer: statistics.fmean(
            tail(r["top1_trajectory"], window_of(r, window)) for r in runs if r["layer"] == layer and r["task"] == "AnB"
        )
        for layer in lam["AnB"]
    }
    frozen_runs = pick(records, stage=stage, pair=pair, kind="frozen", status="ok")
    frozen = {
        layer: [tail(r["top1_trajectory"], window_of(r, window)) for r in frozen_runs if r["layer"] == layer]
        for layer in layers
    }
    frozen = {layer: v for layer, v in frozen.items() if v}
    alone_runs = pick(
        records,
        stage="main" if pair in ("halves", "parity", "digits→fashion") else stage,
        pair=pair if pair != "digits→fashion" else "halves",
        kind="alone",
        status="ok",
    )
    alone = [tail(r["top1_trajectory"], window_of(r, window)) for r in alone_runs]
    found: dict = dict(lam=lam, drift=drift, top1=top1, frozen=frozen, alone=alone)
    if lam["AnA"]:
        found["separation"] = separation(lam["AnA"], lam["AnB"])
    found["repeatability"] = repeatability(lam["AnB"])
    if len(frozen) >= 3:
        shared = [layer for layer in lam["AnB"] if layer in frozen]
        lam_mean = [statistics.fmean(lam["AnB"][layer]) for layer in shared]
        ref = [statistics.fmean(frozen[layer]) for layer in shared]
        data = "digits" if PAIRS[pair][1].startswith("digits") else "fashion"
        found["agreement"] = spearman(lam_mean, ref)
        found["agreement_ties"] = spearman(lam_mean, tied_below(ref, ONE_TEST_IMAGE[data]))
        found["reference_repeatability"] = repeatability(frozen)
    if alone and top1:
        found["impairment"] = impairment(list(top1.values()), statistics.fmean(alone))
    return found


def criteria(found: dict) -> dict[str, bool]:
    """Issue 22's bars: AnB conv1 λS ≥ 0.95, AnA λS ≥ 0.9 at every layer, AnA − AnB at fc ≥ 0.3, every layer
    settled, repeatability ρ ≥ 0.8, impairment ≤ 0.02 (agreement with Yosinski is reported, not a bar)."""
    from probe.results.quality import SETTLED_DRIFT

    anb = {layer: statistics.fmean(v) for layer, v in found["lam"]["AnB"].items()}
    ana = {layer: statistics.fmean(v) for layer, v in found["lam"]["AnA"].items()}
    result = {"AnB conv1 ≥ 0.95": anb.get("conv1", math.nan) >= 0.95}
    if ana:
        result["AnA ≥ 0.9 everywhere"] = all(v >= 0.9 for v in ana.values())
        result["fc AnA − AnB ≥ 0.3"] = found["separation"]["fc"]["difference"] >= 0.3
    result["all settled"] = all(d <= SETTLED_DRIFT for d in found["drift"].values())
    result["repeat ρ ≥ 0.8"] = found["repeatability"] >= 0.8
    if "impairment" in found:
        result["impairment ≤ 0.02"] = found["impairment"] <= 0.02
    return result


def _head(cells, markdown: bool) -> str:
    """A table's header row; in markdown with its separator line."""
    return _row(cells, markdown) + ("\n|" + "---|" * len(cells) if markdown else "")


def _row(cells, markdown: bool) -> str:
    return ("| " + " | ".join(map(str, cells)) + " |") if markdown else "  ".join(map(str, cells))


def _ms(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def plot_dynamics(records: list[dict], path: Path) -> None:
    """λS after every epoch, mean over seeds, per layer: AnB solid, AnA dashed, one panel per split; the averaged
    last quarter shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    colours = plt.get_cmap("viridis")
    for ax, pair in zip(axes, ("halves", "parity"), strict=True):
        for index, layer in enumerate(LAYERS):
            for task, style in (("AnB", "-"), ("AnA", "--")):
                runs = pick(records, stage="main", pair=pair, kind="quanta", task=task, layer=layer, status="ok")
                if not runs:
                    continue
                curves = [r["lambda_trajectory"] for r in runs]
                mean = [statistics.fmean(values) for values in zip(*curves, strict=True)]
                label = f"{layer}" if task == "AnB" else None
                ax.plot(range(1, len(mean) + 1), mean, style, color=colours(index / (len(LAYERS) - 1)), label=label)
        epochs = EPOCHS
        ax.axvspan(epochs - -(-epochs // 4) + 0.5, epochs + 0.5, color="grey", alpha=0.15)
        ax.set_title(f"Fashion-MNIST {pair}: λS per epoch (AnB solid, AnA dashed; mean of 3 seeds)", fontsize=9)
        ax.set_xlabel("epoch (shaded: the averaged last quarter)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("λS")
    axes[0].legend(fontsize=7, ncol=2, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_main(records: list[dict], markdown: bool) -> None:
    for window in WINDOWS:
        for pair in ("halves", "parity"):
            found = measures(records, "main", pair, window)
            if not found["lam"]["AnB"]:
                continue
            print(f"\n{pair}, averaged over {WINDOW_NAMES[window]}")
            print(
                _head(
                    ["layer", "AnB λS", "AnA λS", "AnA − AnB (in sd)", "Yosinski AnB frozen", "max drift", "AnB top-1"],
                    markdown,
                )
            )
            for layer in LAYERS:
                sep = found.get("separation", {}).get(layer, {})
                diff = f"{sep['difference']:+.3f} ({sep['in_spread']:.1f})" if sep else "—"
                print(
                    _row(
                        [
                            layer,
                            _ms(found["lam"]["AnB"].get(layer, [])),
                            _ms(found["lam"]["AnA"].get(layer, [])),
                            diff,
                            _ms(found["frozen"].get(layer, [])),
                            f"{found['drift'].get(layer, math.nan):.3f}",
                            f"{found['top1'].get(layer, math.nan):.3f}",
                        ],
                        markdown,
                    )
                )
            met = criteria(found)
            failed = "; ".join(k for k, v in met.items() if not v)
            parts = [
                f"repeatability ρ {found['repeatability']:.2f}",
                f"agreement ρ(λS, Yosinski) {found.get('agreement', math.nan):.2f}",
                f"with sub-image ties {found.get('agreement_ties', math.nan):.2f}",
                f"Yosinski's own repeatability {found.get('reference_repeatability', math.nan):.2f}",
                f"impairment {found.get('impairment', math.nan):+.3f} (alone {_ms(found['alone'])})",
                f"criteria met {sum(met.values())}/{len(met)}" + (f" (not: {failed})" if failed else ""),
            ]
            print(" · ".join(parts))


def print_rule(records: list[dict], markdown: bool) -> None:
    print("\nthe budget rule over 8x the steps (halves, fc, seeds 0-1; main's 20 epochs, seeds 0-1, beside)")
    print(
        _head(
            [
                "epochs",
                "steps",
                "gate lr (peak)",
                "budget",
                "AnB fc λS",
                "AnA fc λS",
                "AnA − AnB",
                "max drift",
                "AnB top-1",
            ],
            markdown,
        )
    )
    rows = [("rule", 5, "same-lr"), ("rule", 5, "rule"), ("rule", 10, "rule"), ("main", 20, None), ("rule", 40, "rule")]
    for stage, epochs, variant in rows:
        match = dict(stage=stage, pair="halves", layer="fc", kind="quanta")
        runs = [
            r
            for r in pick(records, **match)
            if (variant is None or r.get("variant") == variant)
            and (stage != "rule" or r.get("epochs") == epochs)
            and r["seed"] < 2
        ]
        if not runs:
            continue
        window = "quarter"
        anb = [tail(r["lambda_trajectory"], window_of(r, window)) for r in runs if r["task"] == "AnB"]
        ana = [tail(r["lambda_trajectory"], window_of(r, window)) for r in runs if r["task"] == "AnA"]
        from probe.results.quality import settled_drift
        from probe.settings import lr_scale_sum

        drift = max(settled_drift(r["lambda_trajectory"], window_of(r, window)) for r in runs)
        top1 = statistics.fmean(tail(r["top1_trajectory"], window_of(r, window)) for r in runs if r["task"] == "AnB")
        steps, gate = runs[0]["steps"], runs[0]["gate_lr"]
        print(
            _row(
                [
                    f"{epochs} ({variant or 'rule'})",
                    steps,
                    f"{gate:.4g}",
                    f"{gate * lr_scale_sum('cosine', steps):.2f}",
                    _ms(anb),
                    _ms(ana),
                    f"{statistics.fmean(ana) - statistics.fmean(anb):+.3f}" if ana and anb else "—",
                    f"{drift:.3f}",
                    f"{top1:.3f}",
                ],
                markdown,
            )
        )


def print_small(records: list[dict], markdown: bool) -> None:
    print("\nthe small end: --train-size 10 (50 images, 2 steps an epoch, 40 steps), halves, seeds 0-2")
    print(
        _head(
            ["gate", "layer", "AnB λS (runs)", "AnA λS (runs)", "runs pinned at 0.000 or 1.000", "AnB top-1"], markdown
        )
    )
    for variant in ("rule", "cap"):
        for layer in ("conv1", "conv4", "fc"):
            runs = pick(records, stage="small", pair="halves", kind="quanta", layer=layer, variant=variant)
            if not runs:
                continue
            values = {
                task: [tail(r["lambda_trajectory"], window_of(r, "quarter")) for r in runs if r["task"] == task]
                for task in ("AnB", "AnA")
            }
            extreme = sum(v < 0.0005 or v > 0.9995 for vs in values.values() for v in vs)  # 0.000 / 1.000 shown
            top1 = statistics.fmean(
                tail(r["top1_trajectory"], window_of(r, "quarter")) for r in runs if r["task"] == "AnB"
            )
            gate = f"{variant} (peak {runs[0]['gate_lr']:.3g})"
            print(
                _row(
                    [
                        gate,
                        layer,
                        " ".join(f"{v:.3f}" for v in values["AnB"]),
                        " ".join(f"{v:.3f}" for v in values["AnA"]),
                        f"{extreme}/{sum(map(len, values.values()))}",
                        f"{top1:.3f}",
                    ],
                    markdown,
                )
            )


def print_cross(records: list[dict], markdown: bool) -> None:
    """Per pair, each figure's mean ± sd over the seeds (a seed counts where all 7 layers ran)."""
    print("\nwhen, not only what: within- and cross-domain pairs at 28x28 (AnB; mean ± sd over seeds)")
    print(
        _head(
            [
                "target",
                "pair",
                "seeds",
                "λS, mean over layers",
                "λS, mean over conv1-conv6",
                "λS fc",
                "Yosinski frozen, mean over layers",
                "Yosinski frozen fc",
                *[f"{lens}, mean" for lens in LENSES],
            ],
            markdown,
        )
    )
    for target, pairs in (
        ("fashion[5-9]", (("main", "halves"), ("cross", "digits→fashion"))),
        ("digits[5-9]", (("cross", "digits→digits"), ("cross", "fashion→digits"))),
    ):
        for stage, pair in pairs:
            runs = pick(records, stage=stage, pair=pair, kind="quanta", task="AnB", status="ok")
            runs = [r for r in runs if r.get("variant") is None and r.get("init") is None]
            if not runs:
                continue
            lam = _profiles(runs, "lambda_trajectory")
            frozen = _profiles(pick(records, stage=stage, pair=pair, kind="frozen"), "top1_trajectory")
            lens_record = pick(records, stage=stage, pair=pair, kind="lenses")
            lens_means = [
                statistics.fmean(lens_record[0]["values"][layer][lens] for layer in LAYERS) if lens_record else math.nan
                for lens in LENSES
            ]
            print(
                _row(
                    [
                        target,
                        pair,
                        len(lam),
                        _ms([statistics.fmean(p.values()) for p in lam]),
                        _ms([statistics.fmean(p[layer] for layer in LAYERS[:-1]) for p in lam]),
                        _ms([p["fc"] for p in lam]),
                        _ms([statistics.fmean(p.values()) for p in frozen]),
                        _ms([p["fc"] for p in frozen]),
                        *[f"{v:.3f}" for v in lens_means],
                    ],
                    markdown,
                )
            )


def _profiles(runs: list[dict], trajectory: str) -> list[dict[str, float]]:
    """One {layer: value averaged over the last quarter} per seed that has every layer."""
    per_seed: dict[int, dict[str, float]] = {}
    for r in runs:
        per_seed.setdefault(r["seed"], {})[r["layer"]] = tail(r[trajectory], window_of(r, "quarter"))
    return [profile for _, profile in sorted(per_seed.items()) if len(profile) == len(LAYERS)]


def print_inits(records: list[dict], markdown: bool) -> None:
    print("\nquestion 3 on fashion halves: inits (seeds 0-1; 0.9 is main's seeds 0-1)")
    print(_head(["task, init", "conv1", "conv4", "fc", "AnB top-1 (mean over the 3 layers)"], markdown))
    for task in ("AnB", "AnA"):
        for init in (0.9, 0.75, 0.5):
            stage = "main" if init == 0.9 else "inits"
            match = dict(stage=stage, pair="halves", kind="quanta", task=task)
            if init != 0.9:
                match["init"] = init
            cells = []
            top1 = []
            for layer in ("conv1", "conv4", "fc"):
                runs = [r for r in pick(records, layer=layer, **match) if r["seed"] < 2]
                cells.append(_ms([tail(r["lambda_trajectory"], window_of(r, "quarter")) for r in runs]))
                top1 += [tail(r["top1_trajectory"], window_of(r, "quarter")) for r in runs]
            print(_row([f"{task} {init}", *cells, f"{statistics.fmean(top1):.3f}" if top1 else "—"], markdown))


def print_summary(records: list[dict], markdown: bool = False) -> None:
    for r in (r for r in records if r["kind"] == "source"):
        print(f"source {r['name']}: {r['data']}, test top-1 {r['test_top1']:.4f}, {r['seconds'] / 60:.0f} min")
    print_main(records, markdown)
    print_rule(records, markdown)
    print_small(records, markdown)
    print_cross(records, markdown)
    print_inits(records, markdown)


if __name__ == "__main__":
    main()
