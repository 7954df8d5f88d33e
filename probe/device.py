"""Device selection: CUDA when present and asked for, CPU otherwise."""

from __future__ import annotations

import torch

from .errors import DeviceError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; asking for CUDA without one is a DeviceError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device '{name}' was asked for but this machine has no CUDA GPU; use --device cpu or auto"
            )
        return torch.device(name)
    raise DeviceError(f"unknown device '{name}': use auto, cpu or cuda")
