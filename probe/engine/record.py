"""What a measurement records about itself: the resume fingerprint, the environment, the source's hash."""

from __future__ import annotations

import hashlib
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .._version import __version__
from .context import ProbeContext


def environment(device: torch.device) -> dict:
    env = {
        "quanta_probe": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    import torchvision  # a dependency, imported only here: `import probe` stays light

    env["torchvision"] = torchvision.__version__
    try:
        root = Path(__file__).resolve().parents[2]
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if commit.returncode == 0 and (root / "probe").is_dir():
            env["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return env


def state_dict_sha256(model: nn.Module) -> str:
    """A hash of every tensor in ``model.state_dict()`` (names, shapes, dtypes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def fingerprint(context: ProbeContext, source_record: dict, layers: Sequence[str]) -> dict:
    """What must match for a results folder to be resumed: everything that changes a run's numbers."""
    settings = context.settings.to_dict()
    for knob in ("jobs", "cache_source", "cache_budget_mb", "device"):
        settings.pop(knob, None)
    return {
        # Runs of another release are not mixed into one folder (the trainer may have changed).
        "quanta_probe": __version__,
        "arch": source_record.get("arch") or source_record.get("class"),
        "arch_options": source_record.get("arch_options", {}),
        "source_sha256": source_record.get("sha256") or source_record.get("state_sha256"),
        "source_dataset": source_record.get("dataset"),
        "tasks": {name: str(task.spec) for name, task in context.tasks.items()},
        "layers": list(layers),
        "settings": settings,
    }
