"""Report files (CSV, bullseye PNG, classical label volumes) and the `scarnet quantify` subcommand."""
import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
from matplotlib import image as mpimg

from ScarNetCore.errors import InputError
from ScarNetCore.cli import build_parser
from ScarNetCore.io.files import sha256_of
from ScarNetCore.io.outputs import write_reports
from ScarNetCore.quantify import quantify
from ScarNetCore.quantify.phantoms import ring_phantom

REQUIRED = ("myocardium_ml", "myocardium_g", "scar_ml", "scar_g", "scar_percent_lv", "mvo_ml", "mvo_g",
            "blood_pool_ml")


def _read(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _parser():
    return build_parser()


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    p = ring_phantom(scar_depth_mm=5.0, mvo_depth_mm=2.0)
    folder = tmp_path_factory.mktemp("study")
    labels_path = folder / "case1_labels.nii.gz"
    sitk.WriteImage(p.labels, str(labels_path))
    arr = sitk.GetArrayFromImage(p.labels)
    image = sitk.GetImageFromArray(np.where(arr >= 3, 400.0, np.where(arr == 2, 100.0, 20.0))
                                   + np.random.default_rng(0).normal(0, 5, arr.shape))
    image.CopyInformation(p.labels)
    image_path = folder / "case1_image.nii.gz"
    sitk.WriteImage(image, str(image_path))
    return p, labels_path, image_path, image


def _check_png(path):
    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    pixels = mpimg.imread(str(path))
    height, width = pixels.shape[:2]
    assert 500 <= height <= 2000 and 1000 <= width <= 3000 and width > height
    assert pixels[..., :3].std() > 0.05        # a picture, not a blank canvas


def test_write_reports_files_and_contents(study, tmp_path):
    p, _, _, image = study
    result = quantify(p.labels, image, insertion_point=p.insertion_point, classical=True)
    paths = write_reports(result, tmp_path / "out", "case1")
    assert paths["summary"].name == "case1_scar.csv" and paths["slices"].name == "case1_scar_slices.csv"
    assert paths["segments"].name == "case1_scar_segments.csv" and paths["bullseye"].name == "case1_bullseye.png"
    # only the promised files, no temporary leftovers from the atomic writes
    assert sorted(f.name for f in (tmp_path / "out").iterdir()) == sorted(path.name for path in paths.values())
    (row,) = _read(paths["summary"])
    for column in REQUIRED:
        assert float(row[column]) == pytest.approx(result.global_metrics[column], rel=1e-9)
    assert row["insertion_point_estimated"] == "false"
    assert float(row["scar_percent_lv_5SD"]) == pytest.approx(result.global_metrics["scar_percent_lv_5SD"])
    segments = _read(paths["segments"])
    assert [int(r["segment"]) for r in segments] == list(range(1, 18))
    assert sum(int(r["scar_voxels"]) for r in segments) == result.global_metrics["scar_voxels"]
    slices = _read(paths["slices"])
    assert len(slices) == p.labels.GetSize()[2]
    assert sum(int(r["myocardium_voxels"]) for r in slices) == result.global_metrics["myocardium_voxels"]
    _check_png(paths["bullseye"])
    five = sitk.ReadImage(str(paths["labels_5SD"]))
    assert five.GetSize() == p.labels.GetSize()
    assert np.array_equal(sitk.GetArrayFromImage(five), sitk.GetArrayFromImage(result.classical_labels["5SD"]))
    with pytest.raises(InputError):
        write_reports(result, tmp_path, "../escape")


def test_bullseye_shows_missing_segments(tmp_path):
    p = ring_phantom(cavity_slices=4, cap_slices=0)     # no apex cap: segment 17 is drawn as n/a
    result = quantify(p.labels)
    paths = write_reports(result, tmp_path, "nocap")
    _check_png(paths["bullseye"])
    (row,) = _read(paths["summary"])
    assert row["insertion_point_estimated"] == "true"
    seg17 = _read(paths["segments"])[16]
    assert seg17["myocardium_voxels"] == "0" and seg17["scar_extent_percent"] == ""


def test_cli_quantify(study, tmp_path, capsys):
    p, labels_path, image_path, _ = study
    out = tmp_path / "tables" / "case1_scar.csv"
    x, y, z = p.insertion_point
    args = _parser().parse_args(["quantify", str(labels_path), "--image", str(image_path), "-o", str(out.parent),
                                 "--name", "case1", "--insertion-point", str(x), str(y), str(z), "--classical",
                                 "--density", "1.1"])
    assert args.func(args) == 0
    for suffix in ("_scar_slices.csv", "_scar_segments.csv", "_bullseye.png", "_5SD.nii.gz", "_FWHM.nii.gz"):
        assert (tmp_path / "tables" / f"case1{suffix}").is_file(), suffix
    (row,) = _read(out)
    arr = sitk.GetArrayFromImage(p.labels)
    voxel_ml = 8.0 / 1000
    assert float(row["myocardium_ml"]) == pytest.approx((arr >= 2).sum() * voxel_ml, rel=1e-9)
    assert float(row["myocardium_g"]) == pytest.approx((arr >= 2).sum() * voxel_ml * 1.1, rel=1e-9)
    assert float(row["scar_percent_lv"]) == pytest.approx(100 * (arr >= 3).sum() / (arr >= 2).sum(), rel=1e-9)
    assert row["insertion_point_estimated"] == "false"
    printed = capsys.readouterr().out
    assert "scar" in printed and "case1_bullseye.png" in printed
    # the run record names the inputs by checksum, and no model (the labels came from the user)
    record = json.loads((tmp_path / "tables" / "case1_run.json").read_text())
    assert record["model"] is None and record["options"]["density_g_per_ml"] == 1.1
    assert [(e["path"], e["sha256"]) for e in record["inputs"]] == [
        (str(path), sha256_of(path)) for path in (labels_path, image_path)]


def test_cli_quantify_errors(study, tmp_path):
    p, labels_path, image_path, _ = study
    parser = _parser()
    args = parser.parse_args(["quantify", str(labels_path), "-o", str(tmp_path), "--name", "a", "--classical"])
    with pytest.raises(InputError, match="need the LGE image"):
        args.func(args)
    bad = sitk.GetArrayFromImage(p.labels).astype(np.int16)
    bad[0, 0, 0] = 9
    bad_image = sitk.GetImageFromArray(bad)
    bad_image.CopyInformation(p.labels)
    bad_path = tmp_path / "bad.nii.gz"
    sitk.WriteImage(bad_image, str(bad_path))
    args = parser.parse_args(["quantify", str(bad_path), "-o", str(tmp_path), "--name", "b"])
    with pytest.raises(InputError, match=r"outside 0\.\.4"):
        args.func(args)
    other = sitk.Image(10, 10, 3, sitk.sitkFloat32)
    other_path = tmp_path / "other.nii.gz"
    sitk.WriteImage(other, str(other_path))
    args = parser.parse_args(["quantify", str(labels_path), "--image", str(other_path), "-o", str(tmp_path), "--name", "c"])
    with pytest.raises(InputError, match="not on the grid"):
        args.func(args)
    args = parser.parse_args(["quantify", str(labels_path), "-o", str(tmp_path), "--name", "../c"])
    with pytest.raises(InputError, match="plain file-name stem"):
        args.func(args)
    assert not list(tmp_path.glob("*.csv"))              # nothing half-written on errors
    assert not list(tmp_path.glob("*.json"))
    with pytest.raises(SystemExit):
        parser.parse_args(["quantify", str(labels_path)])   # -o is required
