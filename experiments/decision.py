"""Which layers to freeze before fine-tuning? The ground truth by brute force, and rules judged against it (issue 23).

One resumable command runs every unit of work (one training run each) in worker processes of one thread and appends
one JSON line per run to ``--out``. For each *case* (a source, a target task, a number of target training images
per class):

* ``truth``: a copy of the source with a new head fine-tuned on the target with its layers up to and including
  probe point k frozen, for every k of the 7 paper-cnn probe points and k = none (full fine-tuning), plus the target
  trained from scratch; seeds 0-2; the settings of the target's preset (what ``probe scan`` uses for that data);
  the test split evaluated in the last 10 epochs (``EVALUATE_LAST``), enough for any averaging window.
* ``lenses``: the linear probe, k-NN, LogME, H-score and TransRate of the source's features at every probe point,
  on the target's training images of the case (cheap: no training).
* ``scans``: the default scan of the case (``probe scan`` with one run, seed 0, ``--train-size`` of the case): λS
  per layer. For Fashion-MNIST targets at 640 images per class these runs are the Fashion-MNIST experiment's own
  seed-0 AnB runs (``experiments/fashion.jsonl``: same source, target, settings and seed), read, not repeated.

Cases: six source → target pairs (digits halves and parity at digits' 8×8 with the default full-width sources;
Fashion-MNIST halves and parity, digits → fashion and fashion → digits at 28×28 with the width-0.25 sources of
``experiments/fashion.py``), each at three target sizes: 10, 50 and every image (~143 per class) for digits
targets, 10, 100 and 640 per class for Fashion-MNIST targets (parity and digits → fashion at 10 and 100 only:
the two 640 cases were cut for CPU time): 16 cases.

    python experiments/decision.py --stage truth --stage lenses   # the ground truth (resumable)
    python experiments/decision.py --stage scans                  # λS of the default scan per case
    python experiments/decision.py --summary [--markdown]         # docs/decision.md's tables, from the JSONL
    python experiments/decision.py --summary --figure docs/images/decision-regret.png   # and its figure

The Fashion-MNIST sources come from ``experiments/fashion.py`` (``--fashion-results``, default results/fashion);
the digits sources are the ones ``probe scan`` trains by default (the same cache).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import load, run_missing

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "fc")
CUTS = ("none", *LAYERS)
SEEDS = 3
EVALUATE_LAST = 10
FASHION_EPOCHS = 20  # as experiments/fashion.py: the default preset with 20 epochs instead of 60
LENSES = ("linear", "knn", "logme", "hscore", "transrate")

# pair -> (source, target, input size the target is fed at, target sizes per class; None = every image)
PAIRS = {
    "digits halves": ("digits:digits[0-4]", "digits[5-9]", None, (10, 50, None)),
    "digits parity": ("digits:digits[0,2,4,6,8]", "digits[1,3,5,7,9]", None, (10, 50, None)),
    "fashion halves": ("fashion:fashion-halves", "fashion[5-9]", None, (10, 100, 640)),
    # parity and digits→fashion at 640 per class were cut for CPU time (about 2 h of the 8): docs/decision.md
    "fashion parity": ("fashion:fashion-parity", "fashion[1,3,5,7,9]", None, (10, 100)),
    "digits→fashion": ("fashion:digits-halves-28", "fashion[5-9]", None, (10, 100)),
    "fashion→digits": ("fashion:fashion-halves", "digits[5-9]", 28, (10, 50, None)),
}
# The Fashion-MNIST experiment's pair whose seed-0 AnB runs are this experiment's default scans at 640 per class.
FASHION_SCANS = {"fashion halves": ("main", "halves"), "fashion parity": ("main", "parity"),
                 "digits→fashion": ("cross", "digits→fashion")}  # fmt: skip


def cases() -> list[tuple[str, int | None]]:
    return [(pair, size) for pair, (*_, sizes) in PAIRS.items() for size in sizes]


def case_name(pair: str, size: int | None) -> str:
    return f"{pair} @{'all' if size is None else size}"


def unit(stage: str, pair: str, size: int | None, kind: str, *, cut: str | None = None, layer: str | None = None,
         seed: int = 0) -> dict:  # fmt: skip
    return dict(stage=stage, pair=pair, size=size, kind=kind, cut=cut, layer=layer, seed=seed)


def stage_units(stage: str) -> list[dict]:
    units: list[dict] = []
    for pair, size in cases():
        if stage == "truth":
            for seed in range(SEEDS):
                units += [unit(stage, pair, size, "cut", cut=cut, seed=seed) for cut in CUTS]
                units += [unit(stage, pair, size, "scratch", seed=seed)]
        elif stage == "lenses":
            units += [unit(stage, pair, size, "lenses")]
        elif stage == "scans" and not (pair in FASHION_SCANS and size == 640):
            units += [unit(stage, pair, size, "quanta", layer=layer) for layer in LAYERS]
    return units


STAGES = ("truth", "lenses", "scans")


def unit_key(u: dict) -> str:
    return json.dumps([u.get(name) for name in ("stage", "pair", "size", "kind", "cut", "layer", "seed")])


# --------------------------------------------------------------------------------------------------
# Work (in worker processes)

_FASHION_RESULTS = Path("results/fashion")


def source_of(pair: str):
    """The pair's source: a digits source as ``probe scan`` trains it by default (cached), or a Fashion-MNIST
    experiment checkpoint."""
    from probe.api import source_training_settings
    from probe.engine.sources import cached_source, load_source

    kind, name = PAIRS[pair][0].split(":", 1)
    if kind == "fashion":
        return load_source(_FASHION_RESULTS / "sources" / f"{name}.pt")
    settings = source_training_settings(name, device="cpu")
    model, _ = cached_source("paper-cnn", name, settings=settings)
    return model


def settings_for(u: dict):
    """The target's preset as ``probe scan`` chooses it (probe.api.scan_settings), with the case's size."""
    from probe.api import scan_settings

    target = PAIRS[u["pair"]][1]
    given: dict = dict(device="cpu", jobs=1, runs=1, seed=u["seed"], train_size=u["size"])
    if target.startswith("fashion"):
        given["epochs"] = FASHION_EPOCHS
    return scan_settings(target, **given)


def context_for(u: dict):
    from probe.data.images.tasks import Preprocess
    from probe.engine.prepare import prepare

    model = source_of(u["pair"])
    size = (model.quanta_source.settings or {}).get("image_size") or PAIRS[u["pair"]][2]
    preprocess = Preprocess(image_size=size, origin="--image-size") if size else None
    return prepare(model, PAIRS[u["pair"]][1], settings=settings_for(u), preprocess=preprocess).context


def run_unit(u: dict) -> list[dict]:
    from probe.baselines.transfer import train_alone, train_with_cut

    context = context_for(u)
    settings = context.settings
    base = dict(u, train_examples=len(context.tasks["AnB"].train),
                settings={k: settings.to_dict()[k] for k in ("epochs", "lr", "train_size", "last_epochs")})  # fmt: skip
    started = time.perf_counter()
    if u["kind"] in ("cut", "scratch"):
        if u["kind"] == "cut":
            cut = None if u["cut"] == "none" else u["cut"]
            outcome = train_with_cut(context, "AnB", u["seed"], cut, evaluate_last=EVALUATE_LAST)
        else:
            outcome = train_alone(context, "AnB", u["seed"], evaluate_last=EVALUATE_LAST)
        return [
            dict(base, status="failed" if outcome.failure else "ok", seconds=time.perf_counter() - started,
                 top1_trajectory=[h.get("top1") for h in outcome.history])
        ]  # fmt: skip
    if u["kind"] == "quanta":
        from probe.engine.run import run_one
        from probe.results.schema import RunSpec

        run = run_one(context, RunSpec(u["layer"], settings.init[0], "AnB", u["seed"]))
        return [
            dict(base, status=run.status, steps=run.steps, gate_lr=run.gate_lr, seconds=run.seconds,
                 lambda_trajectory=[h["lambda_source"] for h in run.history],
                 top1_trajectory=[h["top1"] for h in run.history])
        ]  # fmt: skip
    if u["kind"] == "lenses":
        from probe.baselines.compare import _feature_lens
        from probe.baselines.scores import layer_features

        train, test = context.tasks["AnB"].train, context.tasks["AnB"].test
        values: dict = {}
        for layer in LAYERS:
            f_train, f_test = layer_features(context.source, layer, train), layer_features(context.source, layer, test)
            values[layer] = {name: _feature_lens(name, f_train, f_test, train.y, test.y, 0) for name in LENSES}
        return [dict(base, values=values, seconds=time.perf_counter() - started)]
    raise ValueError(f"unknown unit kind {u['kind']}")


def _use_fashion_results(fashion_results: str) -> None:
    global _FASHION_RESULTS
    _FASHION_RESULTS = Path(fashion_results)


def run_units(units: list[dict], out: Path, fashion_results: Path, jobs: int) -> None:
    run_missing(units, out, run_unit, key=unit_key, jobs=jobs, describe=describe, setup=_use_fashion_results,
                setup_args=(str(fashion_results),), maxtasksperchild=20)  # fmt: skip


def describe(record: dict) -> str:
    what = record.get("cut") or record.get("layer") or ""
    return (
        f"{record['stage']} {case_name(record['pair'], record['size'])} {record['kind']} {what} seed {record['seed']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=STAGES, action="append", help="stages to run (default: all, in order)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".jsonl"))
    parser.add_argument("--fashion-results", type=Path, default=_FASHION_RESULTS)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--summary", action="store_true", help="print the tables from --out; train nothing")
    parser.add_argument("--markdown", action="store_true", help="with --summary: markdown tables")
    parser.add_argument("--figure", type=Path, help="with --summary: write the regret-against-compute figure here")
    parser.add_argument("--fashion-jsonl", type=Path, default=Path(__file__).with_name("fashion.jsonl"))
    args = parser.parse_args()
    if args.summary:
        judged = print_summary(load(args.out), load(args.fashion_jsonl), args.markdown)
        if args.figure and judged["predictors"]:
            plot_regret(judged["predictors"], args.figure)
        return
    for pair in PAIRS:  # each source once, here, before the workers share it (a digits source may be trained now)
        if PAIRS[pair][0].startswith("digits:"):
            source_of(pair)
    for stage in args.stage or list(STAGES):
        run_units(stage_units(stage), args.out, args.fashion_results, args.jobs)


# --------------------------------------------------------------------------------------------------
# Analysis


def final(trajectory: list) -> float:
    """The mean of a run's last quarter of epochs, as the presets average (probe.settings.averaged_epochs; the
    fashion runs recorded before that rule averaged 10 of 20); epochs not evaluated are None and never averaged."""
    from probe.settings import averaged_epochs

    tail = [v for v in trajectory[-averaged_epochs(len(trajectory)) :] if v is not None]
    return sum(tail) / len(tail) if tail else float("nan")


def build_cases(records: list[dict], fashion_records: list[dict]):
    """The benchmark's cases from the JSONL: ground-truth table (final top-1 per cut and seed, averaged as the
    target's preset averages), λS profile of the default scan (seed 0), lens profiles, images per class."""
    from probe.results.decision import Case, cut_table

    found = []
    for pair, size in cases():
        mine = [r for r in records if r["pair"] == pair and r["size"] == size]
        truth = [r for r in mine if r["kind"] == "cut" and r["status"] == "ok"]
        lenses = [r for r in mine if r["kind"] == "lenses"]
        if pair in FASHION_SCANS and size == 640:
            stage, fashion_pair = FASHION_SCANS[pair]
            scans = [r for r in fashion_records if r.get("stage") == stage and r.get("pair") == fashion_pair
                     and r.get("kind") == "quanta" and r.get("task") == "AnB" and r.get("seed") == 0
                     and r.get("init") is None and r.get("variant") is None]  # fmt: skip
        else:
            scans = [r for r in mine if r["kind"] == "quanta"]
        if not truth:
            continue
        accuracies = {cut: [final(r["top1_trajectory"]) for r in truth if r["cut"] == cut] for cut in CUTS}
        profiles: dict[str, dict[str, float]] = {}
        if len({r["layer"] for r in scans}) == len(LAYERS):
            profiles["lambda"] = {r["layer"]: final(r["lambda_trajectory"]) for r in scans}
        if lenses:
            for lens in LENSES:
                profiles[lens] = {layer: lenses[0]["values"][layer][lens] for layer in LAYERS}
        per_class = size if size is not None else truth[0]["train_examples"] // 5
        found.append(Case(case_name(pair, size), LAYERS, profiles, per_class, cut_table(accuracies)))
    return found


