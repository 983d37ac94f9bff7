"""Adaptive feature fusion of the global (ViT) and local (U-Net) pathways at one scale."""
import torch
from torch import nn
from torch.nn import functional as F

from .blocks import norm


class AdaptiveFusion(nn.Module):
    """out = local + gate · project(global), the gate learned per pixel and channel.

    The encoder feature map is resampled to this scale, so any encoder stride works and
    the pathway can fall back to pure U-Net behaviour where the global context does not help.
    """

    def __init__(self, encoder_channels: int, channels: int):
        super().__init__()
        self.project = nn.Sequential(nn.Conv2d(encoder_channels, channels, 1, bias=False), norm(channels), nn.ReLU(inplace=True))
        self.gate = nn.Sequential(nn.Conv2d(2 * channels, channels, 3, padding=1), nn.Sigmoid())

    def forward(self, local: torch.Tensor, encoder_features: torch.Tensor) -> torch.Tensor:
        size = local.shape[-2:]
        if encoder_features.shape[-2:] != size:
            # area for shrinking keeps every encoder token's contribution; bilinear for growing
            mode = "area" if encoder_features.shape[-1] > size[-1] else "bilinear"
            encoder_features = F.interpolate(encoder_features, size=size, mode=mode,
                                             **({"align_corners": False} if mode == "bilinear" else {}))
        glob = self.project(encoder_features)
        return local + self.gate(torch.cat([local, glob], dim=1)) * glob
