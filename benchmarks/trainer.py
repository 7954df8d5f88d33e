"""Throughput of probe's trainer against a minimal hand-written PyTorch loop doing the same work.

Both train the same model (a plain paper CNN target, no gate) for one epoch over the same in-memory
data in the same random-batch fashion, then evaluate the test split (the hand loop: top-1 and loss;
probe: its five metrics). Images/s counts training images over the whole epoch, evaluation included.
"same Adam" is the optimizer probe builds (fused where PyTorch has it); the hand loop with PyTorch's
default Adam is shown too, as the loop a user would write.

    .venv/bin/python benchmarks/trainer.py [--width 0.25] [--examples 1024] [--repeats 5] [--threads 1]
        [--clock wall|cpu]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from _common import (
    add_clock_option,
    header,
    interleaved,
    median,
    ratios,
    retain_memory,
    spread,
    synthetic_task,
    verdict,
)

from probe.models import create_model
from probe.settings import RunSettings
from probe.training.trainer import fit, make_optimizer

TARGET = 0.95


def hand_written(model, optimizer, task, batch_size: int):
    """The loop a PyTorch user writes: randperm batches, forward, loss, backward, step; then a test pass."""
    generator = torch.Generator().manual_seed(0)
    x, y, x_test, y_test = task.train.x, task.train.y, task.test.x, task.test.y

    def epochs(k: int) -> None:
        for _ in range(k):
            model.train()
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), batch_size):
                idx = order[start : start + batch_size]
                loss = F.cross_entropy(model(x[idx]), y[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            model.eval()
            with torch.no_grad():
                correct, loss_sum = 0, 0.0
                for start in range(0, len(x_test), 1000):
                    logits = model(x_test[start : start + 1000])
                    loss_sum += F.cross_entropy(logits, y_test[start : start + 1000], reduction="sum").item()
                    correct += (logits.argmax(1) == y_test[start : start + 1000]).sum().item()

    return epochs


def probe_trainer(model, optimizer, task, settings: RunSettings):
    def epochs(k: int) -> None:
        for _ in range(k):
            fit(
                forward=lambda x, idx, split: model(x),
                trainable=model,
                optimizer=optimizer,
                task=task,
                settings=settings,
                seed=0,
                device=torch.device("cpu"),
            )

    return epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--examples", type=int, default=1024, help="training images per epoch (test: a quarter)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds of one epoch per variant")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    add_clock_option(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    header(
        "probe trainer vs a hand-written loop",
        width=args.width,
        examples=args.examples,
        batch=args.batch_size,
        repeats=args.repeats,
        clock=args.clock,
        freed_memory=retain_memory(),
    )

    task = synthetic_task(args.examples, args.examples // 4)
    settings = RunSettings(epochs=1, batch_size=args.batch_size, augment=False)
    torch.manual_seed(0)
    models = {
        name: create_model("paper-cnn", 10, 3, (32, 32), width=args.width) for name in ("probe", "hand", "hand_default")
    }
    for model in models.values():
        model.load_state_dict(models["probe"].state_dict())
    same_adam = make_optimizer(models["hand"], settings)
    variants = {
        "probe": probe_trainer(models["probe"], make_optimizer(models["probe"], settings), task, settings),
        "hand": hand_written(models["hand"], same_adam, task, args.batch_size),
        "hand_default": hand_written(
            models["hand_default"],
            torch.optim.Adam(models["hand_default"].parameters(), lr=settings.lr, weight_decay=settings.weight_decay),
            task,
            args.batch_size,
        ),
    }
    times = interleaved(variants, args.repeats, block=1, clock=args.clock)
    fused = same_adam.param_groups[0].get("fused")
    print(f"\nimages/s over an epoch of {args.examples} training images (median of {args.repeats} rounds)")
    for name, label in (
        ("probe", "probe.training.trainer.fit"),
        ("hand", f"hand loop, same Adam (fused={fused})"),
        ("hand_default", "hand loop, default Adam"),
    ):
        print(f"  {label:<38} {args.examples / median(times[name]):9.1f} images/s")
    same = [1 / r for r in ratios(times, "probe", "hand")]
    default = [1 / r for r in ratios(times, "probe", "hand_default")]
    print(
        f"  probe / hand loop (same Adam)          {median(same):6.3f}  ({spread(same)})  target ≥ {TARGET}  "
        f"{verdict(median(same) >= TARGET)}"
    )
    print(f"  probe / hand loop (default Adam)       {median(default):6.3f}  ({spread(default)})")


if __name__ == "__main__":
    main()
