"""How far can λS travel? A sweep of the gate's learning rate on the embedded digits task.

Adam moves each gate parameter by about its learning rate per step, so λS can leave its init only as far as
``gate_lr × steps`` allows. This sweep measures, per gate learning rate, the final λS of AnB (digits[0-4] →
digits[5-9]) and AnA (digits[0-4] → digits[0-4]) at a shallow, a middle and the deepest layer, over several
seeds, and writes one JSON line per run to ``--out``. docs/protocol.md reports the result
(the first sweep; experiments/protocol.py is the one that chose today's defaults).

    python experiments/gate_budget.py --out experiments/gate_budget.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import probe
from probe.engine.sources import cached_source
from probe.settings import RunSettings

# The settings this sweep was run with (the digits defaults of the time; docs/protocol.md has today's).
SWEEP = dict(epochs=12, lr=1e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("experiments/gate_budget.jsonl"))
    parser.add_argument("--gate-lrs", default="1e-4,3e-3,3e-2,1e-1")
    parser.add_argument("--layers", default="conv1,conv4,fc")
    parser.add_argument("--inits", default="0.9")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=SWEEP["epochs"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    source_settings = RunSettings(epochs=SWEEP["epochs"], lr=SWEEP["lr"])
    source, reused = cached_source("paper-cnn", "digits[0-4]", settings=source_settings)
    print(f"source: top-1 {source.quanta_source.test_top1:.3f} ({'cached' if reused else 'trained'})", flush=True)
    done = set()
    if args.out.exists():
        done = {(r["gate_lr"], r["layer"], r["init"], r["task"], r["seed"]) for r in map(json.loads, args.out.open())}
    for gate_lr in map(float, args.gate_lrs.split(",")):
        for init in map(float, args.inits.split(",")):
            for layer in args.layers.split(","):
                settings = RunSettings(
                    epochs=args.epochs, lr=SWEEP["lr"], gate_lr=gate_lr, init=(init,), runs=args.runs
                )
                if all(
                    (gate_lr, layer, init, task, seed) in done for task in ("AnB", "AnA") for seed in range(args.runs)
                ):
                    continue
                started = time.perf_counter()
                result = probe.measure(source, layer, settings=settings, control=True)
                with args.out.open("a") as handle:
                    for run in result.runs:
                        record = dict(
                            gate_lr=gate_lr,
                            layer=layer,
                            init=init,
                            task=run.spec.task,
                            seed=run.spec.seed,
                            lambda_source=run.final["lambda_source"],
                            top1=run.final["top1"],
                            steps=run.steps,
                            budget=run.gate_budget,
                            trajectory=[h["lambda_source"] for h in run.history],
                        )
                        handle.write(json.dumps(record) + "\n")
                print(
                    f"gate_lr {gate_lr:g} init {init} {layer}: "
                    + ", ".join(
                        f"{s.task} λS {s.mean['lambda_source']:.3f}±{s.std['lambda_source']:.3f} top-1 "
                        f"{s.mean['top1']:.3f}"
                        for s in result.summaries
                    )
                    + f" ({time.perf_counter() - started:.0f} s)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
