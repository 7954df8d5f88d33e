"""Model surgery: find and replace a classifier head, re-initialise every parameter."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..errors import ArchitectureError


def _replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _timm_classifier(model: nn.Module) -> nn.Module | None:
    get_classifier = getattr(model, "get_classifier", None)
    if get_classifier is None:
        return None
    try:
        return get_classifier()
    except Exception:  # a model's own helper may fail for odd configurations
        return None


def find_head(model: nn.Module, run_order: Mapping[str, int] | None = None) -> str | None:
    """Name of the classifier head, or None: timm's ``get_classifier()``, else the last conv/linear module.

    "Last" is the last to run when ``run_order`` (module name -> when it first returned, from a traced
    forward) is known, else the last ``nn.Linear`` registered.
    """
    head = _timm_classifier(model)
    modules = [(name, module) for name, module in model.named_modules() if name]
    for name, module in modules:
        if module is head and (run_order is not None or isinstance(module, nn.Linear)):
            return name
    if run_order is None:
        linears = [name for name, module in modules if isinstance(module, nn.Linear)]
        return linears[-1] if linears else None
    kinds = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd)
    ran = [name for name, module in modules if name in run_order and isinstance(module, kinds)]
    return max(ran, key=run_order.__getitem__) if ran else None


def require_head(model: nn.Module) -> str:
    """:func:`find_head`, or an ArchitectureError when the model has no nn.Linear head."""
    name = find_head(model)
    if name is None:
        raise ArchitectureError(
            f"cannot find a classifier head (an nn.Linear) in {type(model).__name__}; register an adapter for it"
        )
    return name


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Give ``model`` a freshly initialised head with ``num_classes`` outputs (in place)."""
    reset_classifier = getattr(model, "reset_classifier", None)
    if reset_classifier is not None and hasattr(model, "get_classifier"):
        reset_classifier(num_classes)
        return model
    name = require_head(model)
    old = model.get_submodule(name)
    if not isinstance(old, nn.Linear):  # pragma: no cover - require_head finds an nn.Linear
        raise ArchitectureError(f"the head '{name}' of {type(model).__name__} is not an nn.Linear")
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
