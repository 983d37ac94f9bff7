"""The .safetensors checkpoint: exact round trip, metadata, fp16 shipping, and clear refusals."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from ScarNetCore.model.checkpoint import METADATA_KEY, load_checkpoint, read_metadata, save_checkpoint
from ScarNetCore.io.files import sha256_of
from ScarNetCore.errors import CheckpointError
from ScarNetCore.pipeline.segmenter import Segmenter
from ScarNetCore.pipeline.preprocessing import PreprocessConfig


def rewrite(src, dst, edit_state=None, edit_meta=None):
    """Copy a checkpoint, editing its tensors and/or metadata, as a foreign or damaged file would differ."""
    state = load_file(str(src))
    meta = read_metadata(src)
    if edit_state:
        edit_state(state)
    if edit_meta:
        edit_meta(meta)
    save_file(state, str(dst), metadata={METADATA_KEY: json.dumps(meta)})
    return dst


def test_round_trip_identical_outputs_and_metadata(tmp_path, v1_model_and_path):
    model, _ = v1_model_and_path
    preprocessing = PreprocessConfig(target_spacing_mm=1.1, percentiles=(1.0, 99.0))
    path = save_checkpoint(tmp_path / "m.safetensors", model, preprocessing, name="rt", licence="MIT",
                           metrics={"dice": 0.5, "scar_dice": float("nan"), "hd95_mm": float("inf")})
    loaded, meta = load_checkpoint(path)
    assert not loaded.training
    header = meta.header
    assert header["name"] == "rt" and header["licence"] == "MIT"
    # strict JSON, as evaluate's summary.json: NaN is null, inf the string "inf"
    assert header["metrics"] == {"dice": 0.5, "scar_dice": None, "hd95_mm": "inf"}
    assert header["config"] == model.config.to_dict() and meta.config == model.config
    assert PreprocessConfig.from_dict(header["preprocessing"]) == preprocessing == meta.preprocessing
    assert not meta.is_cascade and meta.info()["name"] == "rt"
    assert read_metadata(path) == header
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.rand(1, 1, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))


def test_fp16_checkpoint_loads_as_float32(tmp_path, v1_model_and_path):
    model, full = v1_model_and_path
    path = save_checkpoint(tmp_path / "half.safetensors", model, dtype=torch.float16)
    assert path.stat().st_size < 0.6 * full.stat().st_size
    assert all(v.dtype == torch.float16 for v in load_file(str(path)).values() if v.is_floating_point())
    loaded, _ = load_checkpoint(path)
    for key, value in loaded.state_dict().items():
        if value.is_floating_point():
            assert value.dtype == torch.float32, key
            assert torch.equal(value, model.state_dict()[key].half().float()), key


def test_wrong_architecture_names_keys(tmp_path, v1_model_and_path, model_path):
    def narrower(meta):
        meta["config"]["base_channels"] = 8
    path = rewrite(v1_model_and_path[1], tmp_path / "narrow.safetensors", edit_meta=narrower)
    with pytest.raises(CheckpointError, match=r"wrong shape: down\.0\.body\.0\.weight"):
        load_checkpoint(path)

    def narrower_stage_2(meta):   # a v2 file: each stage's network has its own config
        meta["stages"]["segment"]["config"]["base_channels"] = 8
    path = rewrite(model_path, tmp_path / "narrow_v2.safetensors", edit_meta=narrower_stage_2)
    with pytest.raises(CheckpointError, match=r"wrong shape: segment\.down\.0\.body\.0\.weight"):
        load_checkpoint(path)

    v1_model_path = v1_model_and_path[1]
    path = rewrite(v1_model_path, tmp_path / "missing.safetensors", edit_state=lambda s: s.pop("head.weight"))
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\): head\.weight") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)

    path = rewrite(v1_model_path, tmp_path / "extra.safetensors",
                   edit_state=lambda s: s.__setitem__("head2.weight", torch.zeros(1)))
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\): head2\.weight"):
        load_checkpoint(path)


def test_unbuildable_or_foreign_metadata(tmp_path, v1_model_and_path, model_path):
    def bad_encoder(meta):
        meta["config"]["encoder"] = "no-such-encoder"
    with pytest.raises(CheckpointError, match="buildable ScarNet"):
        load_checkpoint(rewrite(v1_model_and_path[1], tmp_path / "enc.safetensors", edit_meta=bad_encoder))
    with pytest.raises(CheckpointError, match="unsupported checkpoint format"):
        load_checkpoint(rewrite(model_path, tmp_path / "fmt.safetensors", edit_meta=lambda m: m.update(format="x/9")))


@pytest.mark.parametrize("keep", [0.5, 0.999, 20])
def test_truncated_file_names_the_file(tmp_path, model_path, keep):
    data = model_path.read_bytes()
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(data[: int(len(data) * keep)] if keep < 1 else data[:keep])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_sha256(tmp_path, model_path):
    digest = sha256_of(model_path)
    load_checkpoint(model_path, expected_sha256=digest.upper())
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(model_path, expected_sha256="0" * 64)


def test_bundled_model_missing_or_tampered(tmp_path, monkeypatch, model_path):
    from ScarNetCore.resources import default_model_path

    monkeypatch.setenv("SCARNET_RESOURCES", str(tmp_path))
    with pytest.raises(CheckpointError, match="no trained model is bundled"):
        Segmenter(None, device="cpu")
    bundled = default_model_path()
    bundled.parent.mkdir(parents=True)
    bundled.write_bytes(model_path.read_bytes())
    checksum = bundled.with_suffix(".sha256")
    checksum.write_text(f"{'ab' * 32}  {bundled.name}\n")
    with pytest.raises(CheckpointError, match="SHA-256"):
        Segmenter(None, device="cpu")
    checksum.write_text(f"{sha256_of(bundled)}  {bundled.name}\n")
    assert Segmenter(None, device="cpu").model_info["path"] == str(bundled)
