"""Why do the 8×8 digits sources fine-tune worse than scratch at 10 and 50 images per class? (docs/decision.md)

The decision benchmark (``experiments/decision.py``) found every cut of the digits sources below the target trained
from scratch at 10 and 50 images per class (halves at 10: 0.59 against 0.88). Two explanations, each tested here on
the same cases, seeds and settings (the digits preset, the case's ``--train-size``):

* **the new head's scale**: the source's fc features are 36-53× a fresh network's in norm, so a new head
  initialised as the architecture does (Xavier) starts with large logits. Test: full fine-tuning with the new
  head zeroed.
* **the source's deep layers are specific to its classes** and a few dozen steps do not undo them. Test: copy the
  source's layers up to conv1 / conv3 / conv6 into a fresh network (Yosinski's transfer, everything fine-tuned)
  so that the layers above start fresh, as they do from scratch.

One command, resumable, one JSON line per run in ``--out`` (worker processes of one thread each):

    python experiments/scratch_gap.py             # 72 short runs, ~10 core-minutes
    python experiments/scratch_gap.py --summary   # the table in docs/decision.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from _common import load, run_missing

PAIRS = ("digits halves", "digits parity")
SIZES = (10, 50)
SEEDS = 3
VARIANTS = ("full fine-tuning", "full fine-tuning, zero head", "copy conv1", "copy conv3", "copy conv6", "scratch")


def run(pair: str, size: int, seed: int, variant: str) -> dict:
    import torch
    from decision import EVALUATE_LAST, context_for

    from probe.baselines import transfer
    from probe.results.schema import final_figures

    context = context_for(dict(pair=pair, size=size, seed=seed))
    started = time.perf_counter()
    if variant == "scratch":
        outcome = transfer.train_alone(context, "AnB", seed, evaluate_last=EVALUATE_LAST)
    elif variant.startswith("copy "):  # Yosinski's transfer, fine-tuned: the layers above start fresh
        outcome = transfer.train_transfer(context, variant.split()[1], "AnB", seed, frozen=False)
    elif variant.endswith("zero head"):
        original = transfer.cut_target

        def zero_head(*args, **kwargs):
            target, frozen = original(*args, **kwargs)
            torch.nn.init.zeros_(target.head.weight)
            torch.nn.init.zeros_(target.head.bias)
            return target, frozen

        transfer.cut_target = zero_head  # train_with_cut builds its target through it
        try:
            outcome = transfer.train_with_cut(context, "AnB", seed, None, evaluate_last=EVALUATE_LAST)
        finally:
            transfer.cut_target = original
    else:
        outcome = transfer.train_with_cut(context, "AnB", seed, None, evaluate_last=EVALUATE_LAST)
    top1 = final_figures(outcome.history, context.settings.last_epochs).get("top1")
    return dict(pair=pair, size=size, seed=seed, variant=variant, top1=top1, seconds=time.perf_counter() - started)


def features(pair: str) -> dict:
    """The source's fc activations on the target's test images against a fresh network's: norm and dead units."""
    import torch
    from decision import context_for

    from probe.engine.context import fresh_target

    context = context_for(dict(pair=pair, size=10, seed=0))
    x = context.tasks["AnB"].test.x.float()
    found = {}
    for name, model in (("source", context.source), ("fresh", fresh_target(context, "AnB", 0))):
        seen = {}
        hook = model.fc.register_forward_hook(lambda module, inputs, output, seen=seen: seen.__setitem__("fc", output))
        model.eval()
        with torch.no_grad():
            model(x)
        hook.remove()
        active = torch.relu(seen["fc"])
        found[name] = dict(
            norm=float(active.norm(dim=1).mean()), dead=float((active.max(0).values <= 0).float().mean())
        )
    return dict(pair=pair, variant="features", **found)


def run_unit(unit: dict) -> list[dict]:
    return [features(unit["pair"]) if unit["variant"] == "features" else run(**unit)]


def key(record: dict) -> tuple:
    return record["pair"], record.get("size"), record.get("seed"), record["variant"]


def summary(records: list[dict]) -> None:
    print("| case | " + " | ".join(VARIANTS) + " |")
    print("|---|" + "---|" * len(VARIANTS))
    for pair in PAIRS:
        for size in SIZES:
            cells = []
            for variant in VARIANTS:
                values = [r["top1"] for r in records if key(r)[:2] == (pair, size) and r["variant"] == variant]
                cells.append(
                    f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else "—"
                )
            print(f"| {pair} @{size} | " + " | ".join(cells) + " |")
    for r in (r for r in records if r["variant"] == "features"):
        s, f = r["source"], r["fresh"]
        print(
            f"{r['pair']}: fc activations on the target's test images, mean norm {s['norm']:.2f} (a fresh network "
            f"{f['norm']:.2f}, {s['norm'] / f['norm']:.0f}×); units never active {s['dead']:.0%} ({f['dead']:.0%})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".jsonl"))
    parser.add_argument("--summary", action="store_true", help="print the table from --out; train nothing")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    if not args.summary:
        units = [dict(pair=pair, variant="features") for pair in PAIRS]
        units += [
            dict(pair=pair, size=size, seed=seed, variant=variant)
            for pair in PAIRS for size in SIZES for seed in range(SEEDS) for variant in VARIANTS
        ]  # fmt: skip
        run_missing(units, args.out, run_unit, key=key, jobs=args.jobs, describe=lambda r: " ".join(map(str, key(r))))
    summary(load(args.out))


if __name__ == "__main__":
    main()
