"""One dataclass of run settings, shared by the Python API and the CLI, and the presets it starts from."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .errors import SettingsError

# How the gate's v = (vS, vT) is optimised: "adam" (the paper: one Adam over target and gate) or "sgd" (plain
# gradient steps, whose size shrinks with the gate's gradient, so λS can come to rest; Adam's steps stay ≈ lr).
GATE_OPTIMIZERS = ("adam", "sgd")
# How the learning rates (the target's and the gate's alike) change over a run: "constant" (the paper) or
# "cosine" (from the set value down to ~0 at the last step, so the epochs that are averaged see λS at rest).
LR_SCHEDULES = ("constant", "cosine")


def lr_scale(schedule: str, step: int, total: int) -> float:
    """The factor on every learning rate at optimiser step ``step`` (0-based) of ``total``."""
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))
    return 1.0


def lr_scale_sum(schedule: str, steps: int) -> float:
    """Σ of :func:`lr_scale` over a run of ``steps`` steps: ``steps`` when constant, (steps + 1) / 2 for cosine."""
    if schedule == "cosine":
        return (max(steps, 1) + 1) / 2  # Σ_{t<T} cos(πt/T) = 1 exactly
    return float(max(steps, 1))


@dataclass(frozen=True)
class RunSettings:
    """How every QUANTA run of a measurement is trained.

    Defaults follow the paper (Adam, lr 1e-4, weight decay 1e-6, batch 32, 60 epochs, λS init 0.90). The
    gate's learning rate is the one setting the paper ties to the data's size without saying so: Adam moves
    each of vS, vT by about ``gate_lr`` per step, so λS can only travel ``gate_lr × steps``
    (docs/protocol.md). It is, in order: ``gate_lr`` when set; else ``gate_budget / steps`` (the budget rule:
    the same travel whatever the run's length); else ``lr`` (the paper exactly).
    """

    epochs: int = 60
    batch_size: int = 32
    # At most this many training images per class (None: all): a fixed stratified subset of the training split
    # (probe.data.task.limit_per_class), the same images for the same task and N, the test split untouched.
    train_size: int | None = None
    lr: float = 1e-4
    weight_decay: float = 1e-6
    gate_lr: float | None = None
    gate_budget: float | None = None
    # The most the budget rule may set the gate's (peak) lr to: on very short runs budget / steps exceeds 1 and λS
    # jumps to 0 or 1 in a few steps (docs/protocol.md, "Fashion-MNIST", the small end). None: no cap.
    gate_lr_max: float | None = None
    gate_optimizer: str = "adam"
    lr_schedule: str = "constant"
    init: tuple[float, ...] = (0.90,)
    runs: int = 1
    seed: int = 0
    augment: bool = True
    last_epochs: int = 10
    device: str = "auto"
    # performance knobs (they never change results on CPU)
    cache_source: bool = True
    cache_budget_mb: int = 1024
    jobs: int = 1
    amp: bool = True
    channels_last: bool = True
    compile: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.init, (int, float)):
            object.__setattr__(self, "init", (float(self.init),))
        object.__setattr__(self, "init", tuple(float(v) for v in self.init))
        self.validate()

    def validate(self) -> None:
        """Raise SettingsError with one actionable line for any value out of range."""
        for name in ("epochs", "batch_size", "runs", "last_epochs", "jobs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SettingsError(f"{name} must be a whole number ≥ 1, got {value!r}")
        if self.train_size is not None and (
            not isinstance(self.train_size, int) or isinstance(self.train_size, bool) or self.train_size < 1
        ):
            raise SettingsError(f"train_size must be a whole number of images per class ≥ 1, got {self.train_size!r}")
        for name in ("lr", "gate_lr", "gate_budget", "gate_lr_max"):
            value = getattr(self, name)
            if value is None and name != "lr":
                continue
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise SettingsError(f"{name} must be a positive number, got {value!r}")
        if self.gate_optimizer not in GATE_OPTIMIZERS:
            raise SettingsError(f"unknown gate_optimizer {self.gate_optimizer!r}: use {' or '.join(GATE_OPTIMIZERS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise SettingsError(f"unknown lr_schedule {self.lr_schedule!r}: use {' or '.join(LR_SCHEDULES)}")
        if not math.isfinite(self.weight_decay) or self.weight_decay < 0:
            raise SettingsError(f"weight_decay must be ≥ 0, got {self.weight_decay!r}")
        if not self.init:
            raise SettingsError("init needs at least one λS value in (0, 1), e.g. 0.9")
        for value in self.init:
            if not 0.0 < value < 1.0:
                raise SettingsError(
                    f"init λS must lie strictly between 0 and 1 (the paper uses 0.9, 0.75, 0.5), got {value}"
                )
        if self.cache_budget_mb < 0:
            raise SettingsError(f"cache_budget_mb must be ≥ 0, got {self.cache_budget_mb}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise SettingsError(f"unknown device '{self.device}': use auto, cpu or cuda")

    def steps_per_run(self, train_examples: int) -> int:
        """Optimiser steps of one training on ``train_examples`` examples (the last batch may be short)."""
        return self.epochs * math.ceil(train_examples / self.batch_size)

    def gate_lr_for(self, steps: int) -> float:
        """The gate's learning rate for a run of ``steps`` steps: gate_lr, else from gate_budget (at most
        gate_lr_max), else lr.

        The budget is the gate's summed step size over the run, so under a schedule the set (peak) value is
        the budget over the schedule's summed factors ((steps + 1) / 2 for cosine), not over the steps. A run too
        short for the budget at gate_lr_max travels less: its recorded gate budget says so.
        """
        if self.gate_lr is not None:
            return self.gate_lr
        if self.gate_budget is not None:
            rate = self.gate_budget / lr_scale_sum(self.lr_schedule, steps)  # ≥ 1: at least one step
            return rate if self.gate_lr_max is None else min(rate, self.gate_lr_max)
        return self.lr

    def with_(self, **changes) -> RunSettings:
        """A copy with ``changes`` applied (validated); unknown names are a SettingsError."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise SettingsError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return replace(self, **changes)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["init"] = list(self.init)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> RunSettings:
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {k: (tuple(v) if k == "init" else v) for k, v in data.items() if k in known}
        return cls(**values)


