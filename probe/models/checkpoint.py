"""Checkpoints: what a source needs to be rebuilt, loaded safely (``weights_only=True``)."""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from ..util.files import atomic_write_bytes

FORMAT = "quanta-probe/checkpoint/1"


@dataclass
class PretrainedWeights:
    """Where a pretrained source's weights come from (it was not trained by the toolkit, so it has no task)."""

    weights: str  # the weights file (timm's or torchvision's cache, or the user's)
    images: str | None = None  # the data whose image format the source was built for


@dataclass
class SourceInfo:
    """How a source model was made: enough to rebuild it and to pick its paper-style target.

    A source is either trained by the toolkit (``dataset`` and the training ``settings``, with ``image_size``
    when its images were resized) or ``pretrained`` (the weights it came from; no dataset).
    """

    arch: str | None = None
    arch_options: dict = field(default_factory=dict)
    num_classes: int | None = None
    in_chans: int | None = None
    input_size: tuple[int, int] | None = None
    dataset: str | None = None
    settings: dict = field(default_factory=dict)
    test_top1: float | None = None
    checkpoint: str | None = None
    sha256: str | None = None
    pretrained: PretrainedWeights | None = None

    @property
    def trained_at(self) -> int | None:
        """The image size a source trained by the toolkit was trained at, when its images were resized."""
        return None if self.pretrained is not None else (self.settings or {}).get("image_size")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["input_size"] = list(self.input_size) if self.input_size else None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> SourceInfo:
        known = set(cls.__dataclass_fields__)
        data = {k: v for k, v in data.items() if k in known}
        if data.get("input_size") is not None:
            data["input_size"] = tuple(data["input_size"])
        settings = dict(data.get("settings") or {})
        if "pretrained" in settings:  # written before PretrainedWeights: the marker was a key of the settings
            data["pretrained"] = {"weights": settings.pop("pretrained"), "images": settings.pop("images", None)}
            data["settings"] = settings
        if isinstance(data.get("pretrained"), dict):
            data["pretrained"] = PretrainedWeights(**data["pretrained"])
        return cls(**data)


def source_info(model: nn.Module) -> SourceInfo | None:
    """The SourceInfo attached to a model trained or loaded by the toolkit, else None."""
    return getattr(model, "quanta_source", None)


def recorded_info(model: nn.Module) -> SourceInfo:
    """The SourceInfo of a model trained or loaded by the toolkit; a CheckpointError for any other model."""
    info = source_info(model)
    if info is None:
        raise CheckpointError(f"this {type(model).__name__} records no source information: train or load it with probe")
    return info


def attach_info(model: nn.Module, info: SourceInfo) -> nn.Module:
    # A plain attribute (not a submodule or buffer): it never enters the state_dict.
    object.__setattr__(model, "quanta_source", info)
    return model


def save_checkpoint(model: nn.Module, info: SourceInfo, path: str | os.PathLike) -> None:
    """Save ``model``'s state_dict with ``info``, atomically."""
    import io

    payload = {"format": FORMAT, "info": {k: v for k, v in info.to_dict().items() if k not in ("checkpoint", "sha256")}}
    payload["state_dict"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_raw(path: str | os.PathLike) -> dict:
    """Read a checkpoint file safely: ``weights_only=True``; malicious or corrupt files are CheckpointErrors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint '{path}' does not exist; train one with `probe train` or give the right path"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file  # a dependency, imported only for .safetensors files

        try:
            return {"state_dict": load_file(str(path))}
        except Exception as exc:
            raise CheckpointError(f"checkpoint '{path}' is not a valid safetensors file ({exc})") from exc
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"refused to load '{path}': it contains objects a weights-only load does not allow ({first[:160]}); "
            "only load checkpoints you trust, saved as plain state_dicts"
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint '{path}' is truncated or corrupt ({type(exc).__name__}); re-create it"
        ) from exc
    if isinstance(data, dict) and data.get("format") == FORMAT:
        return data
    if isinstance(data, dict) and all(torch.is_tensor(v) for v in data.values()):
        return {"state_dict": data}
    if isinstance(data, dict):
        for key in ("state_dict", "model", "model_state_dict", "state_dict_ema"):
            inner = data.get(key)
            if isinstance(inner, dict) and inner and all(torch.is_tensor(v) for v in inner.values()):
                return {"state_dict": inner}
    raise CheckpointError(
        f"'{path}' holds no state_dict (a dict of tensors); save one with torch.save(model.state_dict(), path)"
    )


def load_state_into(model: nn.Module, state_dict: dict, origin: str = "checkpoint") -> None:
    """Load strictly; any difference is a CheckpointError naming the missing/unexpected keys and shape mismatches."""
    own = model.state_dict()
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            parts.append(f"shapes differ: {'; '.join(mismatched[:4])}{' …' if len(mismatched) > 4 else ''}")
        if missing:
            parts.append(f"missing keys: {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected[:5])}{' …' if len(unexpected) > 5 else ''}")
        raise CheckpointError(
            f"{origin} does not fit {type(model).__name__} ({' | '.join(parts)}); check --arch, its options and the "
            "class count"
        )
    model.load_state_dict(state_dict, strict=True)
