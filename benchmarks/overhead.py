"""What a QUANTA training step costs next to a plain training step of the same target, layer by layer.

A QUANTA step = the source's truncated no-grad forward up to layer n + the wired target's forward,
backward and Adam step (gate included). "reuse" takes the source's tensors from a cache built once,
as probe does without augmentation. Paper CNN, batch 32, 3×32×32 inputs, CPU.

    .venv/bin/python benchmarks/overhead.py [--widths 1 0.25] [--repeats 7] [--threads 1] [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import copy

import torch
from _common import (
    add_clock_option,
    header,
    interleaved,
    median,
    ratios,
    retain_memory,
    spread,
    synthetic_task,
    training_steps,
    verdict,
)

from probe.core.gate import QuantaGate
from probe.core.hooks import quanta_hooks, source_forward
from probe.models import create_model
from probe.models.paper_cnn import PAPER_CNN_LAYERS
from probe.settings import RunSettings
from probe.training.trainer import autocast_for, make_optimizer, memory_format_for

TARGETS = {"first": 1.05, "deepest": 1.40, "mean": 1.25, "reuse": 1.05}


def source_cache(source, layer: str, x: torch.Tensor, settings: RunSettings) -> torch.Tensor:
    """The source's tensors at ``layer`` for every example, as ProbeContext.source_tensors builds them."""
    with autocast_for(x.device, settings):
        return torch.cat([source_forward(source, layer, x[start : start + 256]) for start in range(0, len(x), 256)])


def measure_width(
    width: float,
    layers: list[str],
    repeats: int,
    batch_size: int,
    examples: int,
    clock: str = "wall",
    device: torch.device | None = None,
    settings: RunSettings | None = None,
) -> dict[str, tuple[list, list, float]]:
    """Per layer: round-by-round ratios QUANTA/plain (recompute, reuse) and the median plain step time."""
    device = torch.device("cpu") if device is None else device
    settings = settings or RunSettings()
    task = synthetic_task(examples, 1).to(device)
    torch.manual_seed(0)
    source = create_model("paper-cnn", 10, 3, (32, 32), width=width).eval().to(device)
    plain_target = create_model("paper-cnn", 10, 3, (32, 32), width=width).to(device)
    if memory_format_for(device, settings) is torch.channels_last:  # as probe.engine.run.run_one does for a target
        plain_target.to(memory_format=torch.channels_last)
    quanta_target = copy.deepcopy(plain_target)
    step = dict(split=task.train, batch_size=batch_size, settings=settings)
    plain = training_steps(lambda x, idx: plain_target(x), make_optimizer(plain_target, settings), **step)

    # a block of steps long enough (~0.3 s) for the clock, short enough to interleave often
    plain(1)
    block = max(1, round(0.3 / median(interleaved({"plain": plain}, 1, 1, warmup=0, clock=clock)["plain"])))

    results = {}
    for layer in layers:
        gate = QuantaGate(0.9).to(device)
        optimizer = make_optimizer(quanta_target, settings, gate)
        with quanta_hooks(source, quanta_target, layer, gate) as wiring:
            cache = source_cache(source, layer, task.train.x, settings)
            recompute = training_steps(lambda x, idx: wiring(x), optimizer, **step)
            # the gather run_one does for a cached source (index_select: 6× faster than cache[idx] on CPU)
            reuse = training_steps(
                lambda x, idx, cache=cache: wiring(x, z_source=cache.index_select(0, idx)), optimizer, **step
            )
            times = interleaved({"plain": plain, "recompute": recompute, "reuse": reuse}, repeats, block, clock=clock)
        results[layer] = (ratios(times, "recompute", "plain"), ratios(times, "reuse", "plain"), median(times["plain"]))
        print(f"  {layer} measured ({repeats} rounds of {block} steps per variant)", flush=True)
    return results


def report(width: float, results: dict[str, tuple[list, list, float]]) -> None:
    layers = list(results)
    recompute = {layer: median(results[layer][0]) for layer in layers}
    reuse = {layer: median(results[layer][1]) for layer in layers}
    print(f"\nwidth {width}: QUANTA step / plain step (median of round-by-round ratios; interquartile range)")
    print(f"  {'layer':<6} {'plain ms/step':>13} {'recompute':>10} {'IQR':>13} {'reuse':>7} {'IQR':>13}")
    for layer in layers:
        print(
            f"  {layer:<6} {results[layer][2] * 1000:13.1f} {recompute[layer]:10.3f} {spread(results[layer][0]):>13} "
            f"{reuse[layer]:7.3f} {spread(results[layer][1]):>13}"
        )
    first, deepest = layers[0], layers[-1]
    mean = sum(recompute.values()) / len(recompute)
    worst_reuse = max(reuse, key=reuse.get)
    checks = [
        (f"recompute, first layer ({first})", recompute[first], TARGETS["first"]),
        (f"recompute, deepest layer ({deepest})", recompute[deepest], TARGETS["deepest"]),
        ("recompute, mean over layers", mean, TARGETS["mean"]),
        (f"reuse, every layer (worst: {worst_reuse})", reuse[worst_reuse], TARGETS["reuse"]),
    ]
    for what, value, target in checks:
        print(f"  {what:<40} {value:6.3f}  target ≤ {target:.2f}  {verdict(value <= target)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.25])
    parser.add_argument("--layers", nargs="+", default=PAPER_CNN_LAYERS)
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds per layer")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: what each of the default jobs gets)"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--examples", type=int, default=256, help="in-memory training examples (and cached source tensors)"
    )
    add_clock_option(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    header(
        "QUANTA step overhead",
        batch=args.batch_size,
        repeats=args.repeats,
        examples=args.examples,
        clock=args.clock,
        freed_memory=retain_memory(),
    )
    for width in args.widths:
        print(f"\nwidth {width}:", flush=True)
        report(width, measure_width(width, args.layers, args.repeats, args.batch_size, args.examples, args.clock))


if __name__ == "__main__":
    main()
