"""The command-line options shared by the commands, each with its help text. Every default a help text shows is
read from where it is decided (``RunSettings`` and the presets of :mod:`probe.settings`, the back-ends), never
retyped here: :func:`shown_default` renders it.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from ..backends import default_jobs, execute_ray
from ..baselines import BASELINES
from ..data.spec import default_target
from ..settings import (
    DEFAULT_ARCH,
    DEFAULT_SOURCE_DATA,
    GATE_OPTIMIZERS,
    LR_SCHEDULES,
    PRESETS,
    SOURCE_PRESETS,
    RunSettings,
)
from ..util.cache import DEFAULT_DATA_DIR

# The settings each preset gives (probe scan's runs; probe train's and the scan's own source), by preset name.
SCAN_DEFAULTS = {name: RunSettings().with_(**values) for name, values in PRESETS.items()}
SOURCE_DEFAULTS = {name: RunSettings().with_(**values) for name, values in SOURCE_PRESETS.items()}
_PAPER = SCAN_DEFAULTS["paper"]


def shown(value: Any) -> str:
    """A setting as a help text shows it: on/off, 0.0001, 0.9,0.75, none."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(shown(v) for v in value)
    return str(value)


def shown_default(
    name: str, presets: Mapping[str, RunSettings] = SCAN_DEFAULTS, others: tuple[str, ...] = ("digits",)
) -> str:
    """``[default: V; digits: W]``: setting ``name`` under the default preset, then under each preset of
    ``others`` where it differs (``paper`` is named as ``--preset paper``; ``digits`` is the digits data's own)."""
    value = getattr(presets["default"], name)
    parts = [shown(value)]
    for other in others:
        if getattr(presets[other], name) != value:
            label = "--preset paper" if other == "paper" else other
            parts.append(f"{label}: {shown(getattr(presets[other], name))}")
    return "\\[default: " + "; ".join(parts) + "]"


class Backend(str, Enum):
    local = "local"
    ray = "ray"


ArchOption = Annotated[
    str | None,
    typer.Option(
        "--arch",
        help="Architecture: paper-cnn, a timm name (resnet18) or tv:NAME for torchvision. "
        f"\\[default: {DEFAULT_ARCH}, or the checkpoint's]",
    ),
]
EpochsOption = Annotated[
    int | None, typer.Option("--epochs", help=f"Training epochs. {shown_default('epochs', others=('digits', 'paper'))}")
]
BatchOption = Annotated[
    int | None, typer.Option("--batch-size", help=f"Mini-batch size. {shown_default('batch_size')}")
]
LrOption = Annotated[
    float | None, typer.Option("--lr", help=f"Adam learning rate. {shown_default('lr', others=('digits', 'paper'))}")
]
# probe train: the same options, with the defaults a source is trained with
SourceEpochsOption = Annotated[
    int | None, typer.Option("--epochs", help=f"Training epochs. {shown_default('epochs', SOURCE_DEFAULTS)}")
]
SourceLrOption = Annotated[
    float | None, typer.Option("--lr", help=f"Adam learning rate. {shown_default('lr', SOURCE_DEFAULTS)}")
]
TrainSizeOption = Annotated[
    int | None,
    typer.Option(
        "--train-size",
        min=1,
        help="At most N training images per class: a fixed stratified subset of the training split (the same images "
        "for the same task and N; the test split untouched). probe scan: the target's (and AnA's); probe train: the "
        "source's. \\[default: every image]",
    ),
]
SeedOption = Annotated[
    int | None, typer.Option("--seed", help=f"Seed of the first run (run k uses seed+k). {shown_default('seed')}")
]
DeviceOption = Annotated[
    str | None, typer.Option("--device", help=f"auto, cpu, cuda or cuda:N. {shown_default('device')}")
]
DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Folder with the CIFAR, Fashion-MNIST and torchvision (tv:NAME) data (Fashion-MNIST also from Debian's "
        f"/usr/share/datasets/fashion-mnist). \\[default: $PROBE_DATA or {DEFAULT_DATA_DIR}]",
    ),
]
DownloadOption = Annotated[
    bool,
    typer.Option(
        "--download", help="Download CIFAR-10/100, Fashion-MNIST or a tv:NAME dataset into --data-dir when missing."
    ),
]
ImageSizeOption = Annotated[
    int | None,
    typer.Option(
        "--image-size",
        help="Resize images to this size: shorter side, then centre crop; images from anywhere (folders, tv:, hf:) "
        "and built-in data alike (e.g. 28: digits beside Fashion-MNIST). "
        "\\[default: a pretrained model's input size, else the images' own]",
    ),
]
ImageColumnOption = Annotated[
    str | None,
    typer.Option(
        "--image-column",
        help="Hugging Face data (hf:, save_to_disk folders): the image column to read. \\[default: the one "
        "datasets.Image column]",
    ),
]
LabelColumnOption = Annotated[
    str | None,
    typer.Option(
        "--label-column",
        help="Hugging Face data: the label column, e.g. coarse_label of CIFAR-100. \\[default: the one ClassLabel "
        "column]",
    ),
]
WidthOption = Annotated[
    float | None, typer.Option("--width", help="paper-cnn only: scale every layer's width (1.0 = the paper's CNN).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout and nothing else.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display and no messages on stderr.")]
