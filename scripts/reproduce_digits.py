#!/usr/bin/env python
"""Reproduce the QUANTA paper's protocol (Orhand et al., KES 2021) on the embedded digits data.

The paper's protocol, scaled to a laptop: a paper CNN (full width) is trained on task A, then λS is
measured at each of its 7 layers for task B (AnB) and for A itself (the AnA control), with the three λS
inits 0.9 / 0.75 / 0.5 and several runs (seeds) per layer and init; every run's final figures are the mean
of its last 10 epochs. Beside λS, on the same data, seeds and trainer: Yosinski et al.'s transfer accuracy
(frozen AnB / AnA, fine-tuned AnB+ / AnA+), LogME and H-score per layer, and the target trained alone
(for the paper's question 1: does a QUANTA layer impair learning?).

Two splits of the ten digits: ``halves`` (A = 0-4, B = 5-9) and ``parity`` (A = even, B = odd).
Each split gets a results folder in the layout of ``probe scan --out`` (``probe report DIR`` reads it);
``summary.json`` and ``summary.md`` beside them gather the figures for docs/reproduction.md.

    python scripts/reproduce_digits.py --out results/reproduction            # the full protocol
    python scripts/reproduce_digits.py --smoke --out /tmp/smoke              # a check that it runs (a minute)

An interrupted run resumes where it stopped when started again with the same options (the QUANTA runs;
the baselines are recomputed). The baselines do not depend on λS's init: to add inits to a finished run, run
them with ``--baselines none --baselines-from EARLIER_OUT`` (checked: same source, layers, seeds, settings).
See docs/reproduction.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from probe.results import strict_json
from probe.util.allocator import retain_freed_memory

SPLITS = {
    "halves": ("digits[0-4]", "digits[5-9]"),
    "parity": ("digits[0,2,4,6,8]", "digits[1,3,5,7,9]"),
}
PAPER_INITS = "0.9,0.75,0.5"
SMOKE = {"epochs": 1, "runs": 1, "layers": "conv1,fc", "inits": "0.9", "width": 0.25}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, default=Path("results/reproduction"), help="folder for the results (default: %(default)s)"
    )
    parser.add_argument(
        "--splits", default=",".join(SPLITS), help=f"comma-separated, of {', '.join(SPLITS)} (default: all)"
    )
    parser.add_argument(
        "--epochs", type=int, help="epochs of every training, source included (default: 12, the digits default)"
    )
    parser.add_argument("--source-epochs", type=int, help="epochs of the source's training (default: --epochs)")
    parser.add_argument(
        "--source-seed",
        type=int,
        default=1000,
        help="seed of the source's training (default: %(default)s, apart from the run seeds 0..runs-1, so that no "
        "target starts from the source's own initial weights)",
    )
    parser.add_argument("--runs", type=int, help="runs (seeds) per layer, init and task (default: 5)")
    parser.add_argument("--layers", help="comma-separated layers (default: all 7: conv1..conv6, fc)")
    parser.add_argument("--inits", help=f"comma-separated λS inits (default: {PAPER_INITS})")
    parser.add_argument("--width", type=float, help="paper-cnn width (default: 1.0, the paper's CNN)")
    parser.add_argument(
        "--baselines", default="yosinski,logme,hscore", help="comma-separated, or 'none' (default: %(default)s)"
    )
    parser.add_argument(
        "--baselines-from",
        type=Path,
        help="take the baselines and the target alone from an earlier run's --out folder (same source, layers, "
        "seeds and training settings; the inits may differ, the baselines do not depend on them) instead of "
        "training them again; use with --baselines none",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads per process (default: 1 per split with several workers, else torch's)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="splits run side by side in separate processes (default: %(default)s)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="QUANTA runs trained in parallel per split (default: 1)")
    parser.add_argument("--fresh", action="store_true", help="discard earlier results in --out and start over")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a tiny check that everything runs: " + ", ".join(f"{k}={v}" for k, v in SMOKE.items()),
    )
    args = parser.parse_args(argv)
    defaults = SMOKE if args.smoke else {"epochs": 12, "runs": 5, "layers": None, "inits": PAPER_INITS, "width": 1.0}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.splits = [name.strip() for name in args.splits.split(",") if name.strip()]
    unknown = [name for name in args.splits if name not in SPLITS]
    if unknown:
        parser.error(f"unknown split(s) {', '.join(unknown)}; choose from {', '.join(SPLITS)}")
    args.baselines = (
        [] if args.baselines.strip().lower() == "none" else [b.strip() for b in args.baselines.split(",") if b.strip()]
    )
    if args.baselines_from is not None and args.baselines:
        parser.error("--baselines-from replaces the baselines: add --baselines none")
    args.inits = tuple(float(v) for v in args.inits.split(","))
    args.layers = [v.strip() for v in args.layers.split(",")] if args.layers else None
    return args


def write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(strict_json(data), indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)


# -------------------------------------------------------------------------------------- one split


class Printer:
    """Progress as plain lines, one per finished training, with an ETA over the whole split."""

    def __init__(self, split: str, total_epochs: int) -> None:
        self.split, self.total, self.done, self.started = split, total_epochs, 0, time.perf_counter()

    def __call__(self, event) -> None:
        self.done += 1
        if event.epoch < event.epochs:
            return
        elapsed = time.perf_counter() - self.started
        eta = elapsed / self.done * max(0, self.total - self.done)
        spec, metrics = event.spec, event.metrics
        what = (
            "source"
            if spec is None
            else f"{spec.task} {spec.layer or '-'}"
            + (f" init {spec.init:g}" if spec.task in ("AnB", "AnA") else "")
            + f" seed {spec.seed}"
        )
        lam = f" λS {metrics['lambda_source']:.3f}" if "lambda_source" in metrics else ""
        print(
            f"[{self.split}] {what}: top-1 {metrics.get('top1', math.nan):.3f}{lam}"
            f"  ({elapsed / 60:.1f} min, ~{eta / 60:.0f} min left)",
            flush=True,
        )


# What the baselines depend on: everything of the QUANTA settings but the gate and λS's inits.
BASELINE_SETTINGS = (
    "epochs", "batch_size", "lr", "weight_decay", "lr_schedule", "runs", "seed", "augment", "last_epochs",
)  # fmt: skip


def borrowed_baselines(folder: Path, name: str, settings, layers: list[str]) -> dict:
    """The baselines (``alone`` included) of split ``name`` in an earlier run's ``folder``, after checking that
    they were computed with the same layers and training settings; SystemExit with one line otherwise."""
    from probe.errors import ProbeError
    from probe.results.reading import load_folder

    try:
        earlier, _ = load_folder(folder / name)
    except ProbeError as error:
        raise SystemExit(f"--baselines-from {folder}: {error}") from None
    baselines = (earlier.extras or {}).get("baselines") or {}
    mine = settings.to_dict()
    differ = [k for k in BASELINE_SETTINGS if earlier.settings.get(k) != mine[k]]
    if earlier.layers != layers:
        differ.append("layers")
    if differ or not baselines.get("alone"):
        why = f"other {', '.join(differ)}" if differ else "no baselines there"
        raise SystemExit(f"--baselines-from {folder / name}: {why}; run the baselines here instead")
    return {"baselines": baselines, "source_sha256": earlier.source.get("sha256"), "folder": str(folder / name)}


def run_split(name: str, args: argparse.Namespace) -> dict:
    """Source, scan with baselines, figures and the target alone for one split; returns its summary."""
    import torch

    import probe
    from probe.baselines import train_alone
    from probe.engine.prepare import prepare
    from probe.engine.progress import ProgressEvent
    from probe.engine.sources import cached_source, source_settings
    from probe.models.checkpoint import save_checkpoint, source_info
    from probe.report.figures import comparison_figure
    from probe.results import RunSpec
    from probe.settings import DIGITS_PRESET, DIGITS_SOURCE_PRESET, RunSettings

    if args.threads:
        torch.set_num_threads(args.threads)
    task_a, task_b = SPLITS[name]
    settings = RunSettings(
        **{**DIGITS_PRESET, "epochs": args.epochs},
        runs=args.runs,
        init=args.inits,
        device=args.device,
        jobs=args.jobs,
    )
    # The source's settings as `probe train` / `probe scan` make them, so the source cache is shared with the CLI.
    trained_with = source_settings(settings.with_(**DIGITS_SOURCE_PRESET))
    trained_with = trained_with.with_(epochs=args.source_epochs or args.epochs, seed=args.source_seed)
    layers = args.layers or ["conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "fc"]
    borrowed = borrowed_baselines(args.baselines_from, name, settings, layers) if args.baselines_from else None
    tasks = 2  # AnB and the AnA control
    yosinski = "yosinski" in args.baselines
    per_run = len(layers) * tasks * settings.runs
    total_epochs = settings.epochs * (
        per_run * len(settings.init) + (2 * per_run if yosinski else 0) + (0 if borrowed else tasks * settings.runs)
    )
    printer = Printer(name, total_epochs + trained_with.epochs)
    started = time.perf_counter()

    print(
        f"[{name}] A = {task_a}, B = {task_b}: {total_epochs // settings.epochs} trainings of {settings.epochs} epochs",
        flush=True,
    )
    source, reused = cached_source(
        "paper-cnn", task_a, settings=trained_with, arch_options={"width": args.width}, progress=printer
    )
    info = source_info(source)
    if borrowed and borrowed["source_sha256"] != info.sha256:
        raise SystemExit(f"--baselines-from {borrowed['folder']}: another source (seed or epochs differ); drop it")
    print(f"[{name}] source {'reused' if reused else 'trained'}: test top-1 {info.test_top1:.4f}", flush=True)
    sources = args.out / "sources"
    sources.mkdir(parents=True, exist_ok=True)
    save_checkpoint(source, info, sources / f"{name}-source.pt")

    folder = args.out / name
    measurement = probe.scan(
        source,
        layers,
        task_b,
        settings=settings,
        control=True,
        source_data=task_a,
        out=folder,
        fresh=args.fresh,
        baselines=args.baselines,
        progress=printer,
    )
    if borrowed:  # for the figures and the summary (results.json, already written, keeps this run's own)
        measurement.extras["baselines"] = borrowed["baselines"]
    try:
        from probe.report.figures import write_figures

        write_figures(measurement, folder)
    except ImportError:
        if args.baselines:
            comparison_figure(measurement, folder / "comparison.png")

    # The target trained alone, same settings and seeds (question 1); the Yosinski baseline already has it.
    alone = measurement.extras.get("baselines", {}).get("alone")
    if not alone:
        context = prepare(source, task_b, settings=settings, control=True, source_data=task_a).context
        alone = {}
        for task in context.tasks:
            values = []
            for seed in range(settings.seed, settings.seed + settings.runs):
                spec = RunSpec("", 0.0, f"{task}_alone", seed)
                on_epoch = lambda e, spec=spec: printer(ProgressEvent(spec, e.epoch, e.epochs, e.metrics, 0, 1))  # noqa: E731
                values.append(train_alone(context, task, seed, on_epoch).top1)
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
            alone[task] = {"mean": mean, "std": std, "runs": len(values), "values": values}
    summary = summarise(name, measurement, alone, time.perf_counter() - started)
    if borrowed:
        summary["baselines_from"] = borrowed["folder"]
    write_json(args.out / f"{name}.summary.json", summary)
    return summary


def summarise(name: str, measurement, alone: dict, seconds: float) -> dict:
    """The figures the write-up needs, per task, init and layer."""
    task_a, task_b = SPLITS[name]
    per_task: dict = {}
    for s in measurement.summaries:
        entry = per_task.setdefault(s.task, {}).setdefault(f"{s.init:g}", {})
        entry[s.layer] = {
            "lambda_source": {"mean": s.mean["lambda_source"], "std": s.std["lambda_source"]},
            "top1": {"mean": s.mean["top1"], "std": s.std["top1"]},
            "ok_runs": s.ok_runs,
        }
    question1 = {}
    for task, inits in per_task.items():
        reference = alone.get(task, {}).get("mean", math.nan)
        for init, layers in inits.items():
            average = sum(v["top1"]["mean"] for v in layers.values()) / len(layers)
            question1[f"{task} init {init}"] = {
                "quanta_top1_over_layers": average,
                "alone_top1": reference,
                "difference": average - reference,
            }
    return {
        "split": name,
        "A": task_a,
        "B": task_b,
        "source_test_top1": measurement.source.get("test_top1"),
        "settings": measurement.settings,
        "layers": measurement.layers,
        "quanta": per_task,
        "alone": alone,
        "question1": question1,
        "baselines": {k: v for k, v in measurement.extras.get("baselines", {}).items() if k != "alone"},
        "seconds": seconds,  # this invocation's wall time (short when it resumed finished runs)
        "quanta_run_seconds": sum(run.seconds for run in measurement.runs),  # every QUANTA run's own time
    }


# -------------------------------------------------------------------------------------- the write-up


def fmt(entry, digits: int = 3) -> str:
    if entry is None:
        return "—"
    if isinstance(entry, dict):
        mean, std = entry.get("mean"), entry.get("std")
        if mean is None or (isinstance(mean, float) and not math.isfinite(mean)):
            return "—"
        return (
            f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None and math.isfinite(std) else f"{mean:.{digits}f}"
        )
    return f"{entry:.{digits}f}" if isinstance(entry, (int, float)) and math.isfinite(entry) else "—"


def _gate(settings: dict) -> str:
    """How the gate's learning rate was set: given, from the gate budget, or = lr (the paper)."""
    if settings.get("gate_lr"):
        return f"gate lr {settings['gate_lr']:g}"
    if settings.get("gate_budget"):
        return f"gate budget {settings['gate_budget']:g}"
    return f"gate lr = lr {settings['lr']:g}"


