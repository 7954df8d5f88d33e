"""What the experiments share: their JSONL files, running units of work in worker processes, ties in a reference."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def load(path: Path) -> list[dict]:
    """The records of a JSONL file (none when it does not exist yet)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append(out: Path, records: Sequence[dict]) -> None:
    """Append ``records`` to ``out`` and make them durable (a killed run loses at most the unit in flight)."""
    with out.open("a") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in records))
        handle.flush()
        os.fsync(handle.fileno())


def run_units(
    todo: Sequence[dict],
    out: Path,
    work: Callable[[dict], list[dict]],
    *,
    jobs: int,
    describe: Callable[[dict], str],
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
    maxtasksperchild: int | None = None,
) -> None:
    """Run ``work`` on every unit of ``todo`` in ``jobs`` spawned worker processes, appending each unit's records to
    ``out`` as it finishes and printing its progress with an estimate of the time left."""
    if not todo:
        return
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with context.Pool(jobs, initializer=initializer, initargs=initargs, maxtasksperchild=maxtasksperchild) as pool:
        for i, records in enumerate(pool.imap_unordered(work, todo), 1):
            append(out, records)
            elapsed = time.perf_counter() - started
            left = elapsed / i * (len(todo) - i)
            print(
                f"[{i}/{len(todo)} {elapsed / 60:.0f} min, ~{left / 60:.0f} min left] {describe(records[0])}",
                flush=True,
            )


def run_missing(
    units: Sequence[dict],
    out: Path,
    work: Callable[[dict], list[dict]],
    *,
    key: Callable[[dict], object],
    jobs: int,
    describe: Callable[[dict], str],
    record_key: Callable[[dict], object] | None = None,
    setup: Callable[..., None] | None = None,
    setup_args: tuple = (),
    maxtasksperchild: int | None = None,
) -> None:
    """Run the units whose ``key`` no record of ``out`` has (``record_key`` reads a record's, default ``key``), as
    :func:`run_units` does, in workers of one thread each that call ``setup(*setup_args)`` first."""
    done = {(record_key or key)(r) for r in load(out)}
    todo = [u for u in units if key(u) not in done]
    print(f"{len(units) - len(todo)} of {len(units)} units already done; running {len(todo)}", flush=True)
    run_units(todo, out, work, jobs=jobs, describe=describe, initializer=_one_thread_worker,
              initargs=(setup, setup_args), maxtasksperchild=maxtasksperchild)  # fmt: skip


def _one_thread_worker(setup: Callable[..., None] | None, setup_args: tuple) -> None:
    import torch

    import probe

    torch.set_num_threads(1)  # the workers share the cores: one thread each, no oversubscription
    probe.retain_freed_memory()
    if setup is not None:
        setup(*setup_args)


def tied_below(values: list[float], gap: float) -> list[float]:
    """``values`` with every run of sorted neighbours closer than ``gap`` replaced by its mean (one tie group)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    groups = [[order[0]]]
    for previous, i in itertools.pairwise(order):
        if values[i] - values[previous] < gap:
            groups[-1].append(i)
        else:
            groups.append([i])
    tied = list(values)
    for group in groups:
        mean = statistics.fmean(values[i] for i in group)
        for i in group:
            tied[i] = mean
    return tied
