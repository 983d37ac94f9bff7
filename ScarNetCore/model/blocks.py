"""Convolutional building blocks shared by the U-Net pathway and the decoder."""
from torch import nn


def norm(channels: int) -> nn.GroupNorm:
    # GroupNorm, not BatchNorm: statistics do not depend on the batch, so training with
    # batch size 1 (large inputs, GPU memory limits) behaves like any other batch size.
    return nn.GroupNorm(min(8, channels), channels)


class ConvBlock(nn.Module):
    """Two 3×3 conv → GroupNorm → ReLU layers."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), norm(out_channels), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), norm(out_channels), nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.body(x)
