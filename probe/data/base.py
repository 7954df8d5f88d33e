"""A base dataset as read from disk: raw uint8 images, labels and the train split's normalisation."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class BaseData:
    """A full base dataset as loaded from disk: raw uint8 images and the train normalisation."""

    train_x: torch.Tensor  # uint8 (N, C, H, W)
    train_y: torch.Tensor  # int64 (N,)
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: torch.Tensor  # float32 (C,), raw pixel units
    std: torch.Tensor
    class_names: tuple[str, ...]


def _channel_stats(x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact per-channel mean and (population) std of uint8 images (N, C, H, W), via histograms."""
    values = np.arange(256, dtype=np.float64)
    means, stds = [], []
    for ch in range(x.shape[1]):
        hist = np.bincount(x[:, ch].ravel(), minlength=256).astype(np.float64)
        mean = (hist * values).sum() / hist.sum()
        var = (hist * (values - mean) ** 2).sum() / hist.sum()
        means.append(mean)
        stds.append(math.sqrt(var) if var > 0 else 1.0)
    return torch.tensor(means, dtype=torch.float32), torch.tensor(stds, dtype=torch.float32)


def make_base(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, names: tuple[str, ...]
) -> BaseData:
    mean, std = _channel_stats(train_x)
    return BaseData(
        torch.from_numpy(np.ascontiguousarray(train_x)),
        torch.from_numpy(np.asarray(train_y, dtype=np.int64)),
        torch.from_numpy(np.ascontiguousarray(test_x)),
        torch.from_numpy(np.asarray(test_y, dtype=np.int64)),
        mean,
        std,
        names,
    )
