"""torchvision classification models as ``tv:NAME`` (``tv:resnet18``, ``tv:mobilenet_v3_small``, ``tv:vgg11_bn``, ...).

Built with ``weights=None`` unless ``pretrained`` is asked (then only from the local torch hub cache).
torchvision models take 3-channel images: for grey data a forward pre-hook on the model repeats the one
channel three times, so every layer keeps its torchvision name and plain torchvision state_dicts load
as they are; ``model.quanta_input_note`` says so. A ResNet carries ``model.quanta_shared_note``: where its
residual pre-activations, which no name reaches here, can be probed instead.
"""

from __future__ import annotations

import functools

import torch
import torchvision
from torch import nn

from ..core.default_points import adapter_defaults
from ..core.input_size import build_checked
from ..core.surgery import replace_head
from ..errors import ArchitectureError
from .pretrained import fetch_torchvision_weights, torchvision_weights
from .registry import ArchSpec, register_namespace

GREY_NOTE = "grey images repeated to 3 channels"
RESNET_SHARED_NOTE = (
    "torchvision's ResNet reuses one ReLU per block, so its residual pre-activations cannot be probed — "
    "timm's ResNets (e.g. 'resnet18', which loads torchvision ResNet weights as they are) have them as "
    "'layerN.M.act2:input'"
)
_CHECKED: set[tuple] = set()


def repeat_grey(module: nn.Module, args: tuple):
    """Forward pre-hook: a 1-channel batch becomes 3 identical channels (module-level, so models pickle)."""
    if args and torch.is_tensor(args[0]) and args[0].dim() == 4 and args[0].shape[1] == 1:
        return (args[0].expand(-1, 3, -1, -1), *args[1:])
    return None


def _classification_models() -> list[str]:
    return torchvision.models.list_models(module=torchvision.models)


def _replace_head(model: nn.Module, num_classes: int) -> None:
    """A fresh head of ``num_classes`` outputs (a pretrained model comes with its 1000-class one)."""
    if isinstance(model, torchvision.models.SqueezeNet):  # the head is a 1×1 conv
        old = model.classifier[1]
        model.classifier[1] = nn.Conv2d(old.in_channels, num_classes, kernel_size=1)
        model.num_classes = num_classes
        return
    replace_head(model, num_classes)


def _create(name: str, num_classes: int | None, size: tuple[int, int], weights, options: dict) -> nn.Module:
    kwargs = dict(options)
    if name in ("googlenet", "inception_v3"):
        kwargs.setdefault("aux_logits", False)  # auxiliary heads would return tuples in training mode
        if weights is None:
            kwargs.setdefault("init_weights", True)
    if weights is None:
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        if name.startswith("vit_") and "image_size" not in kwargs:
            if size[0] != size[1]:
                raise ArchitectureError(
                    f"tv:{name} takes square images, not {size[0]}×{size[1]}; pick a timm ViT (img_size)"
                )
            kwargs["image_size"] = size[0]
    model = torchvision.models.get_model(name, weights=weights, **kwargs)
    if weights is not None and num_classes is not None and num_classes != len(weights.meta["categories"]):
        _replace_head(model, num_classes)
    return model


def build_torchvision(
    name: str,
    num_classes: int | None,
    in_chans: int = 3,
    input_size: tuple[int, int] = (224, 224),
    pretrained: bool | str = False,
    **options,
) -> nn.Module:
    """``torchvision.models.get_model(name)``; ``pretrained`` = True or a weights name (cached only)."""
    arch = f"tv:{name}"
    input_size = (input_size[0], input_size[1])
    if in_chans not in (1, 3):
        raise ArchitectureError(
            f"{arch} takes 3-channel (or grey) images, not {in_chans} channels; use a timm model, which adapts in_chans"
        )
    weights = None
    if pretrained:
        weights = torchvision_weights(name, pretrained)
        fetch_torchvision_weights(name, weights)  # a failed download is said as one, before the model is built

    def make(size: tuple[int, int]) -> nn.Module:
        return _with_notes(_create(name, num_classes, size, None, options), in_chans)

    rebuild = name.startswith("vit_") and weights is None  # only a fresh ViT can be rebuilt for another size
    key = (name, in_chans, input_size, repr(sorted((k, repr(v)) for k, v in options.items())))
    model: list[nn.Module] = []  # the one built, for the size search when it cannot be rebuilt

    def build() -> nn.Module:
        model.append(_with_notes(_create(name, num_classes, input_size, weights, options), in_chans))
        return model[0]

    same = make if rebuild else (lambda size: model[0])
    return build_checked(arch, (in_chans, *input_size), build, make, options, _CHECKED, key, rebuild_built=same)


def _with_notes(model: nn.Module, in_chans: int) -> nn.Module:
    # plain attributes, outside the state_dict
    if in_chans == 1:
        model.register_forward_pre_hook(repeat_grey)
        object.__setattr__(model, "quanta_input_note", GREY_NOTE)
    if isinstance(model, torchvision.models.ResNet):
        object.__setattr__(model, "quanta_shared_note", RESNET_SHARED_NOTE)  # read by core.layers.check_layers
    return model


def _resolve(name: str) -> ArchSpec | None:
    if name not in _classification_models():
        return None
    return ArchSpec(
        name=f"tv:{name}",
        builder=functools.partial(build_torchvision, name),
        default_layers=adapter_defaults,
    )


def _list(pattern: str) -> list[str]:
    import fnmatch

    return [n for n in _classification_models() if fnmatch.fnmatch(n, pattern or "*")]


register_namespace("tv", _resolve, _list)
