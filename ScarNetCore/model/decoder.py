"""Decoder block: upsample, join the skip connection, convolve, recalibrate (SE + ScarAttention)."""
import torch
from torch import nn
from torch.nn import functional as F

from .attention import ScarAttention
from .blocks import ConvBlock
from .se import SqueezeExcitation


class DecoderBlock(nn.Module):
    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, out_channels, 1)
        self.conv = ConvBlock(out_channels + skip_channels, out_channels)
        self.se = SqueezeExcitation(out_channels)
        self.attention = ScarAttention(out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.reduce(x), size=skip.shape[-2:], mode="bilinear", align_corners=False)
        x = self.conv(torch.cat([x, skip], dim=1))
        return self.attention(self.se(x))
