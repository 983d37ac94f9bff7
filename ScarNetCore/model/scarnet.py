"""ScarNet: a pretrained ViT encoder (global context) fused into a U-Net (localisation)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..labels import NUM_CLASSES
from ..settings import settings_from_dict
from .blocks import ConvBlock
from .decoder import DecoderBlock
from .encoders import build_encoder
from .fusion import AdaptiveFusion


@dataclass(frozen=True)
class ScarNetConfig:
    encoder: str = "litemedsam"                # or "none": the plain U-Net pathway (baseline, cascade stages)
    encoder_input_size: int | None = None      # None: the encoder's native size
    encoder_checkpoint: str | None = None      # required for medsam-vit-b; litemedsam uses its bundled weights
    base_channels: int = 16                    # U-Net widths: c, 2c, 4c, 8c, 16c at strides 1..16
    fusion_strides: tuple[int, ...] = (4, 8, 16)
    num_classes: int = NUM_CLASSES
    grid_size: int = 256                       # slices enter the network at grid_size × grid_size
    in_channels: int = 1                       # 1: the slice; 3: the slice between its two neighbours (2.5-D)
    prior: bool = False                        # refine stage: also takes stage 2's probabilities of classes 1..K-1
                                               # for each of its slices (channels after the slices)

    @property
    def has_encoder(self) -> bool:
        return self.encoder != NO_ENCODER

    @property
    def input_channels(self) -> int:
        """Channels the first layer takes: the slices, and with `prior` their stage-2 class probabilities."""
        return self.in_channels * (1 + (self.num_classes - 1) * self.prior)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["fusion_strides"] = list(self.fusion_strides)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ScarNetConfig":
        return settings_from_dict(cls, data, "network")


NO_ENCODER = "none"


def middle_channels(image: torch.Tensor, count: int) -> torch.Tensor:
    """The `count` channels around the middle one of [B, C, H, W]: the slice itself (count 1), or the
    slice with its nearest neighbours, for a network that takes fewer slices than it is given."""
    middle, half = image.shape[1] // 2, count // 2
    return image[:, middle - half:middle + half + 1]


class ScarNet(nn.Module):
    LEVELS = 5  # strides 1, 2, 4, 8, 16

    def __init__(self, config: ScarNetConfig = ScarNetConfig(), pretrained_encoder: bool = True):
        super().__init__()
        if config.grid_size % 2 ** (self.LEVELS - 1):
            raise ValueError(f"grid_size must be a multiple of {2 ** (self.LEVELS - 1)}")
        if config.in_channels < 1 or config.in_channels % 2 == 0:
            raise ValueError(f"in_channels must be odd (the slice and as many neighbours on each side), "
                             f"not {config.in_channels}")
        self.config = config
        self.encoder = build_encoder(config.encoder, config.encoder_input_size, config.encoder_checkpoint,
                                     pretrained=pretrained_encoder) if config.has_encoder else None
        widths = [config.base_channels * 2 ** i for i in range(self.LEVELS)]
        self.down = nn.ModuleList([ConvBlock(config.input_channels, widths[0])] +
                                  [ConvBlock(widths[i - 1], widths[i]) for i in range(1, self.LEVELS)])
        self.pool = nn.MaxPool2d(2)
        self.fusion = nn.ModuleDict({
            str(2 ** i): AdaptiveFusion(self.encoder.out_channels, widths[i])
            for i in range(self.LEVELS) if 2 ** i in config.fusion_strides and self.encoder is not None
        })
        self.up = nn.ModuleList([DecoderBlock(widths[i], widths[i - 1], widths[i - 1])
                                 for i in range(self.LEVELS - 1, 0, -1)])
        self.head = nn.Conv2d(widths[0], config.num_classes, 1)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Global-context features; cacheable when the encoder is frozen (None without an encoder).
        The encoder sees the slice itself (the middle slice): it was pretrained on single images."""
        slices = image[:, :self.config.in_channels]   # a refine stage's probabilities follow the slices
        return self.encoder(middle_channels(slices, 1)) if self.encoder is not None else None

    def forward(self, image: torch.Tensor, encoder_features: torch.Tensor | None = None) -> torch.Tensor:
        """image: [B, input_channels, grid, grid] in [0, 1] → logits [B, num_classes, grid, grid]."""
        if encoder_features is None:
            encoder_features = self.encode(image)
        if encoder_features is not None:
            encoder_features = encoder_features.to(image.dtype)
        skips = []
        x = image
        for level, block in enumerate(self.down):
            x = block(x if level == 0 else self.pool(x))
            fusion = self.fusion[str(2 ** level)] if str(2 ** level) in self.fusion else None
            if fusion is not None:
                x = fusion(x, encoder_features)
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = block(x, skip)
        return self.head(x)


def count_parameters(model: nn.Module) -> dict:
    encoder = sum(p.numel() for p in model.encoder.parameters()) if model.encoder is not None else 0
    total = sum(p.numel() for p in model.parameters())
    return {"total": total, "encoder": encoder, "unet_fusion_decoder": total - encoder}
