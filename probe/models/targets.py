"""Fresh targets: the same architecture as the source, freshly initialised, with its own head."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from torch import nn

from ..core.surgery import reinitialise, replace_head
from ..errors import ArchitectureError
from .registry import create_model


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
