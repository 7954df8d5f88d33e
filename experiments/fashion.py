"""Does λS measure something beyond 8×8 digits? The `default` preset on Fashion-MNIST (issue 22).

One resumable command trains the sources, then runs every unit of work (one training run each) in worker processes
of one thread, and appends one JSON line per training run to ``--out`` (λS and top-1 after every epoch, so any
averaging window is recomputed without training). Stages:

* ``main``: paper-cnn sources (width 0.25) trained on the whole training half of ``fashion[0-4]`` (halves) and
  ``fashion[0,2,4,6,8]`` (parity); targets with the settings a user gets for fashion (the ``default`` preset:
  lr 1e-4, weight decay 1e-6, batch 32, augmentation, cosine schedule, gate budget 13.85), sized by
  ``--epochs 20 --train-size 640`` (640 images per class, 100 steps per epoch, 2,000 steps per run); all 7
  layers, AnB and AnA, seeds 0-2; Yosinski's frozen AnB transfer per layer; the target alone; the lenses.
* ``rule``: the budget rule over a 4× range of steps (1,000 to 4,000: 10 and 40 epochs), halves, fc, AnB and
  AnA, seeds 0-1: the gate budget kept (the rule) and, at 40 epochs, the 20-epoch run's gate lr kept instead.
* ``small``: the small end, ``--train-size 10`` (50 images, 2 steps per epoch, 40 steps), halves, conv1, conv4,
  fc, AnB and AnA, seeds 0-2: the budget rule as it is (peak gate lr 0.68) against the gate lr capped at 0.1.
* ``cross``: when, not only what: every pair of {digits[0-4], fashion[0-4]} sources and {digits[5-9],
  fashion[5-9]} targets at one input, 28×28 grey (digits resized), AnB, all 7 layers, seeds 0-2, with Yosinski's
  frozen transfer, the target alone and the lenses; each target with its own preset (digits: ``digits``).
* ``inits``: the paper's question 3 on fashion halves: inits 0.75 and 0.5, conv1, conv4, fc, AnB and AnA,
  seeds 0-1.

    python experiments/fashion.py                     # everything missing, 2 workers (resumable)
    python experiments/fashion.py --stage main        # one stage (sources first, always)
    python experiments/fashion.py --summary           # the tables of docs/protocol.md from the JSONL

Sources are checkpoints in ``--results`` (default results/fashion), reused when present. The Debian package
``dataset-fashion-mnist`` (or ``--data-dir`` / ``$PROBE_DATA``) provides the data.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from pathlib import Path

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
        peak = 13.85 / ((EPOCHS * 100 + 1) / 2)  # the 20-epoch run's peak gate lr (2,000 steps)
        for variant, epochs, gate_lr in (("rule", 10, None), ("rule", 40, None), ("same-lr", 40, peak)):
            for seed in range(2):
                for task in ("AnB", "AnA"):
                    units += [
                        unit(stage, "halves", "quanta", task=task, layer="fc", seed=seed, variant=variant,
                             epochs=epochs, gate_lr=gate_lr)
                    ]  # fmt: skip
    elif stage == "small":
        for variant, gate_lr in (("rule", None), ("cap", SMALL_CAP)):
            for seed in range(SEEDS):
                for layer in ("conv1", "conv4", "fc"):
                    units += [
                        unit(stage, "halves", "quanta", task=task, layer=layer, seed=seed, variant=variant,
                             train_size=10, gate_lr=gate_lr)
                        for task in ("AnB", "AnA")
                    ]  # fmt: skip
    elif stage == "cross":
        for pair in ("digits→fashion", "fashion→digits", "digits→digits"):
            for seed in range(SEEDS):
                if pair != "digits→fashion":  # the fashion target alone is main's (same task, settings, seeds)
                    units += [unit(stage, pair, "alone", seed=seed)]
                for layer in LAYERS:
                    units += [unit(stage, pair, "quanta", layer=layer, seed=seed)]
                    units += [unit(stage, pair, "frozen", layer=layer, seed=seed)]
            units += [unit(stage, pair, "lenses")]
    elif stage == "inits":
        for init in (0.75, 0.5):
            for seed in range(2):
                for layer in ("conv1", "conv4", "fc"):
                    units += [
                        unit(stage, "halves", "quanta", task=task, layer=layer, seed=seed, init=init)
                        for task in ("AnB", "AnA")
                    ]
    return units


STAGES = ("main", "rule", "small", "cross", "inits")


def unit_key(u: dict) -> str:
    fields = ("stage", "pair", "kind", "task", "layer", "seed", "variant", "epochs", "gate_lr", "train_size", "init")
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
    return dict(kind="source", name=name, data=spec["data"], test_top1=info.test_top1, sha256=info.sha256,
                settings=settings.to_dict(), seconds=time.perf_counter() - started)  # fmt: skip


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
    return scan_settings(target, **given)


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
            dict(base, status=run.status, steps=run.steps, gate_lr=run.gate_lr, seconds=run.seconds,
                 lambda_trajectory=[h["lambda_source"] for h in run.history],
                 top1_trajectory=[h["top1"] for h in run.history])
        ]  # fmt: skip
    if u["kind"] in ("frozen", "alone"):
        if u["kind"] == "frozen":
            outcome = train_transfer(context, u["layer"], u["task"], u["seed"], frozen=True)
        else:
            outcome = train_alone(context, u["task"], u["seed"])
        return [
            dict(base, status="failed" if outcome.failure else "ok", seconds=time.perf_counter() - started,
                 top1_trajectory=[h["top1"] for h in outcome.history])
        ]  # fmt: skip
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


def _worker_init(results: str) -> None:
    import torch

    import probe

    global _RESULTS
    _RESULTS = Path(results)
    torch.set_num_threads(1)
    probe.retain_freed_memory()


def load(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_units(units: list[dict], out: Path, results: Path, jobs: int) -> None:
    done = {unit_key(r) for r in load(out)}
    todo = [u for u in units if unit_key(u) not in done]
    print(f"{len(units) - len(todo)} of {len(units)} units already done; running {len(todo)}", flush=True)
    if not todo:
        return
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with context.Pool(jobs, initializer=_worker_init, initargs=(str(results),), maxtasksperchild=8) as pool:
        for i, records in enumerate(pool.imap_unordered(run_unit, todo), 1):
            with out.open("a") as handle:
                handle.write("".join(json.dumps(r) + "\n" for r in records))
                handle.flush()
                os.fsync(handle.fileno())
            r = records[0]
            where = " ".join(str(r.get(k)) for k in ("stage", "pair", "kind", "task", "layer", "seed") if r.get(k))
            elapsed = time.perf_counter() - started
            eta = elapsed / i * (len(todo) - i)
            print(f"[{i}/{len(todo)} {elapsed / 60:.0f} min, ~{eta / 60:.0f} min left] {where}", flush=True)


def sources_needed(stages: list[str]) -> list[str]:
    pairs = {u["pair"] for stage in stages for u in stage_units(stage)}
    return sorted({PAIRS[pair][0] for pair in pairs})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=STAGES, action="append", help="stages to run (default: all, in order)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".jsonl"))
    parser.add_argument("--results", type=Path, default=_RESULTS, help="where the source checkpoints go")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    stages = args.stage or list(STAGES)
    recorded = {r["pair"] for r in load(args.out) if r["kind"] == "source"}
    missing = [name for name in sources_needed(stages) if name not in recorded]
    run_units([unit("sources", name, "source") for name in missing], args.out, args.results, args.jobs)
    for stage in stages:
        run_units(stage_units(stage), args.out, args.results, args.jobs)


if __name__ == "__main__":
    main()
