"""The bundled models: v2 (the default cascade) and v1 (kept for comparison and `--model`).

Integrity, metadata, the demo, accuracy on the two real volumes, field-of-view robustness and
inputs that are not hearts. The accuracy floors are regression guards set below what the shipped
model measured (see Resources/MODEL_CARD.md); they fail if the weights or the pipeline degrade.
Tests of the trained model's quality are marked slow (conftest.py): `-m "not slow"` leaves them out.
"""
from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from ScarNetCore.model.checkpoint import read_metadata
from ScarNetCore.io.files import sha256_of
from ScarNetCore.labels import myocardium_mask, scar_mask
from ScarNetCore.pipeline.preprocessing import PreprocessConfig
from ScarNetCore.resources import default_model_path, default_model_sha256, sample_volume_path, v1_model_path

from conftest import NEGATIVE_IMAGE, POSITIVE_IMAGE, VOLUMES, needs_data

MODEL = default_model_path()


def test_bundled_model_is_present_and_matches_its_checksum():
    assert MODEL.is_file(), f"the default model must ship at {MODEL}"
    assert MODEL.stat().st_size <= 30 * 1024 * 1024
    assert default_model_sha256() == sha256_of(MODEL)


def test_bundled_model_metadata():
    meta = read_metadata(MODEL)
    assert "CC BY-NC-SA 4.0" in meta["licence"]
    assert meta["architecture"] == "ScarNetCascade" and set(meta["stages"]) == {"locate", "segment", "refine"}
    for stage in meta["stages"].values():   # all preprocessing travels in the file
        assert {"spacing_mm", "grid_size", "percentiles"} <= set(stage["geometry"])
    assert meta["classes"] == ["background", "LV blood pool", "healthy myocardium", "scar", "MVO"]
    split = meta["training_data"]["cases"]
    assert not set(split["train"]) & set(split["test"]), "test cases must not be trained on"
    assert meta["metrics"]["test"]["myocardium_dice_mean"] > 0  # test metrics are recorded
    from safetensors import safe_open
    with safe_open(str(MODEL), framework="pt") as handle:  # shipped in fp16
        assert {str(handle.get_slice(k).get_dtype()) for k in handle.keys()} <= {"F16", "I64"}


def test_v1_model_still_loads_and_segments(positive_slab):
    """A v1 file given with --model keeps working (one checkpoint format, two architectures)."""
    from ScarNetCore.pipeline.segmenter import Segmenter
    meta = read_metadata(v1_model_path())
    assert meta["architecture"] == "ScarNet" and meta["config"]["encoder"] == "litemedsam"
    assert PreprocessConfig.from_dict(meta["preprocessing"]) == PreprocessConfig()
    result = Segmenter(v1_model_path(), device="cpu", precision="fp32").segment(positive_slab)
    assert result.labels.GetSize() == positive_slab.GetSize() and result.qc_flags == []
    assert myocardium_mask(sitk.GetArrayFromImage(result.labels)).any()


def test_sample_volume_is_bundled_with_attribution():
    assert sample_volume_path().is_file()
    assert "CC BY-NC-SA 4.0" in (sample_volume_path().parent / "README.md").read_text()


@pytest.fixture(scope="module")
def default_segmenter():
    from ScarNetCore.pipeline.segmenter import Segmenter
    return Segmenter(None, device="cpu")


def _dice(a, b):
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


@pytest.mark.slow
@needs_data
@pytest.mark.parametrize("image_path, myo_floor", [(POSITIVE_IMAGE, 0.70), (NEGATIVE_IMAGE, 0.75)])
def test_accuracy_on_real_volumes(default_segmenter, image_path, myo_floor):
    label_path = VOLUMES / image_path.name.replace("_image", "_label")
    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    result = default_segmenter.segment(sitk.ReadImage(str(image_path)))
    pred = sitk.GetArrayFromImage(result.labels)
    ref = np.rint(sitk.GetArrayFromImage(sitk.ReadImage(str(label_path)))).astype(np.uint8)
    myo = _dice(myocardium_mask(pred), myocardium_mask(ref))
    print(f"{image_path.name}: myocardium Dice {myo:.3f}, scar voxels predicted {int(scar_mask(pred).sum())}, "
          f"reference {int(scar_mask(ref).sum())}")
    assert myo >= myo_floor


def test_demo_runs_from_the_bundled_files(tmp_path):
    out = tmp_path / "demo"
    run = subprocess.run([sys.executable, "-m", "ScarNetCore.cli", "demo", "-o", str(out), "--device", "cpu"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    stem = "EMIDEC_samplePositive_LGE"
    for suffix in ("_seg.nii.gz", "_scar.csv", "_scar_slices.csv", "_scar_segments.csv", "_bullseye.png",
                   "_overlay.png"):
        assert (out / f"{stem}{suffix}").is_file(), suffix
    row = next(csv.DictReader(open(out / f"{stem}_scar.csv")))
    labels = sitk.ReadImage(str(out / f"{stem}_seg.nii.gz"))
    voxel_ml = float(np.prod(labels.GetSpacing())) / 1000
    counted = float(scar_mask(sitk.GetArrayFromImage(labels)).sum()) * voxel_ml
    assert float(row["scar_ml"]) == pytest.approx(counted, rel=1e-6)
    assert "scar" in run.stdout and str(out) in run.stdout


@pytest.mark.slow
@needs_data
def test_bf16_stays_within_the_documented_tolerance_of_fp32():
    """autocast_dtype's documented tolerance: ≥ 99.9 % of all voxels equal to the fp32 labels."""
    from ScarNetCore.pipeline.segmenter import Segmenter
    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    image = sitk.ReadImage(str(POSITIVE_IMAGE))[:, :, 2:5]
    fp32 = sitk.GetArrayFromImage(Segmenter(None, "cpu", "fp32").segment(image).labels)
    bf16 = sitk.GetArrayFromImage(Segmenter(None, "cpu", "bf16").segment(image).labels)
    assert (fp32 == bf16).mean() >= 0.999
