"""Pretrained weights: timm / torchvision weights from the local caches those libraries use.

Nothing here downloads. Weights are looked up where timm and torchvision keep them (the Hugging Face
hub cache, ``$HF_HOME/hub``, and the torch hub cache, ``$TORCH_HOME/hub/checkpoints``); when they are
not there a :class:`CheckpointError` says so at once, without touching the network.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import CheckpointError
from .registry import get_arch

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
        url = cfg.url if isinstance(cfg.url, str) else cfg.url[0]  # timm types it as str or a tuple of mirrors
        cached = torch_hub_checkpoints() / os.path.basename(url.split("?")[0])
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
    prefix, _, name = get_arch(arch).name.partition(":")
    if prefix == "tv":
        return torch_hub_checkpoints() / os.path.basename(torchvision_weights(name).url)
    if prefix == "timm":
        return Path(timm_pretrained_overlay(name)["file"])
    raise CheckpointError(
        f"'{arch}' has no pretrained weights: pretrained sources are timm or torchvision models (e.g. resnet18, "
        "tv:resnet18)"
    )
