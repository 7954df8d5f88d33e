"""Does λS rank the layers as Yosinski's frozen transfer does, whatever the source? (issue 12's agreement criterion)

The criterion was judged on one source per split: the one ``probe scan`` trains by default (``--seed 0``). This
experiment runs the default scan with Yosinski's baselines on six sources per split, ``--seed`` 0–5 (the seed
trains the source and seeds the runs), exactly as a user would:

    probe scan --seed S --runs 3 --baselines yosinski [--source-data 'digits[0,2,4,6,8]' --target 'digits[1,3,5,7,9]']

and records, per (split, seed), the per-run λS, QUANTA top-1 and Yosinski frozen accuracy of every layer in
``--out`` (JSONL), then prints, per source, the agreement ρ and what bounds it: how well the reference repeats over
its own runs, the highest ρ any λS profile could reach against that reference if it falls with depth, or keeps
conv1 and conv2 whole as every measured profile does (λS ≥ 0.98 there), and ρ with the reference's differences
below one test image read as ties. Last, it trains Yosinski's frozen conv1 and conv2 again on the default halves
source at 12 and at 36 epochs (is the reference's conv1 < conv2 a matter of training length?).

    python experiments/agreement.py                           # run what is missing (resumable), record, print
    python experiments/agreement.py --summary --markdown      # the table of docs/protocol.md from the JSONL

A scan folder that is complete is read, not re-run; an interrupted one resumes (``probe scan`` resumes its folder).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from _common import load, tied_below

SPLITS = {
    "halves": (),
    "parity": ("--source-data", "digits[0,2,4,6,8]", "--target", "digits[1,3,5,7,9]"),
}
RUNS = 3
ONE_TEST_IMAGE = 1 / 180  # the digits test splits have 179 (halves) and 181 (parity) images


def folder_of(results: Path, split: str, seed: int) -> Path:
    return results / f"seed{seed}-{split}"


def complete(folder: Path) -> dict | None:
    """The folder's results.json if every run and every Yosinski baseline is in it, else None."""
    path = folder / "results.json"
    if not path.exists():
        return None
    document = json.loads(path.read_text())
    per_layer = document.get("extras", {}).get("baselines", {}).get("per_layer", {})
    ok_runs = [r for r in document["runs"] if r["status"] == "ok"]
    if len(ok_runs) < RUNS * len(document["layers"]) or any(
        "AnB_frozen" not in per_layer.get(layer, {}) for layer in document["layers"]
    ):
        return None
    return document


def scan(results: Path, split: str, seed: int) -> tuple[str, int]:
    """Run (or resume) the default scan of one source in a subprocess of one thread, as each default worker has."""
    folder = folder_of(results, split, seed)
    if complete(folder) is None:
        command = [sys.executable, "-m", "probe", "scan", "--seed", str(seed), "--runs", str(RUNS)]
        command += ["--baselines", "yosinski", *SPLITS[split], "--out", str(folder)]
        log = folder.with_suffix(".log")
        with log.open("a") as handle:
            subprocess.run(
                command, check=True, stdout=handle, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1")
            )
    return split, seed


def record_of(document: dict, split: str, seed: int) -> dict:
    layers = document["layers"]
    runs = sorted(
        (r for r in document["runs"] if r["status"] == "ok" and r["spec"]["task"] == "AnB"),
        key=lambda r: r["spec"]["seed"],
    )
    per_layer = document["extras"]["baselines"]["per_layer"]
    return dict(
        split=split,
        seed=seed,
        source_sha256=document["source"]["sha256"],
        settings={
            k: document["settings"][k] for k in ("epochs", "lr", "gate_budget", "lr_schedule", "last_epochs", "runs")
        },
        layers=layers,
        lambda_source={
            layer: [r["final"]["lambda_source"] for r in runs if r["spec"]["layer"] == layer] for layer in layers
        },
        top1={layer: [r["final"]["top1"] for r in runs if r["spec"]["layer"] == layer] for layer in layers},
        frozen={layer: per_layer[layer]["AnB_frozen"]["values"] for layer in layers},
        alone=document["extras"]["baselines"]["alone"]["AnB"]["values"],
        agreement=document["quality"].get("agreement_yosinski"),
        unsettled=len(document["quality"].get("unsettled", [])),
    )


def sources(records: list[dict]) -> list[dict]:
    """The per-source scan records (the longer-reference check's records have a ``kind``)."""
    return [r for r in records if "kind" not in r]


def run_all(results: Path, out: Path, seeds: list[int], splits: list[str], jobs: int) -> None:
    done = {(r["split"], r["seed"]) for r in sources(load(out))}
    todo = [(split, seed) for seed in seeds for split in splits if (split, seed) not in done]
    print(f"{len(seeds) * len(splits) - len(todo)} sources already recorded; scanning {len(todo)}", flush=True)
    results.mkdir(parents=True, exist_ok=True)
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        for split, seed in pool.map(lambda job: scan(results, *job), todo):
            document = complete(folder_of(results, split, seed))
            with out.open("a") as handle:
                handle.write(json.dumps(record_of(document, split, seed)) + "\n")
            print(f"recorded {split} seed {seed}", flush=True)


LONGER = dict(split="halves", seed=0, layers=("conv1", "conv2"), epochs=(12, 36))


