"""What training reads: a :class:`Split` (labels and images, gathered per batch) and a :class:`TaskData`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .augment import AugmentConfig
from .spec import DatasetSpec


class Split:
    """One split: labels ``y`` int64 (N,) in 0..K-1 and the images, read per batch with :meth:`take` / :meth:`rows`.

    Built-in datasets hold their images as one normalised float32 tensor (N, C, H, W). Images from anywhere
    hold the cache's array itself (memory-mapped on the CPU, or copied once to the device as it is: uint8, or
    float32 for data given already normalised) with ``mean``/``std`` (C,) in its units (0 and 1 for data used
    as given) and, for a class subset, ``index`` (the rows of the subset): a batch is gathered, converted to
    float and normalised where it is used, so memory is bounded by the batch.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mean: torch.Tensor | None = None,
        std: torch.Tensor | None = None,
        index: torch.Tensor | None = None,
        path: str | None = None,
    ) -> None:
        self.data, self.y, self.mean, self.std, self.index = x, y, mean, std, index
        self.path = path  # the .npy file ``data`` maps, if any: other processes map it too instead of a copy

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self.path is not None and self.data.device.type == "cpu":
            state["data"] = None  # sent by name: the worker maps the same cache file (no copy of the images)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.data is None and self.path is not None:
            import os
            import warnings

            import numpy as np

            from ..errors import DataError

            if not os.path.isfile(self.path):
                raise DataError(
                    f"the image cache {self.path} is not on this machine; Ray workers on other machines need "
                    "PROBE_CACHE on a shared file system"
                )

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                self.data = torch.from_numpy(np.load(self.path, mmap_mode="c"))

    @property
    def device(self) -> torch.device:
        return self.y.device

    @property
    def raw(self) -> bool:
        """Whether the images are the image cache's array (uint8, or float32 used as given), converted per batch."""
        return self.mean is not None

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        """The images at positions ``idx`` (a tensor on this split's device), float32, normalised."""
        rows = idx if self.index is None else self.index.index_select(0, idx)
        if self.data.device != rows.device:
            rows = rows.to(self.data.device)
        return self._convert(self.data.index_select(0, rows))

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """The images at positions [start, stop), float32, normalised (a view for built-in datasets)."""
        if self.index is not None:
            return self._convert(self.data.index_select(0, self.index[start:stop].to(self.data.device)))
        return self._convert(self.data[start:stop])

    def _convert(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None or self.std is None:
            return x
        x = x.to(self.y.device, non_blocking=True).float()
        return (x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)

    @property
    def x(self) -> torch.Tensor:
        """Every image, float32 (N, C, H, W), normalised: the stored tensor for a built-in dataset, else a copy."""
        if not self.raw and self.index is None:
            return self.data
        return self.rows(0, len(self))

    def to(self, device: torch.device | str) -> Split:
        """This split with its tensors on ``device`` (the cache's uint8 images stay uint8)."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        data = self.data.to(device)
        path = self.path if data.device.type == "cpu" else None
        return Split(data, self.y.to(device), move(self.mean), move(self.std), move(self.index), path)

    def subset(self, positions: torch.Tensor) -> Split:
        """The examples at ``positions`` (int64, on this split's device), in that order; no image is copied for
        uint8 data (the subset is an index into the cache)."""
        if self.raw:
            index = positions if self.index is None else self.index.index_select(0, positions)
            return Split(self.data, self.y.index_select(0, positions), self.mean, self.std, index, self.path)
        return Split(self.data.index_select(0, positions), self.y.index_select(0, positions))

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class TaskData:
    """A dataset (or class subset) ready for training: both splits plus what a model needs to know."""

    spec: DatasetSpec
    train: Split
    test: Split
    num_classes: int
    in_chans: int
    input_size: tuple[int, int]  # (H, W)
    class_names: list[str]
    augment: AugmentConfig  # the dataset's sensible default
    meta: dict = field(default_factory=dict)  # images from anywhere: source, split, skipped files, preprocessing

    def to(self, device: torch.device | str) -> TaskData:
        """This task with both splits on ``device``."""
        return replace(self, train=self.train.to(device), test=self.test.to(device))


# The fixed seed of the per-class subsets: the same task and N give the same images everywhere (a source trained with
# --train-size N and the AnA control of a scan with --train-size N see the same ones), and a smaller N's images are
# among a larger N's.
SUBSET_SEED = 0


def per_class_positions(labels: torch.Tensor, per_class: int, seed: int = SUBSET_SEED) -> torch.Tensor:
    """Positions of at most ``per_class`` examples of each class of ``labels`` (0..K-1), ascending.

    Per class, in class order, ``RandomState(seed)`` permutes the class's positions and the first ``per_class``
    are kept; so the subsets for growing ``per_class`` are nested.
    """
    y = labels.detach().cpu().numpy()
    rng = np.random.RandomState(seed)
    kept = [rng.permutation(np.flatnonzero(y == c))[:per_class] for c in range(int(y.max()) + 1 if len(y) else 0)]
    chosen = np.sort(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.int64)
    return torch.from_numpy(chosen.astype(np.int64)).to(labels.device)


def limit_per_class(task: TaskData, per_class: int | None, seed: int = SUBSET_SEED) -> TaskData:
    """``task`` with at most ``per_class`` training examples per class (:func:`per_class_positions`); the test
    split untouched. None, or a limit no class reaches, returns ``task`` itself."""
    if per_class is None:
        return task
    counts = torch.bincount(task.train.y.cpu(), minlength=task.num_classes)
    if int(counts.max()) <= per_class:
        return task
    positions = per_class_positions(task.train.y, per_class, seed)
    return replace(task, train=task.train.subset(positions))
