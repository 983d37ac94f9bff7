"""EMIDEC sample case: the reference label's scar % from quantify/CLI equals a direct numpy count."""
import csv
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ScarNetCore.cli import build_parser
from ScarNetCore.quantify import quantify

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "emidec" / "volumes"
LABEL, IMAGE = DATA / "samplePositive_label.nii.gz", DATA / "samplePositive_image.nii.gz"

pytestmark = pytest.mark.skipif(not LABEL.exists(), reason=f"EMIDEC sample not found at {DATA}")


def test_emidec_sample_positive(tmp_path):
    labels = sitk.ReadImage(str(LABEL))
    arr = sitk.GetArrayFromImage(labels).astype(int)            # stored as float64
    voxel_ml = float(np.prod(labels.GetSpacing())) / 1000.0
    myo, scar, mvo = int(np.isin(arr, (2, 3, 4)).sum()), int(np.isin(arr, (3, 4)).sum()), int((arr == 4).sum())
    direct = 100.0 * scar / myo
    print(f"\nEMIDEC samplePositive reference: scar {direct:.2f} % of LV myocardium "
          f"({scar * voxel_ml:.2f} mL of {myo * voxel_ml:.2f} mL; MVO {mvo * voxel_ml:.2f} mL)")

    result = quantify(labels, sitk.ReadImage(str(IMAGE)), classical=True)
    g = result.global_metrics
    assert g["scar_percent_lv"] == pytest.approx(direct, rel=1e-12)
    assert g["myocardium_ml"] == pytest.approx(myo * voxel_ml, rel=1e-12)
    assert g["scar_ml"] == pytest.approx(scar * voxel_ml, rel=1e-12)
    assert g["mvo_ml"] == pytest.approx(mvo * voxel_ml, rel=1e-12)
    assert g["insertion_point_estimated"] is True
    assert sum(r["scar_voxels"] for r in result.per_segment) == scar     # every scar voxel has a segment
    assert sum(r["scar_voxels"] for r in result.per_slice) == scar
    print("  5SD / FWHM on the same myocardium: "
          f"{g['scar_percent_lv_5SD']:.2f} % / {g['scar_percent_lv_FWHM']:.2f} %")

    out = tmp_path / "samplePositive_scar.csv"
    args = build_parser().parse_args(["quantify", str(LABEL), "--image", str(IMAGE), "-o", str(tmp_path),
                                      "--name", "samplePositive"])
    assert args.func(args) == 0
    with open(out, newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert float(row["scar_percent_lv"]) == pytest.approx(direct, rel=1e-9)
    assert int(row["scar_voxels"]) == scar and int(row["myocardium_voxels"]) == myo
    with open(tmp_path / "samplePositive_scar_slices.csv", newline="") as handle:
        assert sum(int(r["scar_voxels"]) for r in csv.DictReader(handle)) == scar
