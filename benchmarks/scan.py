"""Wall time of a short 7-layer digits scan with jobs=1 against jobs=N worker processes, same machine.

jobs=1 runs in this process with every usable core as torch threads (what a user gets by default);
jobs=N spawns N workers with cores // N threads each. Worker start-up (a fresh Python importing
torch, the context sent once) is included: it is part of what the user waits for.

    .venv/bin/python benchmarks/scan.py [--jobs 2] [--width 1] [--epochs 3] [--repeats 1]
"""

from __future__ import annotations

import argparse
import time

import torch

import probe
from _common import header, median, verdict
from probe.parallel import available_cores
from probe.settings import DIGITS_DEFAULTS, RunSettings

TARGET = 1.6  # on 2 cores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each of the 7 runs")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of (jobs=1, jobs=N), alternating")
    args = parser.parse_args()
    cores = available_cores()
    torch.set_num_threads(cores)
    header("scan wall time, jobs=1 vs jobs=N", jobs=args.jobs, width=args.width, epochs=args.epochs, repeats=args.repeats)

    source = probe.train_source(
        "paper-cnn", "digits[0-4]", epochs=2, lr=1e-3, arch_options={"width": args.width}, seed=0, augment=False
    )
    settings = RunSettings(**{**DIGITS_DEFAULTS, "epochs": args.epochs})
    seconds: dict[int, list[float]] = {1: [], args.jobs: []}
    lambdas: dict[int, list[float]] = {}
    for _ in range(args.repeats):
        for jobs in (1, args.jobs):
            started = time.perf_counter()
            measurement = probe.scan(source, None, "digits[5-9]", settings=settings.with_(jobs=jobs))
            seconds[jobs].append(time.perf_counter() - started)
            lambdas[jobs] = [run.final["lambda_source"] for run in measurement.runs]
            print(f"  jobs={jobs}: {seconds[jobs][-1]:.1f} s for {len(measurement.runs)} runs", flush=True)

    speedup = median(seconds[1]) / median(seconds[args.jobs])
    difference = max(abs(a - b) for a, b in zip(lambdas[1], lambdas[args.jobs]))
    print(f"\n7-layer digits scan, {args.epochs} epochs per run, paper CNN width {args.width}, {cores} cores")
    rows = [
        (f"jobs=1 ({cores} threads in this process)", f"{median(seconds[1]):8.1f} s"),
        (f"jobs={args.jobs} ({max(1, cores // args.jobs)} thread(s) per worker)", f"{median(seconds[args.jobs]):8.1f} s"),
    ]
    for label, value in rows:
        print(f"  {label:<40} {value}")
    target = f"target ≥ {TARGET} on 2 cores  {verdict(speedup >= TARGET)}" if cores == 2 and args.jobs == 2 else "(target defined for 2 jobs on 2 cores)"
    print(f"  {'speed-up':<40} {speedup:8.2f}    {target}")
    print(f"  largest |λS difference| between the two scans: {difference:.2e} (thread counts differ, so not bit for bit)")


if __name__ == "__main__":
    main()