AugmentOption = Annotated[
    bool | None,
    typer.Option(
        "--augment/--no-augment",
        help=f"Train with data augmentation (random crops and flips). {shown_default('augment')}",
    ),
]
SourceAugmentOption = Annotated[
    bool | None,
    typer.Option(
        "--augment/--no-augment",
        help=f"Train with data augmentation (random crops and flips). {shown_default('augment', SOURCE_DEFAULTS)}",
    ),
]
PresetOption = Annotated[
    str | None,
    typer.Option(
        "--preset",
        help="Start from a preset: default (the paper's protocol, the gate lr from the gate budget), paper (the "
        f"paper exactly: lr {shown(_PAPER.lr)}, gate lr = lr, {_PAPER.epochs} epochs, "
        f"{'augmentation' if _PAPER.augment else 'no augmentation'}) or digits (docs/protocol.md). Options "
        "given beside it win. \\[default: digits for digits, else default]",
    ),
]

# probe scan
SourceOption = Annotated[
    Path | None,
    typer.Option(
        "--source",
        help="Source checkpoint (probe train output, a state_dict or .safetensors); with --pretrained, a file "
        "of pretrained weights for --arch. \\[default: train one, cached]",
    ),
]
TargetOption = Annotated[
    str | None,
    typer.Option(
        "--target",
        help="Target task, e.g. digits[5-9], cifar100, an image folder ./flowers, tv:SVHN, hf:beans, each with an "
        "optional class subset [0-4]. \\[default: the source's pairing: "
        + ", ".join(f"{source} → {default_target(source)}" for source in (DEFAULT_SOURCE_DATA, "cifar10"))
        + "]",
    ),
]
SourceDataOption = Annotated[
    str | None,
    typer.Option(
        "--source-data",
        help="The source's own task (for AnA and plain state_dicts). \\[default: the checkpoint's record, else "
        f"{DEFAULT_SOURCE_DATA}]",
    ),
]
LayersOption = Annotated[
    list[str] | None,
    typer.Option(
        "--layers",
        help="Layers to probe: names or glob patterns, repeatable or comma-separated (conv1,fc or 'conv*'). "
        "\\[default: the architecture's default probe set, marked ✓ by probe layers]",
    ),
]
InitOption = Annotated[
    list[str] | None,
    typer.Option(
        "--init",
        help="Initial λS, repeatable or comma-separated; each value is a separate series (the paper: "
        f"0.9,0.75,0.5). {shown_default('init')}",
    ),
]
RunsOption = Annotated[
    int | None,
    typer.Option(
        "--runs", help=f"Runs (seeds) per layer and init; the table shows mean ± std. {shown_default('runs')}"
    ),
]
GateLrOption = Annotated[
    float | None,
    typer.Option(
        "--gate-lr",
        help="Learning rate of the gate (vS, vT): λS can move about gate_lr × steps. Wins over --gate-budget. "
        "\\[default: --gate-budget / steps; --preset paper: = --lr]",
    ),
]
GateBudgetOption = Annotated[
    float | None,
    typer.Option(
        "--gate-budget",
        help="The gate's travel, its learning rate summed over the run's steps: the gate lr becomes BUDGET / steps "
        "(its peak: BUDGET / ((steps + 1) / 2) under cosine) for any run length (ignored with --gate-lr). "
        f"{shown_default('gate_budget', others=('digits', 'paper'))}",
    ),
]
GateLrMaxOption = Annotated[
    float | None,
    typer.Option(
        "--gate-lr-max",
        help="The most --gate-budget may set the gate's (peak) lr to: a run too short for the budget travels less "
        f"instead of jumping λS to 0 or 1 in a few steps. {shown_default('gate_lr_max', others=('digits', 'paper'))}",
    ),
]
GateOptimizerOption = Annotated[
    str | None,
    typer.Option(
        "--gate-optimizer",
        help=f"{' or '.join(GATE_OPTIMIZERS)}, for the gate's vS, vT (the paper: {_PAPER.gate_optimizer}). "
        f"{shown_default('gate_optimizer', others=('digits', 'paper'))}",
    ),
]
LrScheduleOption = Annotated[
    str | None,
    typer.Option(
        "--lr-schedule",
        help=f"{' or '.join(LR_SCHEDULES)} (cosine: both learning rates decay to ~0 by the last step; the gate lr "
        f"from --gate-budget is then its peak). {shown_default('lr_schedule', others=('digits', 'paper'))}",
    ),
]
ControlOption = Annotated[
    bool, typer.Option("--control", help="Also run the AnA control (target task = the source's task).")
]
OutOption = Annotated[
    Path | None,
    typer.Option(
        "--out",
        help="Results folder: results.json, results.csv, one file per run, transferability.png, dynamics.png. "
        "Re-running resumes.",
    ),
]
FreshOption = Annotated[bool, typer.Option("--fresh", help="Discard the runs already in --out and start over.")]
JobsOption = Annotated[
    int | None,
    typer.Option(
        "--jobs",
        help="Runs trained in parallel by the local backend (worker processes). \\[default: one per CPU core; "
        f"{default_jobs(device='cuda')} on a GPU]",
    ),
]
BaselinesOption = Annotated[
    list[str] | None,
    typer.Option(
        "--baselines",
        help=f"Also compute baselines per layer, comma-separated: {', '.join(BASELINES)} (docs/baselines.md).",
    ),
]
BackendOption = Annotated[
    Backend, typer.Option("--backend", help="Where runs execute: local (this machine) or ray (a Ray cluster).")
]
AddressOption = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="ray: address of the cluster (e.g. ray://head:10001). \\[default: start or join a local one]",
    ),
]
GpusPerRunOption = Annotated[
    float | None, typer.Option("--gpus-per-run", help="ray: GPUs reserved by each run (fractions share a GPU).")
]
CpusPerRunOption = Annotated[
    int | None,
    typer.Option(
        "--cpus-per-run",
        help="ray: CPUs reserved by each run (also its torch threads). "
        f"\\[default: {inspect.signature(execute_ray).parameters['cpus_per_run'].default}]",
    ),
]
PretrainedOption = Annotated[
    bool,
    typer.Option(
        "--pretrained",
        help="Use the timm/torchvision pretrained weights of --arch as the source (a cached copy first, else "
        "downloaded by timm/torchvision; HF_HUB_OFFLINE=1 never downloads).",
    ),
]
