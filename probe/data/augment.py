"""Augmentation of a whole batch on its device: one affine grid and one flip mask, no loop over samples."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import DataError, SettingsError


@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation of a batch (see :func:`augment_batch`).

    The paper's "crop" is realised as ``shift`` + ``zoom``: zooming in by up to ``zoom`` and shifting
    by up to ``shift`` shows a randomly placed crop of a rescaled image; borders that come into view
    are filled by reflection.
    """

    shift: float = 0.0  # max translation, as a fraction of the image size
    rotation: float = 0.0  # max rotation in degrees
    zoom: float = 0.0  # max relative scale change: 0.1 -> scale in [0.9, 1.1]
    flip: bool = False  # random horizontal flip (probability 1/2)

    def __post_init__(self) -> None:
        checks = (
            ("shift", self.shift, 0.0 <= self.shift < 1.0, "[0, 1)"),
            ("rotation", self.rotation, 0.0 <= self.rotation <= 180.0, "[0, 180]"),
            ("zoom", self.zoom, 0.0 <= self.zoom < 1.0, "[0, 1)"),
        )
        for field_name, value, ok, valid in checks:
            if not ok:  # NaN fails every comparison
                raise SettingsError(f"augmentation {field_name}={value} is out of range; use a value in {valid}")

    @property
    def enabled(self) -> bool:
        """Whether the config changes anything at all."""
        return bool(self.shift or self.rotation or self.zoom or self.flip)

    @property
    def geometric(self) -> bool:
        """Whether the config needs the affine (rotation, zoom, shift) path."""
        return bool(self.shift or self.rotation or self.zoom)


# The paper's augmentation of natural images: rotation, shift, crop (= shift + zoom), zoom and horizontal flip.
# A data set that is not mirror-symmetric (digits) registers its own (probe.data.registry).
NATURAL_AUGMENT = AugmentConfig(shift=0.125, rotation=10.0, zoom=0.1, flip=True)


def augment_batch(x: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Randomly augment a batch (N, C, H, W) on its device, every sample with its own parameters.

    One affine grid per batch (rotation, zoom, shift) sampled with ``F.grid_sample`` (bilinear,
    reflection padding), then horizontal flips through a per-sample mask. All randomness comes from
    ``generator`` (which must live on ``x.device``): the same seed gives the same output bit for bit
    on CPU. Each call draws 5·N numbers whatever the config. With ``config.enabled`` False, ``x``
    itself is returned and the generator is not used; with no rotation/zoom/shift the affine step is
    skipped, so flip-only augmentation is exact.
    """
    if not config.enabled:
        return x
    if x.dim() != 4 or not x.is_floating_point():
        raise DataError(f"augment_batch needs a float batch (N, C, H, W), got {x.dtype} of shape {tuple(x.shape)}")
    if generator.device.type != x.device.type:
        raise DataError(
            f"the augmentation generator is on {generator.device} but the batch is on {x.device}; "
            "create it with torch.Generator(device=x.device)"
        )
    n, _, h, w = x.shape
    u = torch.rand(n, 5, generator=generator, device=x.device) * 2 - 1  # uniform in [-1, 1)
    out = x
    if config.geometric:
        angle = u[:, 0] * math.radians(config.rotation)
        scale = 1 + u[:, 1] * config.zoom
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        # Rotation in pixel space, written in normalised grid coordinates (exact for non-square images);
        # a shift of a fraction f of the image is 2f in grid coordinates, which span [-1, 1].
        theta = torch.stack(
            [
                torch.stack([cos, -sin * (h / w), u[:, 2] * 2 * config.shift], dim=1),
                torch.stack([sin * (w / h), cos, u[:, 3] * 2 * config.shift], dim=1),
            ],
            dim=1,
        ).to(x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if config.flip:
        mirror = (u[:, 4] < 0).view(n, 1, 1, 1)
        out = torch.where(mirror, out.flip(-1), out)
    return out
