"""Data: the spec language, datasets as tensors, batch augmentation; the registry of built-in data sets, one module
each (digits, CIFAR, Fashion-MNIST); images from anywhere (folders, torchvision and Hugging Face datasets, Python
data) through a uint8 cache in :mod:`probe.data.images`."""

from .augment import AugmentConfig, augment_batch
from .registry import DatasetInfo, default_augment, get_dataset, list_datasets, register_dataset
from .spec import DatasetSpec, default_target, parse_spec
from .tensors import Split, TaskData, check_available, load_task, resolve_data_dir

__all__ = [
    "AugmentConfig",
    "DatasetInfo",
    "DatasetSpec",
    "Split",
    "TaskData",
    "augment_batch",
    "check_available",
    "default_augment",
    "default_target",
    "get_dataset",
    "list_datasets",
    "load_task",
    "parse_spec",
    "register_dataset",
    "resolve_data_dir",
]