def markdown(summaries: list[dict]) -> str:
    lines = ["# QUANTA on digits: reproduction summary", ""]
    for s in summaries:
        inits = list(s["quanta"].get("AnB", {}))
        first = inits[0] if inits else None
        per_layer = s["baselines"].get("per_layer", {})
        keys = list(dict.fromkeys(k for row in per_layer.values() for k in row))
        settings = s["settings"]
        lines += [
            f"## {s['split']}: A = {s['A']}, B = {s['B']}",
            "",
            f"paper-cnn, source test top-1 {fmt(s['source_test_top1'], 4)}; {settings['runs']} runs × "
            f"{settings['epochs']} epochs "
            f"(lr {settings['lr']:g}, {settings.get('lr_schedule', 'constant')}, {_gate(settings)}), "
            "finals = mean of the last "
            f"{settings['last_epochs']} epochs; "
            f"QUANTA runs {s.get('quanta_run_seconds', s['seconds']) / 60:.0f} core-min.",
            "",
        ]
        header = ["layer"] + [f"λS AnB {i}" for i in inits] + [f"top-1 AnB {first}"]
        header += [f"λS AnA {i}" for i in inits] + [f"top-1 AnA {first}"] + keys
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for layer in s["layers"]:
            row = [layer]
            for task in ("AnB", "AnA"):
                cells = s["quanta"].get(task, {})
                row += [fmt(cells.get(i, {}).get(layer, {}).get("lambda_source")) for i in inits]
                row.append(fmt(cells.get(first, {}).get(layer, {}).get("top1")))
            row += [fmt(per_layer.get(layer, {}).get(k)) for k in keys]
            lines.append("| " + " | ".join(row) + " |")
        if s.get("baselines_from"):
            origin = s["baselines_from"]
            lines += ["", f"Baselines and the target alone from `{origin}` (same source, seeds and settings)."]
        lines += [
            "",
            "Target trained alone (no transfer): " + ", ".join(f"{t} {fmt(v)}" for t, v in s["alone"].items()),
            "",
        ]
        lines += ["Question 1, mean QUANTA top-1 over layers vs the target alone:", ""]
        lines += [
            f"- {k}: {fmt(v['quanta_top1_over_layers'])} vs {fmt(v['alone_top1'])} (difference {fmt(v['difference'])})"
            for k, v in s["question1"].items()
        ]
        correlations = s["baselines"].get("correlations", {})
        if correlations:
            lines += ["", "Rank correlation of λS (init " + f"{first}) with each baseline over layers:", ""]
            lines += [
                f"- {k}: Spearman {fmt(c.get('spearman'))}, Kendall τb {fmt(c.get('kendall'))}"
                for k, c in correlations.items()
            ]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    retain_freed_memory()  # this script's processes are ours, as the probe command's are
    args.out.mkdir(parents=True, exist_ok=True)
    if args.runs < 5 and not args.smoke:
        print(f"note: {args.runs} runs per layer; the protocol asks for at least 5", file=sys.stderr)
    workers = max(1, min(args.workers, len(args.splits)))
    if workers == 1:
        summaries = [run_split(name, args) for name in args.splits]
    else:
        # One process per split (small convolutions on 8×8 images use one core far better than two).
        argv = list(sys.argv[1:] if argv is None else argv)
        children = []
        for name in args.splits:
            command = [
                sys.executable,
                __file__,
                *argv,
                "--splits",
                name,
                "--workers",
                "1",
                "--threads",
                str(args.threads or 1),
            ]
            log = open(args.out / f"{name}.log", "w")
            print(f"split {name}: running in process, log in {log.name}", flush=True)
            children.append((name, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log))
        failed = []
        for name, child, log in children:
            if child.wait() != 0:
                failed.append(name)
            log.close()
        if failed:
            print(f"split(s) {', '.join(failed)} failed: see their .log in {args.out}", file=sys.stderr)
            return 1
        summaries = [json.loads((args.out / f"{name}.summary.json").read_text()) for name in args.splits]
        summaries = [strict_json(s) for s in summaries]
    write_json(args.out / "summary.json", summaries)
    (args.out / "summary.md").write_text(markdown([strict_json(s) for s in summaries]))
    print(f"done: {args.out / 'summary.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
