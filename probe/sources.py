"""Pretrained sources: timm / torchvision weights from the local caches those libraries use.

Nothing here downloads. Weights are looked up where timm and torchvision keep them (the Hugging Face
hub cache, ``$HF_HOME/hub``, and the torch hub cache, ``$TORCH_HOME/hub/checkpoints``); when they are
not there a :class:`CheckpointError` says so at once, without touching the network.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from .checkpoint import SourceInfo, attach_info, file_sha256
from .errors import ArchitectureError, CheckpointError

_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time (HF_HUB_CACHE, HF_HOME, XDG)."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return Path(os.environ[variable]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "huggingface"
    return Path(home).expanduser() / "hub"


def torch_hub_checkpoints() -> Path:
    """Where torch.hub (and so torchvision and timm's URL weights) keeps downloaded files."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def _fetch_hint(code: str) -> str:
    return (
        f"this toolkit never downloads: fetch them once on a machine with network ({code}) "
        "and copy the cache, or point HF_HOME / TORCH_HOME at a cache that has them"
    )


def timm_pretrained_overlay(name: str) -> dict:
    """A ``pretrained_cfg_overlay`` that makes timm load ``name``'s weights from a cached local file.

    Raises a CheckpointError naming the places looked in when no cached copy exists.
    """
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise CheckpointError(f"timm has no pretrained weights for '{name}'; drop pretrained=True")
    if cfg.file and Path(cfg.file).is_file():
        return {"file": cfg.file}
    looked = []
    if cfg.hf_hub_id:
        repo, _, revision = cfg.hf_hub_id.partition("@")
        names = dict.fromkeys([*([cfg.hf_hub_filename] if cfg.hf_hub_filename else []), *_HF_WEIGHT_FILES])
        for filename in names:
            found = try_to_load_from_cache(repo, filename, cache_dir=hf_cache_dir(), revision=revision or None)
            if isinstance(found, str) and Path(found).is_file():
                # The hub files are plain state_dicts: timm's filter_fn adapts them, no custom loader.
                return {"file": found, "custom_load": False}
        looked.append(f"{repo} in {hf_cache_dir()}")
    if cfg.url:
        cached = torch_hub_checkpoints() / os.path.basename(cfg.url.split("?")[0])
        if cached.is_file():
            return {"file": str(cached)}
        looked.append(str(cached))
    raise CheckpointError(
        f"no cached pretrained weights for timm '{name}' (looked for {' and '.join(looked)}); "
        + _fetch_hint(f"python -c \"import timm; timm.create_model('{name}', pretrained=True)\"")
    )


def torchvision_weights(name: str, tag: bool | str = True):
    """The torchvision weights enum member for ``name`` (``True`` = DEFAULT), checked to be cached locally."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"torchvision has no pretrained weights for '{name}'; drop pretrained=True") from exc
    try:
        weights = enum.DEFAULT if tag is True else enum[str(tag)]
    except KeyError as exc:
        raise CheckpointError(
            f"torchvision '{name}' has no weights '{tag}': use one of {', '.join(w.name for w in enum)}"
        ) from exc
    cached = torch_hub_checkpoints() / os.path.basename(weights.url)
    if not cached.is_file():
        raise CheckpointError(
            f"no cached pretrained weights for torchvision '{name}' (looked for {cached}); "
            + _fetch_hint(
                f"python -c \"import torchvision; torchvision.models.get_model('{name}', weights='DEFAULT')\""
            )
        )
    return weights


def pretrained_file(arch: str) -> Path:
    """The cached weights file a ``pretrained=True`` build of ``arch`` loads (CheckpointError if none)."""
    from .adapters import get_arch

    prefix, _, name = get_arch(arch).name.partition(":")
    if prefix == "tv":
        return torch_hub_checkpoints() / os.path.basename(torchvision_weights(name).url)
    if prefix == "timm":
        return Path(timm_pretrained_overlay(name)["file"])
    raise CheckpointError(
        f"'{arch}' has no pretrained weights: pretrained sources are timm or torchvision models (e.g. resnet18, tv:resnet18)"
    )


def pretrained_source(
    arch: str,
    data=None,
    *,
    data_dir: str | os.PathLike | None = None,
    in_chans: int | None = None,
    input_size: tuple[int, int] | None = None,
    **options,
) -> nn.Module:
    """A source with pretrained weights (e.g. ImageNet) for images of ``data``'s format.

    ``arch`` is any registered name (``resnet18``, ``timm:convnext_atto``, ``tv:resnet18``). The source keeps
    its pretrained head (e.g. 1000 classes); targets built from its SourceInfo get a fresh model with their
    own head (``pretrained`` is not recorded in ``arch_options``). ``data`` (a dataset spec) or
    ``in_chans``/``input_size`` give the image format; grey images go to timm's adapted first conv, or are
    repeated to 3 channels for torchvision models.
    """
    from .adapters import create_model
    from .data import load_task

    dataset = None
    if data is not None:
        task = load_task(data, data_dir=data_dir)
        in_chans, input_size, dataset = task.in_chans, tuple(task.input_size), str(task.spec)
    in_chans = 3 if in_chans is None else in_chans
    input_size = (224, 224) if input_size is None else tuple(input_size)
    options.pop("pretrained", None)
    weights = pretrained_file(arch)
    model = create_model(arch, num_classes=None, in_chans=in_chans, input_size=input_size, pretrained=True, **options)
    model.eval()
    info = SourceInfo(
        arch=arch,
        arch_options=dict(options),
        num_classes=_num_classes(model),
        in_chans=in_chans,
        input_size=input_size,
        dataset=None,
        settings={"pretrained": str(weights), "images": dataset},
        checkpoint=str(weights),
        sha256=file_sha256(weights),
    )
    return attach_info(model, info)


def _num_classes(model: nn.Module) -> int:
    classes = getattr(model, "num_classes", None)
    if isinstance(classes, int):
        return classes
    from .targets import find_head

    try:
        return model.get_submodule(find_head(model)).out_features
    except (ArchitectureError, AttributeError) as exc:
        raise ArchitectureError(f"cannot tell how many classes {type(model).__name__}'s head has") from exc


__all__ = [
    "hf_cache_dir",
    "pretrained_file",
    "pretrained_source",
    "timm_pretrained_overlay",
    "torch_hub_checkpoints",
    "torchvision_weights",
]
