"""Pretrained weights the way timm and torchvision users get them, and each model's own preprocessing.

A cached copy is used first: where timm and torchvision keep them (the Hugging Face hub cache,
``$HF_HUB_CACHE`` or ``$HF_HOME/hub``, and the torch hub cache, ``$TORCH_HOME/hub/checkpoints``). Otherwise
timm downloads through the Hugging Face hub and torchvision through torch hub, into those same caches,
unless ``HF_HUB_OFFLINE`` is set or the host cannot be reached within 3 seconds: then a
:class:`CheckpointError` says at once, in one line, what was looked for and how to provide it. A local file
of weights for a named architecture works too (:func:`local_weights_overlay`).
:func:`pretrained_input_config` reads the input size, resize filter and mean/std of the weights' eval transform.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..util.network import env_flag, reachable
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
        f"fetch them once with network ({code}) and copy the cache, point HF_HOME / HF_HUB_CACHE / TORCH_HOME at "
        "a cache that has them, or pass a weights file (--source FILE --pretrained --arch NAME)"
    )


def offline() -> bool:
    """Whether the Hugging Face hub is switched off (``HF_HUB_OFFLINE``), read at call time."""
    return env_flag("HF_HUB_OFFLINE")


def _can_download(host: str, port: int = 443) -> str | None:
    """None when a download from ``host`` (at ``port``) may start; else why not (one phrase)."""
    if offline():
        return "HF_HUB_OFFLINE is set"
    if not reachable(host, port=port):
        return f"{host} cannot be reached"
    return None


def local_weights_overlay(path: str | os.PathLike) -> dict:
    """A ``pretrained_cfg_overlay`` that makes timm load its weights from the local file ``path``."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise CheckpointError(f"weights file {file} does not exist; give the path of a .safetensors/.pth file")
    return {"file": str(file.resolve()), "custom_load": False}


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
    why = _can_download("huggingface.co") if cfg.hf_hub_id else _can_download(*_address(cfg.url))
    if why is None:
        return {}  # timm downloads through its own mechanism into the caches above
    raise CheckpointError(
        f"no cached pretrained weights for timm '{name}' and {why} (looked for {' and '.join(looked)}); "
        + _fetch_hint(f"python -c \"import timm; timm.create_model('{name}', pretrained=True)\"")
    )


def _address(url: Any) -> tuple[str, int]:
    """The host and port a download of ``url`` connects to (the URL's port, else 80 for http, else 443)."""
    from urllib.parse import urlparse

    parts = urlparse(url if isinstance(url, str) else (url[0] if url else ""))
    return parts.hostname or "download.pytorch.org", parts.port or (80 if parts.scheme == "http" else 443)


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
    cached = _hub_file(weights)
    why = None if cached.is_file() else _can_download(*_address(weights.url))
    if why is not None:  # otherwise torchvision downloads into the torch hub cache
        raise CheckpointError(
            f"no cached pretrained weights for torchvision '{name}' and {why} (looked for {cached}); "
            + _torchvision_hint(name)
        )
    return weights


def _hub_file(weights) -> Path:
    """Where torch hub keeps (or will keep) the file of torchvision ``weights``."""
    return torch_hub_checkpoints() / os.path.basename(weights.url)


def _torchvision_hint(name: str) -> str:
    return _fetch_hint(f"python -c \"import torchvision; torchvision.models.get_model('{name}', weights='DEFAULT')\"")


def fetch_torchvision_weights(name: str, weights) -> None:
    """Download ``weights`` into the torch hub cache unless cached, with torchvision's own call (torch.hub, its
    sha256 file-name check), so that a failed download is a one-line CheckpointError, not a model-building error."""
    cached = _hub_file(weights)
    if cached.is_file():
        return
    try:
        weights.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise CheckpointError(
            f"could not download pretrained weights for torchvision '{name}' from {weights.url} ({reason}); "
            + _torchvision_hint(name)
        ) from exc


def pretrained_file(arch: str) -> str:
    """Where a ``pretrained=True`` build of ``arch`` takes its weights: a cached file, or the URL/hub id that
    timm or torchvision will download (CheckpointError when neither is possible)."""
    prefix, _, name = get_arch(arch).name.partition(":")
    if prefix == "tv":
        weights = torchvision_weights(name)
        cached = _hub_file(weights)
        return str(cached) if cached.is_file() else weights.url
    if prefix == "timm":
        overlay = timm_pretrained_overlay(name)
        if "file" in overlay:
            return str(overlay["file"])
        import timm

        cfg = timm.models.get_pretrained_cfg(name)
        return f"hf-hub:{cfg.hf_hub_id}" if cfg is not None and cfg.hf_hub_id else str(getattr(cfg, "url", name))
    raise CheckpointError(
        f"'{arch}' has no pretrained weights: pretrained sources are timm or torchvision models (e.g. resnet18, "
        "tv:resnet18)"
    )


def pil_filter(name: str) -> tuple[str, str | None]:
    """``name`` as a PIL resampling filter name (``bicubic``, ...) and None; timm's ``random`` (a training-time
    choice) or an unknown name as ``bilinear`` and the reason."""
    from PIL import Image

    if name.upper() in Image.Resampling.__members__:
        return name.lower(), None
    why = "a training-time random choice" if name == "random" else "not a PIL filter"
    return "bilinear", f"interpolation {name!r} ({why}) read as bilinear"


def pretrained_input_config(arch: str) -> dict[str, Any]:
    """The input the pretrained weights of ``arch`` expect, read without loading them: ``image_size`` (the
    crop), ``resize`` (the shorter side their eval transform resizes to first), ``interpolation`` (its PIL
    filter name) and ``interpolation_note`` (why it differs from the model's, else None), ``channels``,
    ``mean``/``std`` (0..1 units) and ``origin``; timm's ``pretrained_cfg`` (as ``resolve_data_config``),
    torchvision's ``weights.transforms()``."""
    prefix, _, name = get_arch(arch).name.partition(":")
    if prefix == "timm":
        import timm

        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is None:
            raise CheckpointError(f"timm has no pretrained weights for '{name}'; drop pretrained=True")
        chans, height, _ = cfg.input_size
        crop = float(cfg.crop_pct or 1.0)
        interpolation, note = pil_filter(cfg.interpolation or "bicubic")  # resolve_data_config's default
        return {
            "image_size": int(height),
            "resize": int(height / crop),
            "interpolation": interpolation,
            "interpolation_note": note,
            "channels": int(chans),
            "mean": tuple(float(v) for v in cfg.mean),
            "std": tuple(float(v) for v in cfg.std),
            "origin": f"timm pretrained_cfg of {name}",
        }
    if prefix == "tv":
        import torchvision

        try:
            weights = torchvision.models.get_model_weights(name).DEFAULT
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"torchvision has no pretrained weights for '{name}'; drop pretrained=True") from exc
        from PIL import Image
        from torchvision.transforms.functional import pil_modes_mapping

        transform = weights.transforms()
        # the PIL filter torchvision's own PIL path uses for this mode (NEAREST_EXACT is PIL's NEAREST there)
        interpolation = Image.Resampling(pil_modes_mapping[transform.interpolation]).name.lower()
        return {
            "image_size": int(transform.crop_size[0]),
            "resize": int(transform.resize_size[0]),
            "interpolation": interpolation,
            "interpolation_note": None,
            "channels": 3,
            "mean": tuple(float(v) for v in transform.mean),
            "std": tuple(float(v) for v in transform.std),
            "origin": f"torchvision {weights} transforms()",
        }
    raise CheckpointError(f"'{arch}' has no pretrained weights: pretrained sources are timm or torchvision models")
