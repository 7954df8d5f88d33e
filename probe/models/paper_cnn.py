"""The CNN of the QUANTA paper (Orhand et al., KES 2021, fig. 2).

Three blocks of two 3×3 convolutions (64, 64 | 256, 256 | 512, 512 maps), each conv followed
by ReLU and each block by a 2×2 max-pool; a fully connected layer of 2048 units with ReLU;
the output layer. Xavier initialisation. Its seven probeable layers are the six convs and the
FC layer (their outputs are the pre-activations Z_n).
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_arch

PAPER_CNN_LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "fc"]


class PaperCNN(nn.Module):
    """The paper's CNN; ``width`` scales every layer's number of maps/units."""

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        input_size: tuple[int, int] = (32, 32),
        width: float = 1.0,
    ) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        c1, c2, c3, fc = (max(1, round(c * width)) for c in (64, 256, 512, 2048))
        height, wide = input_size
        if height < 8 or wide < 8:
            raise ValueError(f"paper-cnn needs inputs of at least 8×8 (three 2×2 pools), got {height}×{wide}")
        self.conv1 = nn.Conv2d(in_chans, c1, 3, padding=1)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c1, c1, 3, padding=1)
        self.act2 = nn.ReLU(inplace=True)
        self.pool1 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(c1, c2, 3, padding=1)
        self.act3 = nn.ReLU(inplace=True)
        self.conv4 = nn.Conv2d(c2, c2, 3, padding=1)
        self.act4 = nn.ReLU(inplace=True)
        self.pool2 = nn.MaxPool2d(2)
        self.conv5 = nn.Conv2d(c2, c3, 3, padding=1)
        self.act5 = nn.ReLU(inplace=True)
        self.conv6 = nn.Conv2d(c3, c3, 3, padding=1)
        self.act6 = nn.ReLU(inplace=True)
        self.pool3 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c3 * (height // 8) * (wide // 8), fc)
        self.act7 = nn.ReLU(inplace=True)
        self.head = nn.Linear(fc, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform weights and zero biases, as in the paper."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.act2(self.conv2(self.act1(self.conv1(x)))))
        x = self.pool2(self.act4(self.conv4(self.act3(self.conv3(x)))))
        x = self.pool3(self.act6(self.conv6(self.act5(self.conv5(x)))))
        return self.head(self.act7(self.fc(self.flatten(x))))


@register_arch("paper-cnn", default_layers=lambda model: list(PAPER_CNN_LAYERS))
def paper_cnn(
    num_classes: int, in_chans: int = 3, input_size: tuple[int, int] = (32, 32), width: float = 1.0
) -> PaperCNN:
    return PaperCNN(num_classes=num_classes, in_chans=in_chans, input_size=input_size, width=width)
