"""Fresh targets: the same architecture as the source, freshly initialised, with its own head."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from .adapters import create_model
from .errors import ArchitectureError


def _replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def find_head(model: nn.Module) -> str:
    """Name of the classifier head: timm's ``get_classifier``, else the last ``nn.Linear`` registered."""
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
        for name, module in model.named_modules():
            if module is head and isinstance(module, nn.Linear):
                return name
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ArchitectureError(
            f"cannot find a classifier head (an nn.Linear) in {type(model).__name__}; register an adapter for it"
        )
    return linears[-1]


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Give ``model`` a freshly initialised head with ``num_classes`` outputs (in place)."""
    if hasattr(model, "reset_classifier") and hasattr(model, "get_classifier"):
        model.reset_classifier(num_classes)
        return model
    name = find_head(model)
    old = model.get_submodule(name)
    _replace_module(
        model, name, nn.Linear(old.in_features, num_classes, bias=old.bias is not None).to(old.weight.device)
    )
    return model


@torch.no_grad()
def reinitialise(model: nn.Module) -> nn.Module:
    """Re-initialise every parameter and buffer of ``model`` in place.

    Modules with ``reset_parameters`` (convs, linears, norms — BatchNorm also resets its running
    statistics) use it; parameters owned by modules without one (e.g. a ViT's position embedding or a
    layer-scale) are re-drawn: ones for 1-D ``weight``/``gamma``, zeros for ``bias``, else N(0, 0.02²) truncated.
    """
    covered: set[int] = set()
    for module in model.modules():
        if hasattr(module, "reset_parameters") and callable(module.reset_parameters):
            module.reset_parameters()
            covered.update(id(p) for p in module.parameters(recurse=False))
            if hasattr(module, "reset_running_stats"):
                module.reset_running_stats()
    for name, parameter in model.named_parameters():
        if id(parameter) in covered:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "bias":
            parameter.zero_()
        elif parameter.dim() == 1 and leaf in ("weight", "gamma", "scale"):
            parameter.fill_(1.0)
        else:
            nn.init.trunc_normal_(parameter, std=0.02)
    return model


@dataclass
class TargetFactory:
    """Builds fresh targets: from a registered architecture, or by re-initialising a copy of a template."""

    arch: str | None = None
    options: dict = field(default_factory=dict)
    template: nn.Module | None = None

    def __call__(self, num_classes: int, in_chans: int, input_size: tuple[int, int]) -> nn.Module:
        if self.arch is not None:
            # A target is always freshly initialised, even when its source came with pretrained weights.
            options = {k: v for k, v in self.options.items() if k != "pretrained"}
            return create_model(self.arch, num_classes=num_classes, in_chans=in_chans, input_size=input_size, **options)
        if self.template is None:
            raise ArchitectureError("a target needs an architecture name or a template model")
        model = copy.deepcopy(self.template)
        object.__setattr__(model, "quanta_source", None)
        reinitialise(model)
        model.requires_grad_(True)  # a source frozen by its owner must not leave a frozen target
        return replace_head(model, num_classes)
