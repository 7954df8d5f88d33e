"""Data: the spec language, datasets as tensors in memory, batch augmentation; one module per source of data
(digits, CIFAR, the CIFAR download)."""

from .augment import AugmentConfig, augment_batch, default_augment
from .spec import INPUT_SHAPES, KNOWN_DATASETS, DatasetSpec, default_target, parse_spec
from .tensors import Split, TaskData, check_available, load_task, resolve_data_dir

__all__ = [
    "INPUT_SHAPES",
    "KNOWN_DATASETS",
    "AugmentConfig",
    "DatasetSpec",
    "Split",
    "TaskData",
    "augment_batch",
    "check_available",
    "default_augment",
    "default_target",
    "load_task",
    "parse_spec",
    "resolve_data_dir",
]