def scratch_of(records: list[dict], pair: str, size: int | None) -> list[float]:
    runs = [r for r in records if r["pair"] == pair and r["size"] == size and r["kind"] == "scratch"]
    return [final(r["top1_trajectory"]) for r in runs if r["status"] == "ok"]


def print_summary(records: list[dict], fashion_records: list[dict], markdown: bool = False) -> dict:
    """The per-case and per-predictor tables of docs/decision.md; returns the judged predictors."""
    from probe.results.decision import best_cut, judge, noise_set, predictors

    every = build_cases(records, fashion_records)
    usable = [case for case in every if {"lambda", *LENSES} <= set(case.profiles)]
    print(f"{len(every)} cases with ground truth, {len(usable)} with every measurement", flush=True)
    judged = [judge(usable, predictor) for predictor in predictors(LENSES)] if len(usable) >= 2 else []

    def row(cells) -> str:
        return ("| " + " | ".join(map(str, cells)) + " |") if markdown else "  ".join(map(str, cells))

    def head(cells) -> str:
        return row(cells) + ("\n|" + "---|" * len(cells) if markdown else "")

    print(head(["case", "best cut", "within noise of it", "accuracy by cut (none … fc)", "scratch"]))
    for case in every:
        stats = case.table
        accuracy = " ".join(f"{stats[c].mean:.3f}" if c in stats else "—" for c in CUTS)
        scratch = scratch_of(records, *_pair_size(case.name))
        alone = f"{sum(scratch) / len(scratch):.3f}" if scratch else "—"
        noise = ", ".join(c for c in CUTS if c in noise_set(stats))
        print(row([case.name, best_cut(stats), noise, accuracy, alone]))
    print()
    print(head(["predictor", "kind", "compute", "mean regret (points)", "worst", "within noise"]))
    for entry in sorted(judged, key=lambda e: e["mean_regret"]):
        print(row([entry["name"], entry["kind"], entry["cost"], f"{entry['mean_regret']:.2f}",
                   f"{entry['worst_regret']:.2f}", f"{entry['within_noise']:.0%}"]))  # fmt: skip
    groups = {
        "@10": lambda name: name.endswith("@10"),
        "@50/@100": lambda name: name.endswith(("@50", "@100")),
        "@all/@640": lambda name: name.endswith(("@all", "@640")),
        "within domain": lambda name: "→" not in name,
        "cross domain": lambda name: "→" in name,
    }
    print()
    print(head(["predictor", *[f"mean regret {group}" for group in groups]]))
    for entry in sorted(judged, key=lambda e: e["mean_regret"]):
        cells = []
        for match in groups.values():
            values = [found["regret"] for name, found in entry["cases"].items() if match(name)]
            cells.append(f"{sum(values) / len(values):.2f} ({len(values)})" if values else "—")
        print(row([entry["name"], *cells]))
    print()
    shown = [e for e in judged if e["kind"] in ("λS", "anchor")] + [
        min((e for e in judged if e["kind"] == "lens"), key=lambda e: e["mean_regret"], default=None)
    ]
    shown = [e for e in shown if e is not None]
    print(head(["case", *[e["name"] for e in shown]]))
    for case in usable:
        cells = []
        for entry in shown:
            found = entry["cases"][case.name]
            tau = f", τ {found['tau']:g}" if "tau" in found else ""
            cells.append(f"{found['cut']} ({found['regret']:.1f}{tau})")
        print(row([case.name, *cells]))
    shipped = shipped_rule(usable, judged)
    print()
    print(f"shipped: {shipped!r}" if shipped else "shipped: none (no rule beat every anchor on mean regret)")
    return {"cases": [case.name for case in usable], "predictors": judged, "shipped": shipped}


