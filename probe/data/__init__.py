"""Data: the spec language, datasets as tensors, batch augmentation; one module per source of data (digits,
CIFAR, the CIFAR download; image folders, torchvision and Hugging Face datasets through a uint8 cache)."""

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