def averaged_epochs(epochs: int) -> int:
    """The epochs whose mean is a cosine-scheduled run's figure: its last quarter, where both learning rates are
    below 15 % of their peak (at least 2, so that a run long enough can be judged settled). The digits preset's 3
    of 12 epochs is this rule; on Fashion-MNIST the preset's fixed 10 of a 20-epoch run averaged a still-moving
    λS (docs/protocol.md, "Fashion-MNIST")."""
    return max(2, math.ceil(epochs / 4))


def init_seed(role: str, seed: int) -> int:
    """The seed that initialises a model of ``role`` ("source" or "target") for run seed ``seed``.

    Sources and targets draw from distinct streams, so a target of run seed 0 never starts from the very
    weights its source started from (which would make the AnA control a copy of the source's training).
    """
    import hashlib

    return int.from_bytes(hashlib.sha256(f"quanta-probe/{role}/{seed}".encode()).digest()[:7], "big")


# What `probe scan` does without options: a paper-cnn source trained on digits 0-4 (the embedded demo).
DEFAULT_ARCH = "paper-cnn"
DEFAULT_SOURCE_DATA = "digits[0-4]"

# Presets: the values a request starts from before the user's own settings (one home for each default).
# experiments/protocol.py chose them (docs/protocol.md). GATE_BUDGET is the gate's travel, the sum of its learning
# rate over the run's steps, that made λS a measurement on digits: a cosine schedule from gate lr 0.1 over the 276
# steps of 12 epochs (0.1 × 277 / 2). The gate's peak lr is GATE_BUDGET / Σ(schedule), so a run of any length, on
# data of any size, gets the same travel (the paper's constant 1e-4 over ~94,000 CIFAR steps is ~9.4).
# DEFAULT_PRESET is the paper's protocol with that gate and schedule; PAPER_PRESET is RunSettings' own defaults,
# the paper exactly (lr 1e-4, gate lr = lr, constant, 60 epochs, augmentation). DIGITS_PRESET: a target slow enough
# for the gate to decide and fast enough to make its own deep layers (lr 3e-4: at 1e-3 λS stays near its init, at
# 1e-4 λS keeps conv5-conv6 that hurt the target), both learning rates on a cosine schedule so that λS comes to
# rest, no augmentation; its sources keep the settings that train a good digits source quickly
# (DIGITS_SOURCE_PRESET). A preset on the cosine schedule averages its runs' last quarter (averaged_epochs: 3 of
# 12 on digits, 15 of 60), whatever the epochs the user asks for, unless the request sets last_epochs itself.
# GATE_LR_MAX caps the budget rule's peak at digits' own 0.1, the largest rate at which λS was validated: runs
# shorter than 277 steps (--train-size 10 on Fashion-MNIST: 40 steps, peak 0.68) travel less instead of jumping.
GATE_BUDGET = 13.85
GATE_LR_MAX = 0.1
PAPER_PRESET: dict = {}
DEFAULT_PRESET: dict = dict(gate_budget=GATE_BUDGET, gate_lr_max=GATE_LR_MAX, lr_schedule="cosine")
DIGITS_PRESET: dict = dict(
    epochs=12, lr=3e-4, gate_budget=GATE_BUDGET, gate_lr_max=GATE_LR_MAX, lr_schedule="cosine", augment=False
)
DIGITS_SOURCE_PRESET: dict = dict(epochs=12, lr=1e-3, augment=True)
PRESETS: dict[str, dict] = {"default": DEFAULT_PRESET, "paper": PAPER_PRESET, "digits": DIGITS_PRESET}
SOURCE_PRESETS: dict[str, dict] = {"default": PAPER_PRESET, "paper": PAPER_PRESET, "digits": DIGITS_SOURCE_PRESET}


def check_preset(preset: str) -> str:
    """``preset`` when it names a preset, else a one-line SettingsError."""
    if preset not in PRESETS:
        raise SettingsError(f"unknown preset '{preset}': use {', '.join(PRESETS)}")
    return preset


def preset_settings(preset: str) -> dict:
    """The run settings of the preset named ``preset``."""
    return dict(PRESETS[check_preset(preset)])


def source_preset_settings(preset: str) -> dict:
    """The settings a source of the preset named ``preset`` is trained with."""
    return dict(SOURCE_PRESETS[check_preset(preset)])
