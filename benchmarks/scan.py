"""Wall time of a short 7-layer digits scan with jobs=1 against jobs=N worker processes, same machine.

jobs=1 runs in this process with every usable core as torch threads (what a user gets with --jobs 1);
jobs=N spawns N workers with cores // N threads each. Worker start-up (a fresh Python importing
torch, the context sent once) is included: it is part of what the user waits for.

The same run also times jobs=1 on *one* thread, which gives the two numbers that bound the result:
how much the torch threads already speed up one process (``threads``), and how well N one-thread
workers do against one thread (``workers``). However good the workers, jobs=N cannot beat jobs=1 by
more than cores / threads-speed-up; the benchmark prints that ceiling next to the target.

    .venv/bin/python benchmarks/scan.py [--jobs 2] [--width 1] [--epochs 3] [--repeats 1] [--control]
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import header, median, retain_memory, verdict

import probe
from probe.settings import DIGITS_PRESET, RunSettings
from probe.util.device import available_cores

TARGET = 1.6  # on 2 cores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each run")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of the three variants, order rotated")
    parser.add_argument("--control", action="store_true", help="also run AnA: 14 runs instead of 7")
    args = parser.parse_args()
    cores = available_cores()
    torch.set_num_threads(cores)
    header(
        "scan wall time, jobs=1 vs jobs=N",
        jobs=args.jobs,
        width=args.width,
        epochs=args.epochs,
        repeats=args.repeats,
        control=args.control,
        freed_memory=retain_memory(),
    )

    source = probe.train_source(
        "paper-cnn", "digits[0-4]", epochs=2, lr=1e-3, arch_options={"width": args.width}, seed=0, augment=False
    )
    settings = RunSettings(**{**DIGITS_PRESET, "epochs": args.epochs})
    variants = {  # label -> (jobs, torch threads in this process)
        f"jobs=1, {cores} threads": (1, cores),
        f"jobs={args.jobs}, {max(1, cores // args.jobs)} thread(s) per worker": (args.jobs, cores),
        "jobs=1, 1 thread": (1, 1),
    }
    labels = list(variants)
    seconds: dict[str, list[float]] = {label: [] for label in labels}
    lambdas: dict[str, list[float]] = {}
    runs = 0
    for round_ in range(args.repeats):
        shift = round_ % len(labels)
        for label in labels[shift:] + labels[:shift]:
            jobs, threads = variants[label]
            torch.set_num_threads(threads)
            started = time.perf_counter()
            measurement = probe.scan(
                source, None, "digits[5-9]", settings=settings.with_(jobs=jobs), control=args.control
            )
            seconds[label].append(time.perf_counter() - started)
            torch.set_num_threads(cores)
            lambdas[label] = [run.final["lambda_source"] for run in measurement.runs]
            runs = len(measurement.runs)
            print(f"  {label}: {seconds[label][-1]:.1f} s for {runs} runs", flush=True)

    all_threads, workers, one_thread = (median(seconds[label]) for label in labels)
    speedup = all_threads / workers
    thread_speedup = one_thread / all_threads
    worker_speedup = one_thread / workers
    ceiling = min(args.jobs, cores) / thread_speedup
    difference = max(abs(a - b) for a, b in zip(lambdas[labels[0]], lambdas[labels[1]], strict=False))
    print(f"\n{runs}-run digits scan, {args.epochs} epochs per run, paper CNN width {args.width}, {cores} cores")
    for label in labels:
        print(f"  {label:<44} {median(seconds[label]):8.1f} s")
    target = (
        f"target ≥ {TARGET} on 2 cores  {verdict(speedup >= TARGET)}"
        if cores == 2 and args.jobs == 2
        else "(target defined for 2 jobs on 2 cores)"
    )
    print(f"  {'speed-up, jobs=' + str(args.jobs) + ' over jobs=1':<44} {speedup:8.2f}    {target}")
    print(f"  {'  threads: ' + str(cores) + ' over 1 in one process':<44} {thread_speedup:8.2f}")
    print(
        f"  {'  workers: jobs=' + str(args.jobs) + ' over one thread':<44} {worker_speedup:8.2f}    (start-up and "
        "uneven split included)"
    )
    print(
        f"  {'  ceiling: ' + str(min(args.jobs, cores)) + ' / threads':<44} {ceiling:8.2f}    (perfect workers, no "
        "start-up)"
    )
    print(
        f"  largest |λS difference| between jobs=1 and jobs={args.jobs}: {difference:.2e} (thread counts differ, so "
        "not bit for bit)"
    )


if __name__ == "__main__":
    main()
