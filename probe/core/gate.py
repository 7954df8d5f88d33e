"""The QUANTA gate: two parameters v = (vS, vT), (λS, λT) = softmax(v)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import SettingsError


class QuantaGate(nn.Module):
    """Mixes the source's and the target's pre-activations: ``λS·z_source + λT·z_target``.

    Learnable (``pinned=False``): ``v = (log λS, log(1-λS))`` so that ``softmax(v)`` starts at exactly the
    requested λS in (0, 1). Pinned: λS is a constant in [0, 1] (1 = classic frozen transfer of the
    source's layer, 0 = the plain target) and the gate has no parameters.
    """

    pinned_lambdas: torch.Tensor  # a buffer, for a pinned gate

    def __init__(self, lambda_source: float = 0.9, pinned: bool = False) -> None:
        super().__init__()
        lambda_source = float(lambda_source)
        self.pinned = pinned
        if pinned:
            if not 0.0 <= lambda_source <= 1.0:
                raise SettingsError(f"a pinned λS must lie in [0, 1], got {lambda_source}")
            self.register_buffer("pinned_lambdas", torch.tensor([lambda_source, 1.0 - lambda_source]))
            self._pinned_value = lambda_source  # a Python float: no device read in forward
            self.v = None
        else:
            if not 0.0 < lambda_source < 1.0 or math.isnan(lambda_source):
                raise SettingsError(
                    "the initial λS must lie strictly between 0 and 1 (the paper uses 0.9, 0.75, 0.5), got "
                    f"{lambda_source}"
                )
            self.v = nn.Parameter(torch.tensor([math.log(lambda_source), math.log1p(-lambda_source)]))

    def lambdas(self) -> torch.Tensor:
        """The tensor ``(λS, λT)``."""
        if self.v is None:
            return self.pinned_lambdas
        return torch.softmax(self.v, dim=0)

    @property
    def lambda_source(self) -> float:
        """λS as a Python float (one host read)."""
        return float(self.lambdas()[0].detach())

    def forward(self, z_source: torch.Tensor, z_target: torch.Tensor) -> torch.Tensor:
        lambdas = self.lambdas().to(z_target.dtype)
        if self.v is None:
            # Exact identities for pinned 1 and 0 (no 0·z term, so inf/nan in the unused side cannot leak).
            # The source side is cloned: an in-place activation after the hooked layer must not
            # overwrite the caller's (possibly cached) source tensor.
            if self._pinned_value == 1.0:
                return z_source.to(z_target.dtype, copy=True)
            if self._pinned_value == 0.0:
                return z_target
        return lambdas[0] * z_source + lambdas[1] * z_target

    def extra_repr(self) -> str:
        kind = "pinned" if self.pinned else "learned"
        return f"λS={self.lambda_source:.4f} ({kind})"
