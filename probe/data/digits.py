"""scikit-learn's digits: 1,797 8×8 grey images shipped with scikit-learn, split once, stratified; the embedded
default data set, with its own preset (``digits``: docs/protocol.md)."""

from __future__ import annotations

import pathlib

import numpy as np

from .augment import AugmentConfig
from .base import BaseData, make_base
from .registry import DatasetInfo, register_dataset

DIGITS_TEST_FRACTION = 0.2


def digits_indices(target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split of the digits: (train, test) indices, each ascending.

    Per class, in class order, ``RandomState(0)`` permutes the class's indices and the first
    ``round(0.2 * count)`` go to test; numpy guarantees this stream is the same everywhere.
    """
    rng = np.random.RandomState(0)
    test: list[np.ndarray] = []
    for c in range(10):
        idx = np.flatnonzero(target == c)
        test.append(rng.permutation(idx)[: int(round(DIGITS_TEST_FRACTION * len(idx)))])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(target)), test_idx)
    return train_idx, test_idx


def load_digits(data_dir: pathlib.Path | None = None, download: bool = False) -> BaseData:
    """The digits, split into train and test (no data folder is read: scikit-learn ships them)."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = digits.data.reshape(-1, 1, 8, 8).astype(np.uint8)  # values 0..16
    target = digits.target.astype(np.int64)
    train, test = digits_indices(target)
    return make_base(images[train], target[train], images[test], target[test], tuple(str(i) for i in range(10)))


register_dataset(
    DatasetInfo(
        name="digits",
        class_names=tuple(str(i) for i in range(10)),
        input_shape=(1, 8, 8),
        load=load_digits,
        augment=AugmentConfig(shift=0.125, rotation=10.0, zoom=0.1, flip=False),  # digits are not mirror-symmetric
        preset="digits",
        embedded=True,
    )
)
