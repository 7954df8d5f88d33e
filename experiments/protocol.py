"""Which protocol makes λS a measurement? The experiment that chooses the digits defaults (issue 12).

One resumable command runs five stages and appends one JSON line per training run to ``--out``:

* ``coarse``: halves split (digits[0-4] → digits[5-9], control digits[0-4]), layers conv1, conv4, fc, seeds 0-1,
  12 epochs: the target's learning rate × the gate's learning rate × the gate's optimiser (Adam, as in the paper,
  or plain SGD) × augmentation, plus the target trained alone for each (lr, augmentation).
* ``final``: the best coarse protocol (ranked by :func:`rank_key`) on all 7 layers, both splits (halves and
  parity: digits[0,2,4,6,8] → digits[1,3,5,7,9]), seeds 0-2, with Yosinski frozen AnB per layer and the target
  alone.
* ``rule``: the best final protocol with 3× the epochs, once with the gate's learning rate divided by 3 (the
  rule: ``gate_lr × steps`` constant) and once unchanged, halves, fc, seeds 0-1.
* ``schedule``: the chosen final protocol with a cosine schedule on both learning rates (:func:`schedule_protocols`),
  as the final stage: all 7 layers, seeds 0-2, Yosinski and the target alone (``--splits``: halves was run).
* ``schedule-rule``: the chosen schedule protocol (gate peak 0.1) with 3× the epochs, once with the gate's peak lr
  divided by 3 (the budget rule) and once unchanged, halves, fc, seeds 0-1.

    python experiments/protocol.py                 # all stages, 2 worker processes of 1 thread each
    python experiments/protocol.py --stage coarse  # one stage
    python experiments/protocol.py --summary       # print the tables of docs/protocol.md from the JSONL

A re-run skips every unit already in the JSONL. docs/protocol.md reports the result.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

from _common import load, run_missing

SPLITS = {
    "halves": ("digits[0-4]", "digits[5-9]"),
    "parity": ("digits[0,2,4,6,8]", "digits[1,3,5,7,9]"),
}
ALL_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "fc")
COARSE_LAYERS = ("conv1", "conv4", "fc")
SOURCE_TRAINING = dict(epochs=12, lr=1e-3)  # how every source of this experiment is trained (the digits source)


def protocol(
    lr: float,
    gate_lr: float,
    gate_optimizer: str = "adam",
    augment: bool = False,
    epochs: int = 12,
    lr_schedule: str = "constant",
) -> dict:
    found = dict(lr=lr, gate_lr=gate_lr, gate_optimizer=gate_optimizer, augment=augment, epochs=epochs)
    return found if lr_schedule == "constant" else dict(found, lr_schedule=lr_schedule)  # old records lack it


def schedule_of(p: dict) -> str:
    return p.get("lr_schedule", "constant")


def coarse_protocols(extended: bool = False) -> list[dict]:
    """The coarse grid, pruned for time (docs/protocol.md says why): no lr 1e-3 × small gate lr (the gate-budget
    sweep had already shown λS pinned at its init there), SGD at lr 1e-4 only. ``extended`` (run after the final
    stage) adds augmentation, lr 1e-3 and 24-epoch runs, to see whether λS settles with longer training."""
    grid = [protocol(lr, g) for lr in (1e-4, 3e-4) for g in (0.01, 0.03, 0.1)]
    grid += [protocol(1e-4, g, "sgd") for g in (1.0, 3.0)]
    if extended:
        grid += [protocol(1e-3, 0.1), protocol(1e-4, 0.1, augment=True)]
        grid += [protocol(1e-4, 0.1, epochs=24), protocol(3e-4, 0.1, epochs=24)]
    return grid


def schedule_protocols() -> list[dict]:
    """Stage 4: the chosen final protocol (lr 3e-4, gate lr 0.1, 12 epochs) with both learning rates on a cosine
    schedule, once at the same peak gate lr (half the gate's budget) and once at the same budget (peak 0.2): does
    λS come to rest within 12 epochs, and what does that cost in separation?"""
    return [protocol(3e-4, 0.1, lr_schedule="cosine"), protocol(3e-4, 0.2, lr_schedule="cosine")]


def protocol_name(p: dict) -> str:
    aug = "aug" if p["augment"] else "noaug"
    cosine = "-cos" if schedule_of(p) == "cosine" else ""
    return f"lr{p['lr']:g}-{p['gate_optimizer']}{p['gate_lr']:g}-{aug}-e{p['epochs']}{cosine}"


# --------------------------------------------------------------------------------------------------
# Work units (run in worker processes)


def _settings(p: dict, seeds: int):
    from probe.settings import RunSettings

    return RunSettings(
        epochs=p["epochs"],
        lr=p["lr"],
        gate_lr=p["gate_lr"],
        gate_optimizer=p["gate_optimizer"],
        augment=p["augment"],
        lr_schedule=schedule_of(p),
        runs=seeds,
        init=(0.9,),
        device="cpu",
    )


def _source(split: str):
    from probe.engine.sources import cached_source
    from probe.settings import RunSettings

    model, _ = cached_source("paper-cnn", SPLITS[split][0], settings=RunSettings(**SOURCE_TRAINING))
    return model


def _context(p: dict, split: str, seeds: int):
    from probe.engine.prepare import prepare

    context = prepare(_source(split), SPLITS[split][1], settings=_settings(p, seeds), control=True).context
    return context


def run_unit(unit: dict) -> list[dict]:
    """Train what one unit asks for; return one record per training run."""
    import probe
    from probe.baselines.transfer import train_alone, train_transfer

    p, split, seeds, kind = unit["protocol"], unit["split"], unit["seeds"], unit["kind"]
    base = dict(stage=unit["stage"], protocol=protocol_name(p), **p, split=split, kind=kind, layer=unit.get("layer"))
    records = []
    if kind == "quanta":
        result = probe.measure(
            _source(split), unit["layer"], SPLITS[split][1], settings=_settings(p, seeds), control=True
        )
        for run in result.runs:
            records.append(
                dict(
                    base,
                    task=run.spec.task,
                    seed=run.spec.seed,
                    steps=run.steps,
                    status=run.status,
                    lambda_source=run.final.get("lambda_source"),
                    top1=run.final.get("top1"),
                    trajectory=[h["lambda_source"] for h in run.history],
                    top1_trajectory=[h["top1"] for h in run.history],
                )
            )
    else:
        context = _context(p, split, seeds)
        tasks = ("AnB", "AnA") if kind == "alone" else ("AnB",)
        for task in tasks:
            for seed in range(seeds):
                if kind == "alone":
                    outcome = train_alone(context, task, seed)
                else:
                    outcome = train_transfer(context, unit["layer"], task, seed, frozen=True)
                records.append(
                    dict(base, task=task, seed=seed, top1=outcome.top1, status="failed" if outcome.failure else "ok")
                )
    return records


# --------------------------------------------------------------------------------------------------
# Stages


def unit_key(unit: dict) -> tuple:
    return (unit["stage"], protocol_name(unit["protocol"]), unit["split"], unit["kind"], unit.get("layer"))


def record_key(record: dict) -> tuple:
    return (record["stage"], record["protocol"], record["split"], record["kind"], record["layer"])


def training_key(p: dict) -> tuple:
    """What the target's own training depends on: the target alone and Yosinski's runs (no gate) share it."""
    return (p["lr"], p["augment"], p["epochs"], schedule_of(p))


def units_for(stage: str, protocols: list[dict], splits, layers, seeds: int, yosinski: bool) -> list[dict]:
    """The stage's units: QUANTA per protocol; the target alone and Yosinski once per training (not per gate)."""
    trainings = {training_key(p): p for p in protocols}
    units = [
        dict(stage=stage, protocol=p, split=split, kind="alone", layer=None, seeds=seeds)
        for p in trainings.values()
        for split in splits
    ]
    for p in protocols:
        for split in splits:
            units += [
                dict(stage=stage, protocol=p, split=split, kind="quanta", layer=layer, seeds=seeds) for layer in layers
            ]
    for p in trainings.values() if yosinski else ():
        for split in splits:
            units += [
                dict(stage=stage, protocol=p, split=split, kind="yosinski", layer=layer, seeds=seeds)
                for layer in layers[:-1]
            ]
    return units


def trained_alike(records: list[dict], p: dict, stage: str, split: str, kind: str, **match) -> list[dict]:
    """The ``kind`` ("alone", "yosinski") records of ``stage`` and ``split`` whose training is ``p``'s."""
    found = _by(records, stage=stage, split=split, kind=kind, **match)
    return [r for r in found if training_key(r) == training_key(p)]


def run_units(units: list[dict], out: Path, jobs: int) -> None:
    run_missing(units, out, run_unit, key=unit_key, record_key=record_key, jobs=jobs, describe=describe)


def describe(record: dict) -> str:
    return f"{record['stage']} {record['protocol']} {record['split']} {record['kind']} {record['layer']}"


# --------------------------------------------------------------------------------------------------
# Analysis


def _by(records, **match) -> list[dict]:
    return [r for r in records if all(r.get(k) == v for k, v in match.items())]


def _tail_mean(values: list[float], last_epochs: int) -> float:
    return statistics.fmean(values[-last_epochs:])


def evaluate_protocol(records: list[dict], stage: str, name: str, split: str, last_epochs: int = 10) -> dict:
    """The quality measures of one protocol on one split (probe.results.quality does the arithmetic)."""
    from probe.results.quality import impairment, repeatability, separation, settled_drift, spearman

    quanta = _by(records, stage=stage, protocol=name, split=split, kind="quanta")
    layers = [layer for layer in ALL_LAYERS if _by(quanta, layer=layer)]
    per_task = {}
    for task in ("AnB", "AnA"):
        per_task[task] = {
            layer: [
                _tail_mean(r["trajectory"], last_epochs)
                for r in sorted(_by(quanta, layer=layer, task=task), key=lambda r: r["seed"])
            ]
            for layer in layers
        }
    sep = separation(per_task["AnA"], per_task["AnB"])
    drift = {
        layer: max(settled_drift(r["trajectory"], last_epochs) for r in _by(quanta, layer=layer)) for layer in layers
    }
    p = quanta[0]
    alone = trained_alike(records, p, stage, split, "alone")
    alone_top1 = statistics.fmean(r["top1"] for r in alone if r["task"] == "AnB") if alone else math.nan
    quanta_top1 = [
        statistics.fmean(_tail_mean(r["top1_trajectory"], last_epochs) for r in _by(quanta, layer=layer, task="AnB"))
        for layer in layers
    ]
    yos = {
        layer: statistics.fmean(r["top1"] for r in found)
        for layer in layers
        if (found := trained_alike(records, p, stage, split, "yosinski", layer=layer))
    }
    anb_mean = {layer: statistics.fmean(v) for layer, v in per_task["AnB"].items()}
    ana_mean = {layer: statistics.fmean(v) for layer, v in per_task["AnA"].items()}
    agreement = spearman([anb_mean[layer] for layer in yos], list(yos.values())) if len(yos) >= 3 else math.nan
    return dict(
        layers=layers,
        anb=anb_mean,
        ana=ana_mean,
        separation=sep,
        drift=drift,
        agreement=agreement,
        repeatability=repeatability(per_task["AnB"]),
        impairment=impairment(quanta_top1, alone_top1),
        alone_top1=alone_top1,
        quanta_top1=statistics.fmean(quanta_top1),
    )


def criteria(q: dict, drift_threshold: float = 0.05) -> dict[str, bool]:
    """Issue 12's acceptance criteria, where the layers needed were run."""
    found = {}
    later = [layer for layer in q["layers"] if layer != "conv1"]
    found["AnA ≥ 0.95 from conv2 on"] = all(q["ana"][layer] >= 0.95 for layer in later)
    if "conv1" in q["anb"]:
        found["AnB conv1 ≥ 0.95"] = q["anb"]["conv1"] >= 0.95
    if "fc" in q["anb"]:
        found["AnA fc − AnB fc ≥ 0.3"] = q["ana"]["fc"] - q["anb"]["fc"] >= 0.3
    if not math.isnan(q["agreement"]):
        found["ρ(AnB λS, Yosinski) ≥ 0.8"] = q["agreement"] >= 0.8
    found["all settled"] = all(d <= drift_threshold for d in q["drift"].values())
    found["impairment ≤ 0.02"] = q["impairment"] <= 0.02
    return found


def rank_key(q: dict) -> tuple:
    """Protocols with more criteria met first; then the larger fc separation in units of the runs' spread."""
    met = sum(criteria(q).values())
    fc = q["separation"].get("fc", {})
    return (met, min(fc.get("difference", 0.0), 0.6), fc.get("in_spread", 0.0))


def summary_table(
    records: list[dict], stage: str, splits=("halves",), last_epochs: int = 10
) -> list[tuple[dict, str, dict]]:
    names = list(dict.fromkeys(r["protocol"] for r in records if r["stage"] == stage and r["kind"] == "quanta"))
    rows = []
    for name in names:
        for split in splits:
            if _by(records, stage=stage, protocol=name, split=split, kind="quanta"):
                rows.append((evaluate_protocol(records, stage, name, split, last_epochs), name, dict(split=split)))
    return rows


def print_table(rows) -> None:
    for q, name, extra in rows:
        c = criteria(q)
        lam = " ".join(f"{layer}:{q['anb'][layer]:.3f}/{q['ana'][layer]:.3f}" for layer in q["layers"])
        fc = q["separation"].get("fc", {})
        print(
            f"{name:34s} {extra['split']:6s} AnB/AnA {lam} | fc sep {fc.get('difference', math.nan):+.3f} "
            f"({fc.get('in_spread', math.nan):.1f} sd) ρY {q['agreement']:.2f} rep {q['repeatability']:.2f} "
            f"drift max {max(q['drift'].values()):.3f} top1 {q['quanta_top1']:.3f} alone {q['alone_top1']:.3f} "
            f"| met {sum(c.values())}/{len(c)}: {', '.join(k for k, v in c.items() if not v) or 'all'}"
        )


def markdown_table(rows) -> str:
    """The table of docs/protocol.md: one row per protocol and split."""
    head = (
        "| protocol | split | AnB λS (conv1 / conv4 / fc) | AnA λS (conv1 / conv4 / fc) | fc AnA − AnB (in sd) "
        "| ρ Yosinski | repeat ρ | max drift | top-1 (QUANTA / alone) | criteria met |"
    )
    lines = [head, "|" + " --- |" * 10]
    for q, name, extra in rows:
        c = criteria(q)
        shown = [layer for layer in ("conv1", "conv4", "fc") if layer in q["anb"]]
        fc = q["separation"].get("fc", {})
        anb = " / ".join(f"{q['anb'][layer]:.3f}" for layer in shown)
        ana = " / ".join(f"{q['ana'][layer]:.3f}" for layer in shown)
        failed = [k for k, v in c.items() if not v]
        missed = f" (not: {'; '.join(failed)})" if failed else ""
        lines.append(
            f"| {name} | {extra['split']} | {anb} | {ana} "
            f"| {fc.get('difference', math.nan):+.3f} ({fc.get('in_spread', math.nan):.1f}) | {q['agreement']:.2f} "
            f"| {q['repeatability']:.2f} | {max(q['drift'].values()):.3f} "
            f"| {q['quanta_top1']:.3f} / {q['alone_top1']:.3f} | {sum(c.values())}/{len(c)}{missed} |"
        )
    return "\n".join(lines)


def layer_table(records: list[dict], stage: str, name: str, split: str, last_epochs: int = 10) -> str:
    """Per layer, for one protocol and split: λS of AnB and AnA (mean ± std over seeds), their separation,
    Yosinski's frozen AnB top-1, the largest drift and the QUANTA AnB top-1; then the protocol's measures."""
    q = evaluate_protocol(records, stage, name, split, last_epochs)
    quanta = _by(records, stage=stage, protocol=name, split=split, kind="quanta")
    lines = [
        f"**{name}, {split}**",
        "",
        "| layer | AnB λS | AnA λS | AnA − AnB (in sd) | Yosinski AnB frozen top-1 | max drift | AnB top-1 |",
        "|" + " --- |" * 7,
    ]
    for layer in q["layers"]:
        cells = []
        for task in ("AnB", "AnA"):
            values = [_tail_mean(r["trajectory"], last_epochs) for r in _by(quanta, layer=layer, task=task)]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.fmean(values):.3f} ± {sd:.3f}")
        sep = q["separation"][layer]
        yos = trained_alike(records, quanta[0], stage, split, "yosinski", layer=layer)
        yos_cell = f"{statistics.fmean(r['top1'] for r in yos):.3f}" if yos else "—"
        top1 = statistics.fmean(
            _tail_mean(r["top1_trajectory"], last_epochs) for r in _by(quanta, layer=layer, task="AnB")
        )
        lines.append(
            f"| {layer} | {cells[0]} | {cells[1]} | {sep['difference']:+.3f} ({sep['in_spread']:.1f}) | {yos_cell} "
            f"| {q['drift'][layer]:.3f} | {top1:.3f} |"
        )
    c = criteria(q)
    lines += [
        "",
        f"ρ(AnB λS, Yosinski frozen) {q['agreement']:.2f} · repeatability ρ {q['repeatability']:.2f} · "
        f"QUANTA top-1 {q['quanta_top1']:.3f} vs alone {q['alone_top1']:.3f} (impairment {q['impairment']:+.3f}) · "
        f"criteria met {sum(c.values())}/{len(c)}"
        + (f" (not: {'; '.join(k for k, v in c.items() if not v)})" if not all(c.values()) else ""),
    ]
    return "\n".join(lines)


