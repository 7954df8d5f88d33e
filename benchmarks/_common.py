"""Shared helpers of the benchmarks: machine header, synthetic tasks, interleaved timing, a training step.

Every benchmark compares two things *side by side in one process* (or, for memory, in fresh
subprocesses started back to back) and prints ratios, so a busy machine slows both sides alike;
the repeated, interleaved blocks and the median further damp the noise.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from probe.data import AugmentConfig, DatasetSpec, Split, TaskData
from probe.settings import RunSettings
from probe.training.trainer import autocast_for, memory_format_for
from probe.util.device import available_cores


def header(title: str, **config) -> None:
    """Print what was measured, where and when, so a figure can be traced to its machine."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"# {title}")
    print(
        f"# {datetime.datetime.now().isoformat(timespec='seconds')}  torch {torch.__version__}  python "
        f"{platform.python_version()}"
    )
    print(
        f"# cpu: {cpu}; {available_cores()} usable cores; load average {load}; torch threads {torch.get_num_threads()}"
    )
    if config:
        print("# " + "  ".join(f"{k}={v}" for k, v in config.items()))


def retain_memory() -> str:
    """Keep freed memory for the next step, as the ``probe`` command and its workers do (probe.util.allocator);
    ``PROBE_RETAIN_MEMORY=0`` measures the C library's default instead. Returns the state, for the header."""
    from probe.util.allocator import retain_freed_memory

    return "retained" if retain_freed_memory() else "C library default"


def synthetic_task(
    n_train: int, n_test: int, num_classes: int = 10, chans: int = 3, size: int = 32, seed: int = 0
) -> TaskData:
    """A CIFAR-shaped task of random images (timings do not depend on the pixel values)."""
    generator = torch.Generator().manual_seed(seed)

    def split(n: int) -> Split:
        return Split(
            torch.randn(n, chans, size, size, generator=generator),
            torch.randint(0, num_classes, (n,), generator=generator),
        )

    return TaskData(
        spec=DatasetSpec("cifar10"),
        train=split(n_train),
        test=split(n_test),
        num_classes=num_classes,
        in_chans=chans,
        input_size=(size, size),
        class_names=[str(c) for c in range(num_classes)],
        augment=AugmentConfig(),
    )


def training_steps(
    forward, optimizer, split: Split, batch_size: int, seed: int = 0, settings: RunSettings | None = None
) -> Callable[[int], None]:
    """``run(k)``: k training steps exactly as :func:`probe.training.trainer.fit` does them (batch gather, autocast and
    memory format as ``settings`` give them on the split's device, forward, cross-entropy, zero_grad,
    backward, Adam step, loss kept on the device)."""
    settings = settings or RunSettings()
    device = split.x.device
    memory_format = memory_format_for(device, settings)
    generator = torch.Generator().manual_seed(seed)
    loss_sum = torch.zeros((), device=device)

    def run(k: int) -> None:
        for _ in range(k):
            idx = torch.randperm(len(split), generator=generator)[:batch_size].to(device)
            x, y = split.x.index_select(0, idx), split.y.index_select(0, idx)
            if memory_format is not torch.contiguous_format:
                x = x.contiguous(memory_format=memory_format)
            with autocast_for(device, settings):
                logits = forward(x, idx)
            loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum.add_(loss.detach(), alpha=len(idx))

    return run


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def add_clock_option(parser) -> None:
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall time (default; for a quiet machine) or this process's CPU time (steadier on a shared "
        "machine, meaningful with --threads 1 only)",
    )


def interleaved(
    variants: dict[str, Callable[[int], None]], repeats: int, block: int, warmup: int = 1, clock: str = "wall"
) -> dict[str, list[float]]:
    """Seconds per step of each variant: ``repeats`` rounds, each timing a block of ``block`` steps of every
    variant, the order rotated every round so that no variant always follows another. On a CUDA machine
    the device is synchronised at both ends of every block."""
    clock_now = CLOCKS[clock]
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()

    def now() -> float:
        if cuda:
            torch.cuda.synchronize()
        return clock_now()

    names = list(variants)
    for name in names:
        variants[name](warmup)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            started = now()
            variants[name](block)
            times[name].append((now() - started) / block)
    return times


def ratios(times: dict[str, list[float]], name: str, baseline: str) -> list[float]:
    """Round-by-round ratios: each round's time of ``name`` over the same round's ``baseline``."""
    return [a / b for a, b in zip(times[name], times[baseline], strict=False)]


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> str:
    """The interquartile range, as ``q1–q3``."""
    if len(values) < 4:
        return f"{min(values):.3f}–{max(values):.3f}"
    q1, _, q3 = statistics.quantiles(values, n=4)
    return f"{q1:.3f}–{q3:.3f}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"
