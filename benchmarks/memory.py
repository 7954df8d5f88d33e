"""Peak resident memory of a QUANTA run against training the same target alone.

Each variant runs in a fresh subprocess (so peaks do not mix) that trains one epoch on in-memory
CIFAR-shaped data and reports its peak RSS (VmHWM, else ru_maxrss). A QUANTA run is probe.engine.run.run_one,
exactly as a scan calls it; the plain run is probe.training.trainer.fit on the target alone. "idle" is a
process that imports everything and builds the data but trains nothing: the floor both share.

    .venv/bin/python benchmarks/memory.py [--width 1] [--examples 512] [--layers conv1 conv4 fc]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch
from _common import header, retain_memory, synthetic_task, verdict

TARGET = 1.3


def peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def child(kind: str, layer: str, width: float, examples: int, cache: bool) -> None:
    from probe.engine.context import ProbeContext
    from probe.engine.run import run_one
    from probe.models import create_model
    from probe.models.targets import TargetFactory
    from probe.results import RunSpec
    from probe.settings import RunSettings
    from probe.training.trainer import fit, make_optimizer

    torch.set_num_threads(1)
    retain_memory()  # as the probe command does; PROBE_RETAIN_MEMORY=0 (inherited) measures the default
    device = torch.device("cpu")
    task = synthetic_task(examples, examples // 4)
    settings = RunSettings(epochs=1, augment=False, cache_source=cache)
    torch.manual_seed(0)
    if kind == "plain":
        target = create_model("paper-cnn", 10, 3, (32, 32), width=width)
        fit(
            forward=lambda x, idx, split: target(x),
            trainable=target,
            optimizer=make_optimizer(target, settings),
            task=task,
            settings=settings,
            seed=0,
            device=device,
        )
    elif kind == "quanta":
        source = create_model("paper-cnn", 10, 3, (32, 32), width=width).eval()
        context = ProbeContext(source, TargetFactory("paper-cnn", {"width": width}), {"AnB": task}, settings, device)
        run_one(context, RunSpec(layer, 0.9, "AnB", 0))
    print(json.dumps({"peak_mb": peak_rss_mb()}))


def measure(kind: str, args, layer: str = "-", cache: bool = False) -> float:
    command = [
        sys.executable,
        __file__,
        "--child",
        kind,
        layer,
        "--width",
        str(args.width),
        "--examples",
        str(args.examples),
    ]
    if cache:
        command.append("--cache")
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])["peak_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--examples", type=int, default=512, help="training images in memory (test: a quarter)")
    parser.add_argument("--layers", nargs="+", default=["conv1", "conv4", "fc"])
    parser.add_argument("--child", nargs=2, metavar=("KIND", "LAYER"), help=argparse.SUPPRESS)
    parser.add_argument("--cache", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.width, args.examples, args.cache)
        return

    header(
        "peak memory: QUANTA run vs plain target training",
        width=args.width,
        examples=args.examples,
        freed_memory=retain_memory(),
    )
    idle, plain = measure("idle", args), measure("plain", args)
    print(f"\npeak RSS, one epoch of {args.examples} 3×32×32 images, paper CNN width {args.width}, batch 32, CPU")
    print(f"  {'run':<36} {'peak MB':>9} {'/ plain':>8} {'above idle / plain above idle':>30}")
    print(f"  {'idle (imports + data)':<36} {idle:9.0f}")
    print(f"  {'plain target':<36} {plain:9.0f} {1:8.3f} {1:30.3f}")
    worst = 0.0
    for layer in args.layers:
        for cache in (False, True):
            peak = measure("quanta", args, layer, cache)
            label = f"QUANTA {layer}, " + ("cached source" if cache else "recomputed source")
            ratio = peak / plain
            print(f"  {label:<36} {peak:9.0f} {ratio:8.3f} {(peak - idle) / (plain - idle):30.3f}", flush=True)
            if not cache:
                worst = max(worst, ratio)
    print(f"  worst QUANTA/plain, recomputed source: {worst:.3f}  target ≤ {TARGET}  {verdict(worst <= TARGET)}")
    print("  (a cached source adds its tensors for every example, bounded by settings.cache_budget_mb)")


if __name__ == "__main__":
    main()
