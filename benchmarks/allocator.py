"""Training-step time with the C library's malloc defaults against freed memory retained (probe.util.allocator).

glibc returns large freed blocks to the OS, so every step page-faults its activations and gradients in
again. The two settings are process-wide and cannot be undone inside one process, so each variant runs
in a fresh subprocess, alternating, back to back; each reports its median step time and the share of
it spent in the kernel.

    .venv/bin/python benchmarks/allocator.py [--widths 1 0.25] [--rounds 3] [--steps 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
from _common import header, median, retain_memory, synthetic_task, training_steps


def child(width: float, steps: int, threads: int) -> None:
    from probe.models import create_model
    from probe.settings import RunSettings
    from probe.training.trainer import make_optimizer

    torch.set_num_threads(threads)
    state = retain_memory()
    task = synthetic_task(256, 1)
    torch.manual_seed(0)
    model = create_model("paper-cnn", 10, 3, (32, 32), width=width)
    run = training_steps(lambda x, idx: model(x), make_optimizer(model, RunSettings()), task.train, batch_size=32)
    run(3)  # warm-up: the heap grows to the step's peak once
    times, kernel = [], 0.0
    for _ in range(steps):
        before, started = resource.getrusage(resource.RUSAGE_SELF).ru_stime, time.perf_counter()
        run(1)
        times.append(time.perf_counter() - started)
        kernel += resource.getrusage(resource.RUSAGE_SELF).ru_stime - before
    print(json.dumps({"state": state, "step": median(times), "kernel": kernel / sum(times)}))


def measure(width: float, retain: bool, args) -> dict:
    env = {**os.environ, "PROBE_RETAIN_MEMORY": "1" if retain else "0"}
    command = [
        sys.executable,
        __file__,
        "--child",
        str(width),
        "--steps",
        str(args.steps),
        "--threads",
        str(args.threads),
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.25])
    parser.add_argument("--rounds", type=int, default=3, help="pairs of fresh processes per width")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per process")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.steps, args.threads)
        return
    header(
        "allocator: C library default vs freed memory retained",
        rounds=args.rounds,
        steps=args.steps,
        threads=args.threads,
    )
    print("\nplain training step, paper CNN, batch 32, 3×32×32, CPU (median step; share of it in the kernel)")
    print(f"  {'width':<6} {'default ms':>11} {'kernel':>7} {'retained ms':>12} {'kernel':>7} {'speed-up':>9}")
    for width in args.widths:
        runs = {True: [], False: []}
        for round_ in range(args.rounds):
            for retain in (False, True) if round_ % 2 == 0 else (True, False):
                runs[retain].append(measure(width, retain, args))
        if runs[True][0]["state"] != "retained":
            print(f"  {width:<6} freed memory cannot be retained here (not glibc on Linux): nothing to compare")
            continue
        default, retained = (median([r["step"] for r in runs[k]]) for k in (False, True))
        kernel = {k: median([r["kernel"] for r in runs[k]]) for k in (False, True)}
        print(
            f"  {width:<6} {default * 1000:11.1f} {kernel[False]:7.1%} {retained * 1000:12.1f} {kernel[True]:7.1%} "
            f"{default / retained:9.3f}"
        )


if __name__ == "__main__":
    main()
