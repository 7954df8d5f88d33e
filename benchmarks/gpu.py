"""The GPU path: throughput fp32 vs bf16 + channels_last, QUANTA overhead per layer, host syncs per epoch.

Only runs where CUDA is present (else prints "no CUDA device: skipped"). Paper CNN at full width on
CIFAR-shaped data kept on the device, as probe keeps it.

1. images/s of plain target training at batch 32 and 512: fp32 NCHW against bf16 autocast +
   channels_last (probe's CUDA defaults: settings.amp, settings.channels_last);
2. QUANTA step / plain step per layer in probe's CUDA mode (recomputed and reused source tensors);
3. host synchronisations during one epoch of a QUANTA run (probe.engine.run.run_one), counted with
   torch.cuda.set_sync_debug_mode, for two epoch lengths: equal counts mean none happens per step;
4. with --compile: eager against torch.compile of the target (Module.compile), bf16 + channels_last.

    .venv/bin/python benchmarks/gpu.py [--batches 32 512] [--repeats 5] [--compile]
"""

from __future__ import annotations

import argparse
import warnings

import torch
from _common import header, interleaved, median, ratios, spread, synthetic_task, training_steps
from overhead import measure_width, report

from probe.data import default_augment
from probe.models import create_model
from probe.models.paper_cnn import PAPER_CNN_LAYERS
from probe.settings import RunSettings
from probe.training.trainer import make_optimizer, memory_format_for

FP32 = RunSettings(amp=False, channels_last=False)
FAST = RunSettings(amp=True, channels_last=True)


def plain_steps(
    settings: RunSettings, task, batch_size: int, device: torch.device, width: float, compile_target: bool = False
):
    torch.manual_seed(0)
    target = create_model("paper-cnn", 10, 3, (32, 32), width=width).to(device)
    if memory_format_for(device, settings) is torch.channels_last:
        target.to(memory_format=torch.channels_last)
    if compile_target:
        target.compile()
    return training_steps(
        lambda x, idx: target(x), make_optimizer(target, settings), task.train, batch_size, settings=settings
    )


def throughput(args, device: torch.device) -> None:
    print(f"\n1. plain training throughput, paper CNN width {args.width} (images/s; median of interleaved rounds)")
    print(f"  {'batch':>5} {'fp32 NCHW':>11} {'bf16 + channels_last':>21} {'speed-up':>9}")
    for batch in args.batches:
        task = synthetic_task(max(16 * batch, 4096), 1).to(device)
        steps = max(1, args.images // batch)
        times = interleaved(
            {
                "fp32": plain_steps(FP32, task, batch, device, args.width),
                "fast": plain_steps(FAST, task, batch, device, args.width),
            },
            args.repeats,
            steps,
            warmup=3,
        )
        gain = [1 / r for r in ratios(times, "fast", "fp32")]
        print(
            f"  {batch:5d} {batch / median(times['fp32']):11.0f} {batch / median(times['fast']):21.0f} "
            f"{median(gain):9.2f}  ({spread(gain)})"
        )


def overhead(args, device: torch.device) -> None:
    for batch in args.batches:
        print(f"\n2. QUANTA overhead, bf16 + channels_last, batch {batch}:", flush=True)
        results = measure_width(
            args.width, PAPER_CNN_LAYERS, args.repeats, batch, max(16 * batch, 4096), device=device, settings=FAST
        )
        report(args.width, results)


def count_syncs(run) -> int:
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def syncs(device: torch.device) -> None:
    from probe.engine.context import ProbeContext
    from probe.engine.run import run_one
    from probe.models.targets import TargetFactory
    from probe.results import RunSpec

    print("\n3. host synchronisations in one epoch of a QUANTA run (probe.engine.run.run_one, conv4)")
    source = create_model("paper-cnn", 10, 3, (32, 32), width=1.0).eval().to(device)
    for augment, cache in ((True, False), (False, True)):
        counts = {}
        for steps in (20, 40):
            task = synthetic_task(32 * steps, 64)
            task.augment = default_augment("cifar10")
            task = task.to(device)
            settings = FAST.with_(epochs=1, augment=augment, cache_source=cache)
            context = ProbeContext(source, TargetFactory("paper-cnn", {"width": 1.0}), {"AnB": task}, settings, device)
            context.source_tensors("conv4", "AnB")  # the cache (when used) is built before the epoch
            counts[steps] = count_syncs(lambda context=context: run_one(context, RunSpec("conv4", 0.9, "AnB", 0)))
        mode = "augmented, source recomputed" if augment else "not augmented, source cached"
        verdict = "none per step" if counts[20] == counts[40] else "SOME PER STEP"
        print(f"  {mode:<30} 20 steps: {counts[20]:3d} syncs, 40 steps: {counts[40]:3d} syncs  {verdict}")


def compiled(args, device: torch.device) -> None:
    print("\n4. torch.compile of the target (bf16 + channels_last; first call compiles, excluded)")
    for batch in args.batches:
        task = synthetic_task(max(16 * batch, 4096), 1).to(device)
        steps = max(1, args.images // batch)
        times = interleaved(
            {
                "eager": plain_steps(FAST, task, batch, device, args.width),
                "compiled": plain_steps(FAST, task, batch, device, args.width, True),
            },
            args.repeats,
            steps,
            warmup=3,
        )
        gain = [1 / r for r in ratios(times, "compiled", "eager")]
        print(
            f"  batch {batch:4d}: eager {batch / median(times['eager']):8.0f} images/s, compiled "
            f"{batch / median(times['compiled']):8.0f} images/s, speed-up {median(gain):.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 512])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the target")
    parser.add_argument("--images", type=int, default=2048, help="images per timed block")
    # a smoke test of this script on a machine without a GPU: --device cpu --width 0.25 --batches 8 --images 16
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    parser.add_argument("--width", type=float, default=1.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: skipped")
        return
    header("GPU path", batches=args.batches, repeats=args.repeats)
    if device.type == "cuda":
        torch.cuda.init()
        print(
            f"# device: {torch.cuda.get_device_name(device)}; cuDNN {torch.backends.cudnn.version()}; "
            f"TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, TF32 cuDNN {torch.backends.cudnn.allow_tf32}"
        )
    throughput(args, device)
    overhead(args, device)
    if device.type == "cuda":
        syncs(device)
    if args.compile:
        compiled(args, device)


if __name__ == "__main__":
    main()
