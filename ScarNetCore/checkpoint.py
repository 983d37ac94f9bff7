"""The one ScarNet checkpoint format: a .safetensors file whose header carries JSON metadata.

safetensors stores raw tensors and a JSON header only, so loading a checkpoint can never run code.
Metadata (under the header key "scarnet") records everything needed to rebuild the network and
to preprocess exactly as in training: architecture/encoder config, classes, grid, preprocessing,
training data, metrics, licence, version.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .errors import CheckpointError
from .io import atomic_path, sha256_of
from .labels import CLASS_NAMES
from .model import ScarNet, ScarNetConfig
from .model.encoders import load_state_strict
from .preprocessing import PreprocessConfig

FORMAT = "scarnet-checkpoint/1"
METADATA_KEY = "scarnet"


def save_checkpoint(path: str | Path, model: ScarNet, preprocessing: PreprocessConfig = PreprocessConfig(),
                    dtype: torch.dtype | None = None, **metadata) -> Path:
    """Write model weights (optionally cast, e.g. fp16 for shipping) and metadata, atomically."""
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
             for k, v in model.state_dict().items()}
    meta = {
        "format": FORMAT,
        "scarnet_version": __version__,
        "architecture": "ScarNet",
        "config": model.config.to_dict(),
        "classes": list(CLASS_NAMES),
        "preprocessing": preprocessing.to_dict(),
        **metadata,
    }
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={METADATA_KEY: json.dumps(_json_safe(meta), allow_nan=False)})
    return Path(path)


def _json_safe(value):
    """NaN (e.g. scar Dice of a split without infarct) becomes null: strict JSON for other tools."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def read_metadata(path: str | Path) -> dict:
    """Metadata only (the header), without reading the weights."""
    path = Path(path)
    _check_file(path)
    try:
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable ScarNet checkpoint ({str(exc)[:160]})") from exc
    if METADATA_KEY not in header:
        raise CheckpointError(f"{path}: a safetensors file without ScarNet metadata; it is not a ScarNet checkpoint")
    try:
        meta = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: ScarNet metadata is not valid JSON ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unsupported checkpoint format {meta.get('format')!r} (expected {FORMAT})")
    return meta


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    expected_sha256: str | None = None) -> tuple[ScarNet, dict]:
    """Rebuild the network from the metadata and load its weights (float32, eval mode)."""
    path = Path(path)
    meta = read_metadata(path)
    if expected_sha256 is not None:
        actual = sha256_of(path)
        if actual != expected_sha256.lower():
            raise CheckpointError(f"{path}: SHA-256 {actual[:16]}… does not match the expected {expected_sha256[:16]}…; "
                                  "the file is damaged or not the model you meant")
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: damaged or truncated checkpoint ({str(exc)[:160]})") from exc
    try:
        config = ScarNetConfig.from_dict(meta["config"])
        model = ScarNet(config, pretrained_encoder=False)  # every weight comes from the checkpoint
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: metadata does not describe a buildable ScarNet ({exc})") from exc
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    load_state_strict(model, state, str(path))
    return model.to(device).eval(), meta


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(f"{path}: model file not found")
    with open(path, "rb") as handle:
        head = handle.read(16)
    if head[:2] in (b"\x80\x02", b"\x80\x04", b"\x80\x05") or head[:4] == b"PK\x03\x04":
        # a pickle or a torch.save zip: never unpickled here, whatever it contains
        raise CheckpointError(f"{path}: a pickle/PyTorch file, not a ScarNet checkpoint (.safetensors); "
                              "it was not opened, since unpickling can run code")