def shipped_rule(usable: list, judged: list[dict]):
    """The rule ``probe scan`` may recommend with: the threshold predictor with the lowest leave-one-case-out mean
    regret, if it is below every anchor's; its τ then fitted on every case. None when no such predictor exists."""
    from probe.results.decision import TAU_GRID, ShippedRule, best_threshold, predictors

    anchors = {e["name"]: e["mean_regret"] for e in judged if e["kind"] == "anchor"}
    rules = {p.name: p for p in predictors(LENSES) if p.rule is not None}
    eligible = [e for e in judged if e["name"] in rules and all(e["mean_regret"] < a for a in anchors.values())]
    if not eligible:
        return None
    best = min(eligible, key=lambda e: e["mean_regret"])
    predictor = rules[best["name"]]
    assert predictor.rule is not None
    measurement = "lambda" if predictor.kind == "λS" else best["name"].split(":")[0]
    return ShippedRule(
        predictor=best["name"],
        measurement=measurement,
        tau=best_threshold(usable, predictor.rule, TAU_GRID),
        mean_regret=round(best["mean_regret"], 4),
        worst_regret=round(best["worst_regret"], 4),
        within_noise=round(best["within_noise"], 4),
        anchors={name: round(value, 4) for name, value in anchors.items()},
        cases=len(usable),
    )


