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
from .stack_mixing import StackMixing


@dataclass(frozen=True)
class ScarNetConfig:
    encoder: str = "litemedsam"                # or "none": the plain U-Net pathway (baseline, cascade stages)
    encoder_input_size: int | None = None      # None: the encoder's native size
    encoder_checkpoint: str | None = None      # required for medsam-vit-b; litemedsam uses its bundled weights
                                               # (either: a .pth, or a ScarNet .safetensors with that encoder)
    base_channels: int = 16                    # U-Net widths: c, 2c, 4c, 8c, 16c at strides 1..16
    fusion_strides: tuple[int, ...] = (4, 8, 16)
    num_classes: int = NUM_CLASSES
    grid_size: int = 256                       # slices enter the network at grid_size × grid_size
    in_channels: int = 1                       # 1: the slice; 3: the slice between its two neighbours (2.5-D)
    prior: bool = False                        # refine stage: also takes stage 2's probabilities of classes 1..K-1
                                               # for each of its slices (channels after the slices)
    remote_contrast: bool = False              # with prior: also sees each slice in SDs from the healthy myocardium
                                               # stage 2 finds (remote_contrast below), computed inside the network
    stack_mixing: bool = False                 # the batch is a stack in order: coarse features also mix across
                                               # neighbouring slices (stack.StackMixing at MIXING_STRIDES)

    @property
    def has_encoder(self) -> bool:
        return self.encoder != NO_ENCODER

    @property
    def input_channels(self) -> int:
        """Channels the first layer takes: the slices, and with `prior` their stage-2 class probabilities."""
        return self.in_channels * (1 + (self.num_classes - 1) * self.prior)

    @property
    def first_layer_channels(self) -> int:
        """input_channels, and the remote-contrast channels the network adds itself (one per slice)."""
        return self.input_channels + self.in_channels * self.remote_contrast

    def to_dict(self) -> dict:
        data = asdict(self)
        data["fusion_strides"] = list(self.fusion_strides)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ScarNetConfig":
        return settings_from_dict(cls, data, "network")


NO_ENCODER = "none"
HEALTHY_MYOCARDIUM = 2      # its probability channel tells remote_contrast where the remote myocardium is
MIN_REMOTE_PIXELS = 50      # fewer healthy-myocardium pixels than this: no contrast to measure (channels zero)
MIXING_STRIDES = (4, 8, 16)  # stack_mixing: the levels whose features meet the neighbouring slices' (reach ±3)


def remote_contrast(image: torch.Tensor, config: ScarNetConfig) -> torch.Tensor:
    """Each slice's intensity in standard deviations from the mean of the healthy myocardium stage 2
    finds (probability > 0.5) over all the input's slices, divided by 8 and clipped: LGE is read this way
    (scar is "n SD above remote myocardium"), and it does not depend on a scanner's intensity scale.
    image: [B, input_channels, H, W] (slices, then their stage-2 probabilities) → [B, in_channels, H, W]."""
    n, k = config.in_channels, config.num_classes - 1
    slices = image[:, :n].float()
    healthy = (image[:, n + HEALTHY_MYOCARDIUM - 1::k][:, :n].float() > 0.5).float()
    count = healthy.sum((1, 2, 3), keepdim=True)
    pixels = count.clamp(min=1)
    mean = (slices * healthy).sum((1, 2, 3), keepdim=True) / pixels
    sd = (((slices - mean) ** 2 * healthy).sum((1, 2, 3), keepdim=True) / pixels).sqrt().clamp(min=0.02)
    contrast = ((slices - mean) / sd).clamp(-4.0, 16.0) / 8.0
    return (contrast * (count >= MIN_REMOTE_PIXELS)).to(image.dtype)


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
        if config.remote_contrast and not (config.prior and config.num_classes > HEALTHY_MYOCARDIUM):
            raise ValueError("remote_contrast needs stage 2's probabilities (prior) with a healthy-myocardium class")
        self.config = config
        self.encoder = build_encoder(config.encoder, config.encoder_input_size, config.encoder_checkpoint,
                                     pretrained=pretrained_encoder) if config.has_encoder else None
        widths = [config.base_channels * 2 ** i for i in range(self.LEVELS)]
        self.down = nn.ModuleList([ConvBlock(config.first_layer_channels, widths[0])] +
                                  [ConvBlock(widths[i - 1], widths[i]) for i in range(1, self.LEVELS)])
        self.pool = nn.MaxPool2d(2)
        self.fusion = nn.ModuleDict({
            str(2 ** i): AdaptiveFusion(self.encoder.out_channels, widths[i])
            for i in range(self.LEVELS) if 2 ** i in config.fusion_strides and self.encoder is not None
        })
        self.mixing = nn.ModuleDict({str(2 ** i): StackMixing(widths[i]) for i in range(self.LEVELS)
                                     if 2 ** i in MIXING_STRIDES and config.stack_mixing})
        self.up = nn.ModuleList([DecoderBlock(widths[i], widths[i - 1], widths[i - 1])
                                 for i in range(self.LEVELS - 1, 0, -1)])
        self.head = nn.Conv2d(widths[0], config.num_classes, 1)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Global-context features; cacheable when the encoder is frozen (None without an encoder).
        The encoder sees the slice itself (the middle slice): it was pretrained on single images."""
        slices = image[:, :self.config.in_channels]   # a refine stage's probabilities follow the slices
        return self.encoder(middle_channels(slices, 1)) if self.encoder is not None else None

    def forward(self, image: torch.Tensor, encoder_features: torch.Tensor | None = None,
                stacks: list[int] | None = None) -> torch.Tensor:
        """image: [B, input_channels, grid, grid] in [0, 1] → logits [B, num_classes, grid, grid].
        stacks (stack_mixing only): the sizes of the consecutive stacks the batch holds, each in stack
        order; None: the batch is one stack. Without stack_mixing every slice is on its own."""
        if encoder_features is None:
            encoder_features = self.encode(image)
        if encoder_features is not None:
            encoder_features = encoder_features.to(image.dtype)
        skips = []
        x = torch.cat([image, remote_contrast(image, self.config)], 1) if self.config.remote_contrast else image
        for level, block in enumerate(self.down):
            x = block(x if level == 0 else self.pool(x))
            fusion = self.fusion[str(2 ** level)] if str(2 ** level) in self.fusion else None
            if fusion is not None:
                x = fusion(x, encoder_features)
            if str(2 ** level) in self.mixing:
                x = self.mixing[str(2 ** level)](x, stacks)
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = block(x, skip)
        return self.head(x)


def count_parameters(model: nn.Module) -> dict:
    encoder = sum(p.numel() for p in model.encoder.parameters()) if model.encoder is not None else 0
    total = sum(p.numel() for p in model.parameters())
    return {"total": total, "encoder": encoder, "unet_fusion_decoder": total - encoder}