def best_protocols(records: list[dict], stage: str, n: int, splits=("halves",)) -> list[dict]:
    scores: dict[str, list[tuple]] = {}
    for q, name, _ in summary_table(records, stage, splits):
        scores.setdefault(name, []).append(rank_key(q))
    ranked = sorted(scores, key=lambda name: min(scores[name]), reverse=True)[:n]
    by_name = {r["protocol"]: r for r in records if r["kind"] == "quanta"}
    return [
        protocol(
            by_name[name]["lr"],
            by_name[name]["gate_lr"],
            by_name[name]["gate_optimizer"],
            by_name[name]["augment"],
            by_name[name]["epochs"],
            schedule_of(by_name[name]),
        )
        for name in ranked
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("protocol.jsonl"))
    parser.add_argument(
        "--stage", choices=("all", "coarse", "final", "rule", "schedule", "schedule-rule"), default="all"
    )
    parser.add_argument("--jobs", type=int, default=2, help="worker processes, one thread each")
    parser.add_argument("--summary", action="store_true", help="print the tables from --out and stop")
    parser.add_argument("--markdown", action="store_true", help="with --summary: markdown tables")
    parser.add_argument("--finalists", type=int, default=1, help="final: how many coarse protocols (default: 1)")
    parser.add_argument("--splits", default=",".join(SPLITS), help="final: the splits (default: all)")
    parser.add_argument("--extended", action="store_true", help="coarse: also augmentation and lr 1e-3")
    parser.add_argument(
        "--last-epochs", type=int, default=10, help="epochs averaged in the printed tables (default: 10)"
    )
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    if not args.summary:
        for split in SPLITS:  # train (or find) the sources once, before the workers need them
            _source(split)
    stages = ("coarse", "final", "rule", "schedule", "schedule-rule") if args.stage == "all" else (args.stage,)
    for stage in stages:
        records = load(args.out)
        if stage == "coarse":
            units = units_for("coarse", coarse_protocols(args.extended), ["halves"], COARSE_LAYERS, 2, yosinski=False)
        elif stage == "final":
            # the default one-run scan must stay under 2 minutes on 2 cores: only 12-epoch protocols can be the default
            short = [r for r in records if r.get("epochs") == 12]
            finalists = best_protocols(short, "coarse", args.finalists)
            units = units_for("final", finalists, args.splits.split(","), ALL_LAYERS, 3, yosinski=True)
        elif stage == "schedule":
            units = units_for("schedule", schedule_protocols(), args.splits.split(","), ALL_LAYERS, 3, yosinski=True)
        elif stage == "schedule-rule":
            chosen = dict(schedule_protocols()[0], epochs=36)
            rule = [dict(chosen, gate_lr=chosen["gate_lr"] / 3), chosen]
            units = units_for("schedule-rule", rule, ["halves"], ("fc",), 2, yosinski=False)
        else:
            best = best_protocols(records, "final", 1, splits=tuple(SPLITS))[0]
            longer = dict(best, epochs=best["epochs"] * 3)
            units = units_for(
                "rule",
                [dict(longer, gate_lr=best["gate_lr"] / 3), longer],
                ["halves"],
                ("fc",),
                2,
                yosinski=False,
            )
        if not args.summary:
            run_units(units, args.out, args.jobs)
        print(f"== {stage}")
        rows = summary_table(load(args.out), stage, tuple(SPLITS), args.last_epochs)
        print(markdown_table(rows)) if args.markdown else print_table(rows)
        if args.markdown and stage == "final":
            for _, name, extra in rows:
                print("\n" + layer_table(load(args.out), stage, name, extra["split"], args.last_epochs))


if __name__ == "__main__":
    main()
