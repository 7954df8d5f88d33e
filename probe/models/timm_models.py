"""Every timm model by name: ``resnet18``, ``timm:convnext_atto``, ``vit_tiny_patch16_224``, ...

Models are built with ``pretrained=False`` unless asked; pretrained weights come only from the local
cache (see :mod:`probe.models.pretrained`), never from the network. ``in_chans`` goes to timm (its first conv
takes the data's channels) and models with a fixed input size (ViTs) are built for the data's size.
"""

from __future__ import annotations

import functools

import timm
from torch import nn

from ..core.default_points import adapter_layers, default_points
from ..core.input_size import build_checked
from .pretrained import timm_pretrained_overlay
from .registry import ArchSpec, register_namespace

_CHECKED: set[tuple] = set()  # (name, in_chans, input_size, options) that ran once already


def _create(
    name: str, num_classes: int | None, in_chans: int, size: tuple[int, int], pretrained: bool, options: dict
) -> nn.Module:
    kwargs = dict(options)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    cfg = timm.models.get_pretrained_cfg(name)
    fixed_size = cfg is not None and cfg.fixed_input_size and "img_size" not in options
    if fixed_size:
        kwargs["img_size"] = size
    try:
        return timm.create_model(name, pretrained=pretrained, in_chans=in_chans, **kwargs)
    except TypeError as exc:
        if fixed_size and "img_size" in str(exc):  # a fixed-size model that takes no img_size
            kwargs.pop("img_size")
            return timm.create_model(name, pretrained=pretrained, in_chans=in_chans, **kwargs)
        raise


def build_timm(
    name: str,
    num_classes: int | None,
    in_chans: int = 3,
    input_size: tuple[int, int] = (224, 224),
    pretrained: bool = False,
    **options,
) -> nn.Module:
    """``timm.create_model(name)`` for ``in_chans × input_size`` images; ``num_classes=None`` keeps the timm head."""
    arch = f"timm:{name}"
    input_size = (input_size[0], input_size[1])
    if pretrained:
        options = {**options, "pretrained_cfg_overlay": timm_pretrained_overlay(name)}
    make = functools.partial(_create, name, num_classes, in_chans, pretrained=False, options=options)
    shown = {k: v for k, v in options.items() if k != "pretrained_cfg_overlay"}
    key = (name, in_chans, input_size, repr(sorted((k, repr(v)) for k, v in shown.items())))
    return build_checked(
        arch,
        (in_chans, *input_size),
        lambda: _create(name, num_classes, in_chans, input_size, bool(pretrained), options),
        make,
        options,
        _CHECKED,
        key,
    )


def timm_default_layers(model: nn.Module) -> list[str]:
    """The default probe set of a timm model: for a ResNet, the stem's pre-activation and each residual block's
    pre-activation at its final activation (``layerN.M.act2:input``); else the generic
    :func:`~probe.core.default_points.default_points`."""
    layers = adapter_layers(model)
    if not isinstance(model, timm.models.ResNet):
        return default_points(model, layers)
    names = [layer.name for layer in layers]
    residual = [layer.name for layer in layers if layer.kind == "act-input"]
    return names[:1] + [n for n in residual if n not in names[:1]]


def _resolve(name: str) -> ArchSpec | None:
    if not name or not timm.is_model(name):
        return None
    return ArchSpec(
        name=f"timm:{name}",
        builder=functools.partial(build_timm, name),
        default_layers=timm_default_layers,
    )


def _list(pattern: str) -> list[str]:
    return timm.list_models(pattern or "*")


register_namespace("timm", _resolve, _list)
