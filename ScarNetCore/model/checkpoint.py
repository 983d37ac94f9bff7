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

from .. import __version__
from ..errors import CheckpointError
from ..io.files import atomic_path, json_safe, sha256_of
from ..labels import CLASS_NAMES
from ..pipeline.preprocessing import PreprocessConfig
from .cascade import LOCATE, REFINE, SEGMENT, ScarNetCascade, SegmentEnsemble
from .encoders import load_state_strict
from .metadata import CASCADE, SINGLE, ModelMetadata, StageSpec, geometry_to_dict
from .scarnet import ScarNet

FORMAT = "scarnet-checkpoint/1"
METADATA_KEY = "scarnet"
# v2 tensors are prefixed with their stage, "locate.", "segment." (and "refine."); an ensemble
# stage's with "segment.members.<i>." (metadata.py reads the header)


def save_checkpoint(path: str | Path, model: ScarNet, preprocessing: PreprocessConfig = PreprocessConfig(),
                    dtype: torch.dtype | None = None, **metadata) -> Path:
    """Write model weights (optionally cast, e.g. fp16 for shipping) and metadata, atomically."""
    return _write(path, _tensors(model, dtype), {"architecture": SINGLE, "config": model.config.to_dict(),
                                                 "preprocessing": preprocessing.to_dict(), **metadata})


def save_cascade(path: str | Path, cascade: ScarNetCascade, dtype: torch.dtype | None = None, **metadata) -> Path:
    """One file for model v2: every stage's network and geometry, the cascade settings."""
    names = cascade.stage_names
    state = {f"{name}.{k}": v for name in names for k, v in _tensors(getattr(cascade, name), dtype).items()}
    stages = {name: {**_configs(getattr(cascade, name)), "geometry": geometry_to_dict(cascade.geometry[name])}
              for name in names}
    return _write(path, state, {"architecture": CASCADE, "stages": stages, "cascade": cascade.params.to_dict(),
                                "preprocessing": cascade.geometry[SEGMENT].to_dict(), **metadata})


def _configs(net: ScarNet | SegmentEnsemble) -> dict:
    """A stage's network description: one config, or one per ensemble member."""
    if isinstance(net, SegmentEnsemble):
        return {"members": [m.config.to_dict() for m in net.members]}
    return {"config": net.config.to_dict()}


def _tensors(model: ScarNet, dtype: torch.dtype | None) -> dict:
    return {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
            for k, v in model.state_dict().items()}


def _write(path: str | Path, state: dict, metadata: dict) -> Path:
    meta = {"format": FORMAT, "scarnet_version": __version__, "classes": list(CLASS_NAMES), **metadata}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={METADATA_KEY: json.dumps(json_safe(meta), allow_nan=False)})
    return Path(path)


def read_metadata(path: str | Path) -> dict:
    """The header's metadata as written (provenance: training data, configs, metrics), without reading
    the weights; ModelMetadata.from_header reads what the engine needs from it."""
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
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: ScarNet metadata is {type(meta).__name__}, not a JSON object")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unsupported checkpoint format {meta.get('format')!r} (expected {FORMAT})")
    return meta


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    expected_sha256: str | None = None) -> tuple[ScarNet | ScarNetCascade, ModelMetadata]:
    """Rebuild the network (v1 ScarNet or v2 cascade) from the metadata and load its weights (float32, eval)."""
    path = Path(path)
    header = read_metadata(path)
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
        meta = ModelMetadata.from_header(header)
        model = _build(meta)  # every weight comes from the checkpoint
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: metadata does not describe a buildable ScarNet ({exc})") from exc
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    load_state_strict(model, state, str(path))
    return model.to(device).eval(), meta


def _build(meta: ModelMetadata) -> ScarNet | ScarNetCascade:
    if not meta.is_cascade:
        return ScarNet(meta.config, pretrained_encoder=False)
    nets = {name: _stage_net(stage) for name, stage in meta.stages.items()}
    return ScarNetCascade(nets[LOCATE], nets[SEGMENT], meta.stages[LOCATE].geometry, meta.stages[SEGMENT].geometry,
                          meta.cascade, nets.get(REFINE))


def _stage_net(stage: StageSpec) -> ScarNet | SegmentEnsemble:
    nets = [ScarNet(config, pretrained_encoder=False) for config in stage.configs]
    return SegmentEnsemble(nets) if stage.ensemble else nets[0]


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(f"{path}: model file not found")
    with open(path, "rb") as handle:
        head = handle.read(16)
    if head[:2] in (b"\x80\x02", b"\x80\x04", b"\x80\x05") or head[:4] == b"PK\x03\x04":
        # a pickle or a torch.save zip: never unpickled here, whatever it contains
        raise CheckpointError(f"{path}: a pickle/PyTorch file, not a ScarNet checkpoint (.safetensors); "
                              "it was not opened, since unpickling can run code")
