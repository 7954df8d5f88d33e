"""Models: the architecture registry, its builders (paper CNN, timm, torchvision), pretrained weights,
checkpoints and fresh targets. The registry imports no builder; builders register themselves."""

from .registry import (
    ArchSpec,
    create_model,
    default_layers,
    get_arch,
    layer_table,
    list_archs,
    register_arch,
    register_namespace,
)

__all__ = [
    "ArchSpec",
    "create_model",
    "default_layers",
    "get_arch",
    "layer_table",
    "list_archs",
    "register_arch",
    "register_namespace",
]