def longer_reference(results: Path, out: Path) -> None:
    """Is the reference's frozen conv1 < conv2 a matter of training length? Yosinski frozen AnB at conv1 and conv2 on
    the CLI's default halves source, trained as the scan trains them, at 12 epochs (the scan's own values again) and
    at 36."""
    import torch

    from probe.api import scan_settings
    from probe.baselines.transfer import train_transfer
    from probe.engine.prepare import prepare
    from probe.engine.sources import load_source

    done = {(r["epochs"], r["layer"]) for r in load(out) if r.get("kind") == "frozen_epochs"}
    document = complete(folder_of(results, str(LONGER["split"]), int(LONGER["seed"])))
    if document is None:
        raise SystemExit("the longer-reference check reads the halves seed-0 scan: run the scans first")
    torch.set_num_threads(1)
    source = load_source(document["source"]["checkpoint"])
    for epochs in LONGER["epochs"]:
        settings = scan_settings(document["target"], epochs=epochs, runs=RUNS, jobs=1, device="cpu")
        context = prepare(source, document["target"], settings=settings).context
        for layer in LONGER["layers"]:
            if (epochs, layer) in done:
                continue
            frozen = [train_transfer(context, layer, "AnB", seed, frozen=True).top1 for seed in range(RUNS)]
            found = dict(kind="frozen_epochs", split=LONGER["split"], seed=LONGER["seed"], epochs=epochs, layer=layer)
            with out.open("a") as handle:
                handle.write(json.dumps(dict(found, source_sha256=document["source"]["sha256"], frozen=frozen)) + "\n")
            print(f"recorded Yosinski frozen {layer} at {epochs} epochs", flush=True)


# --------------------------------------------------------------------------------------------------
# Analysis


def analyse(record: dict) -> dict:
    """Agreement of one source and what bounds it (probe.results.quality does the rank arithmetic)."""
    from probe.results.quality import repeatability, spearman

    layers = record["layers"]
    lam = [statistics.fmean(record["lambda_source"][layer]) for layer in layers]
    ref = [statistics.fmean(record["frozen"][layer]) for layer in layers]
    rest = len(layers) - 2
    return dict(
        rho=spearman(lam, ref),
        # the same ρ with the reference's differences below one test image read as ties
        rho_ties=spearman(lam, tied_below(ref, ONE_TEST_IMAGE)),
        reference_repeatability=repeatability(record["frozen"]),
        lambda_repeatability=repeatability(record["lambda_source"]),
        # the highest ρ a λS profile can reach against this reference: strictly falling with depth; with conv1 and
        # conv2 tied at the top and the other layers in the best order
        ceiling_falling=spearman(list(range(len(layers), 0, -1)), ref),
        ceiling_first_two_kept=max(
            spearman([rest + 1, rest + 1, *order], ref) for order in itertools.permutations(range(rest))
        ),
        lam=lam,
        ref=ref,
        impairment=statistics.fmean(record["alone"])
        - statistics.fmean(statistics.fmean(v) for v in record["top1"].values()),
    )


def summary(records: list[dict], markdown: bool) -> None:
    rows = []
    longer = [r for r in records if r.get("kind") == "frozen_epochs"]
    analysed = [(record, analyse(record)) for record in sorted(sources(records), key=lambda r: (r["split"], r["seed"]))]
    for record, a in analysed:
        rows.append(
            [
                record["split"],
                str(record["seed"]),
                f"{a['rho']:.2f}" + ("" if a["rho"] >= 0.8 else " (< 0.8)"),
                f"{a['rho_ties']:.2f}",
                f"{a['ceiling_falling']:.2f}",
                f"{a['ceiling_first_two_kept']:.2f}",
                f"{a['reference_repeatability']:.2f}",
                f"{a['lambda_repeatability']:.2f}",
                " ".join(f"{v:.3f}" for v in a["lam"]),
                " ".join(f"{v:.3f}" for v in a["ref"]),
                f"{a['impairment']:+.3f}",
            ]
        )
    head = [
        "split",
        "source seed",
        "ρ(AnB λS, Yosinski)",
        "ρ, Yosinski's differences < 1 test image tied",
        "ceiling: λS falling with depth",
        "ceiling: conv1, conv2 kept",
        "Yosinski repeat ρ",
        "λS repeat ρ",
        "AnB λS conv1 … fc",
        "Yosinski frozen conv1 … fc",
        "impairment",
    ]
    if markdown:
        print("| " + " | ".join(head) + " |\n| " + " | ".join("---" for _ in head) + " |")
        print("\n".join("| " + " | ".join(row) + " |" for row in rows))
    else:
        for row in rows:
            print("  ".join(row))
    for split in sorted({record["split"] for record, _ in analysed}):
        found = [a for record, a in analysed if record["split"] == split]
        for key, what in (("rho", "ρ"), ("rho_ties", "ρ with ties")):
            rhos = [a[key] for a in found]
            middle = f"median {statistics.median(rhos):.2f}, mean {statistics.fmean(rhos):.2f}"
            print(f"{split}: {what} {middle}; ≥ 0.8 for {sum(rho >= 0.8 for rho in rhos)} of {len(rhos)} sources")
    for r in longer:
        values = " ".join(f"{v:.4f}" for v in r["frozen"])
        print(f"{r['split']} seed {r['seed']}: Yosinski frozen {r['layer']} at {r['epochs']} epochs {values}", end="")
        print(f" (mean {statistics.fmean(r['frozen']):.4f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--splits", nargs="+", choices=tuple(SPLITS), default=list(SPLITS))
    parser.add_argument("--results", type=Path, default=Path("results/agreement"), help="the scans' folders")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".jsonl"))
    parser.add_argument("--jobs", type=int, default=2, help="scans run side by side, one thread each")
    parser.add_argument("--summary", action="store_true", help="only print the table from --out")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    if not args.summary:
        run_all(args.results, args.out, args.seeds, args.splits, args.jobs)
        longer_reference(args.results, args.out)
    summary(load(args.out), args.markdown)


if __name__ == "__main__":
    main()