# Compute per decision in target training runs (issue 23): brute force trains every cut with every seed, a λS scan
# one run per probed layer, a lens or an anchor no training.
COMPUTE = {"oracle": len(CUTS) * SEEDS, "λS": len(LAYERS), "lens": 0, "anchor": 0}


def plot_regret(judged: list[dict], path: Path) -> None:
    """Mean regret against compute per decision, one point per predictor (compute 0 drawn at 0.5 on the log axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"oracle": "black", "λS": "tab:red", "lens": "tab:blue", "anchor": "tab:grey"}
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    points: dict[tuple[float, float], list[dict]] = {}  # predictors that tie share one point and one label
    for entry in judged:
        runs = COMPUTE[entry["kind"]]
        points.setdefault((runs if runs else 0.5, round(entry["mean_regret"], 2)), []).append(entry)
    column: dict[float, int] = {}  # how many points already sit at each compute, to stagger their labels
    for (x, y), entries in sorted(points.items()):
        index = column[x] = column.get(x, -1) + 1
        ax.scatter(x, y, color=colours[entries[0]["kind"]], s=28, zorder=3)
        names = [e["name"] for e in entries]
        label = "\n".join(", ".join(names[i : i + 3]) for i in range(0, len(names), 3))
        shift = 4 + 95 * (index % 2) if len(names) == 1 else 4  # neighbours' labels side by side, not on top
        ax.annotate(label, (x, y), fontsize=6.5, xytext=(shift, 2), textcoords="offset points")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.axvline(COMPUTE["oracle"] / 3, color="tab:green", linestyle=":", linewidth=1)
    ax.axhline(0.5, color="tab:green", linestyle=":", linewidth=1)
    ax.text(COMPUTE["oracle"] / 3, ax.get_ylim()[1], " goal: ≤ 1/3 of brute force, ≤ 0.5 points", fontsize=7,
            va="top", color="tab:green")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xticks([0.5, 1, COMPUTE["λS"], COMPUTE["oracle"]], ["0", "1", f"{COMPUTE['λS']}", f"{COMPUTE['oracle']}"])
    ax.set_xlabel("compute per decision (target training runs; 0: no training)")
    ax.set_ylabel("mean regret over cases (points of top-1)")
    ax.set_title("Which layers to freeze: regret against compute (experiments/decision.py)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _pair_size(name: str) -> tuple[str, int | None]:
    pair, _, size = name.rpartition(" @")
    return pair, None if size == "all" else int(size)


if __name__ == "__main__":
    main()
