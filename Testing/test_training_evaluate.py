"""Evaluation: metrics on synthetic labels with known Dice/HD95, summaries, noise, and scarnet-evaluate end to end."""
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from training import data, evaluate, plots, robustness

EMIDEC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "emidec"
SPLIT = Path(__file__).resolve().parents[1] / "training" / "configs" / "emidec_split.json"
needs_data = pytest.mark.skipif(not (EMIDEC / "slices").is_dir(), reason=f"EMIDEC data not found at {EMIDEC}")


def box(shape, z, y, x):
    m = np.zeros(shape, bool)
    m[z[0]:z[1], y[0]:y[1], x[0]:x[1]] = True
    return m


@pytest.mark.parametrize("spacing", [(10.0, 1.0, 0.7), (10.0, 0.7, 1.0), (1.0, 1.0, 1.0)])
def test_box_widened_along_x_has_exact_dice_and_hd95(spacing):
    # Reference: a 8 × 20 × 40 voxel box. Prediction: the same box widened by k = 2 columns on both x sides.
    # Every boundary distance lies in [0, k·sx], and the x walls of the middle slices (> 5 % of the boundary
    # voxels in both directions) are exactly k·sx away, so HD95 = k·sx whatever the slice thickness.
    # Dice = 2·|R| / (|R| + |P|) = 2·40 / (40 + 44).
    k = 2
    ref = box((10, 40, 80), (1, 9), (10, 30), (20, 60))
    pred = box((10, 40, 80), (1, 9), (10, 30), (20 - k, 60 + k))
    assert evaluate.hd95(pred, ref, spacing) == pytest.approx(k * spacing[2], rel=1e-6)
    assert evaluate.hd95(ref, pred, spacing) == pytest.approx(k * spacing[2], rel=1e-6)  # symmetric
    labels_ref, labels_pred = ref.astype(np.uint8) * 2, pred.astype(np.uint8) * 2
    m = evaluate.case_metrics(labels_pred, labels_ref, spacing)
    assert m["myocardium_dice"] == pytest.approx(80 / 84)
    assert m["myocardium_hd95_mm"] == pytest.approx(k * spacing[2], rel=1e-6)
    voxel_ml = np.prod(spacing) / 1000
    assert m["ref_myocardium_ml"] == pytest.approx(8 * 20 * 40 * voxel_ml)
    assert m["pred_myocardium_ml"] == pytest.approx(8 * 20 * 44 * voxel_ml)


def test_box_widened_along_y_uses_the_y_spacing():
    ref = box((10, 60, 60), (1, 9), (20, 40), (10, 50))
    pred = box((10, 60, 60), (1, 9), (17, 43), (10, 50))
    assert evaluate.hd95(pred, ref, (8.0, 0.7, 1.3)) == pytest.approx(3 * 0.7, rel=1e-6)


def test_spheres_offset_by_known_distance():
    # Two balls of radius R = 10 voxels whose centres are d = 4 voxels apart along x.
    # Continuous geometry: Dice = lens volume / ball volume = (4R + d)(2R − d)² / (16 R³) = 0.704;
    # the largest surface distance is exactly d, so HD95 ≤ d (up to a voxel of discretisation).
    R, d, s = 10, 4, 1.5
    zz, yy, xx = np.mgrid[:32, :32, :40]
    a = (zz - 16) ** 2 + (yy - 16) ** 2 + (xx - 16) ** 2 <= R ** 2
    b = (zz - 16) ** 2 + (yy - 16) ** 2 + (xx - 16 - d) ** 2 <= R ** 2
    m = evaluate.case_metrics(b.astype(np.uint8) * 3, a.astype(np.uint8) * 3, (s, s, s))
    assert m["scar_dice"] == pytest.approx((4 * R + d) * (2 * R - d) ** 2 / (16 * R ** 3), abs=0.02)
    assert 0.5 * d * s <= m["scar_hd95_mm"] <= (d + 1) * s
    assert m["myocardium_dice"] == m["scar_dice"]          # scar is myocardium
    assert math.isnan(m["mvo_dice"]) and math.isnan(m["mvo_hd95_mm"])


def test_empty_masks():
    empty, some = np.zeros((3, 8, 8), np.uint8), np.zeros((3, 8, 8), np.uint8)
    some[1, 2:5, 2:5] = 3
    both = evaluate.case_metrics(empty, empty, (10, 1, 1))
    assert math.isnan(both["scar_dice"]) and math.isnan(both["scar_hd95_mm"])   # undefined
    assert math.isnan(both["ref_scar_percent"])                                 # no myocardium
    missed = evaluate.case_metrics(empty, some, (10, 1, 1))
    assert missed["scar_dice"] == 0 and missed["scar_hd95_mm"] == math.inf
    false_pos = evaluate.case_metrics(some, empty, (10, 1, 1))
    assert false_pos["scar_dice"] == 0 and false_pos["scar_hd95_mm"] == math.inf
    assert false_pos["pred_scar_percent"] == 100.0 and false_pos["pred_scar_ml"] == pytest.approx(9 * 10 / 1000)


def _ring_case(scar_cols):
    """5 × 20 × 20 labels: blood pool inside a myocardium ring; scar on the given x columns of the ring."""
    lab = np.zeros((5, 20, 20), np.uint8)
    lab[1:4, 4:16, 4:16] = 2
    lab[1:4, 7:13, 7:13] = 1
    if scar_cols:
        ring = lab[1:4, :, scar_cols[0]:scar_cols[1]]
        ring[ring == 2] = 3
    return lab


def test_summary_separates_empty_references():
    spacing = (10.0, 1.25, 1.25)
    infarct, normal = _ring_case((4, 8)), _ring_case(None)
    rows = []
    for name, pred, ref in (("infarct", _ring_case((4, 7)), infarct), ("normal_ok", normal, normal),
                            ("normal_fp", _ring_case((13, 16)), normal)):
        rows.append({"case": name, **evaluate.case_metrics(pred, ref, spacing)})
    s = evaluate.summarize(rows)
    scar = s["structures"]["scar"]
    assert scar["dice_cases"] == 1 and scar["dice_mean"] == pytest.approx(rows[0]["scar_dice"])
    assert math.isnan(scar["dice_sd"])                    # one case: SD undefined
    assert all(math.isnan(v) for v in scar["dice_ci95"])  # ... and so is a confidence interval
    assert scar["both_empty_cases"] == ["normal_ok"] and scar["false_positive_cases"] == ["normal_fp"]
    assert scar["infinite_hd95_cases"] == ["normal_fp"] and scar["hd95_cases"] == 1
    myo = s["structures"]["myocardium"]
    assert myo["dice_cases"] == 3 and myo["dice_mean"] == pytest.approx(1.0) and myo["hd95_mm_mean"] == 0
    assert s["structures"]["mvo"]["both_empty_cases"] == ["infarct", "normal_ok", "normal_fp"]
    a = s["scar_percent_agreement"]
    diffs = [r["pred_scar_percent"] - r["ref_scar_percent"] for r in rows]
    assert a["n"] == 3 and a["bias"] == pytest.approx(np.mean(diffs))
    assert a["loa_high"] == pytest.approx(np.mean(diffs) + 1.96 * np.std(diffs, ddof=1))


def test_agreement_and_plots(tmp_path):
    ref = np.array([0.0, 5.0, 10.0, 20.0, 30.0])
    a = plots.agreement(2 * ref + 1, ref)
    assert a["pearson_r"] == pytest.approx(1.0) and a["bias"] == pytest.approx(ref.mean() + 1)
    offsets = np.array([3.0, 1.0, 3.0, 1.0, 2.0])              # bias 2, SD sqrt(2.0/4) ... computed below
    b = plots.agreement(ref + offsets, ref)
    assert b["bias"] == pytest.approx(2.0)
    assert b["sd_difference"] == pytest.approx(np.sqrt(((offsets - 2) ** 2).sum() / 4))
    assert b["loa_low"] == pytest.approx(2 - 1.96 * b["sd_difference"])
    nan = plots.agreement([1.0, math.nan, 3.0], [1.0, 2.0, math.inf])   # non-finite pairs are left out
    assert nan["n"] == 1 and math.isnan(nan["pearson_r"]) and math.isnan(nan["sd_difference"])
    for draw, name in ((plots.correlation_plot, "c.png"), (plots.bland_altman_plot, "ba.png")):
        stats = draw(ref + offsets, ref, tmp_path / name)
        assert stats == b
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_noise_matches_its_snr_definition():
    rng = np.random.default_rng(0)
    image = np.full((4, 100, 100), 200.0)
    labels = np.zeros(image.shape, np.uint8)
    labels[:, 40:60, 40:60] = 1
    image[labels == 0] = 10.0
    s = robustness.signal_level(image, labels)
    assert s == 200.0                                           # mean in the reference LV
    sigma = s / 10                                              # SNR 10
    g = robustness.add_noise(image, "gaussian", sigma, rng)
    assert np.std(g - image) == pytest.approx(sigma, rel=0.02) and abs(np.mean(g - image)) < 0.2
    zero = robustness.add_noise(np.zeros((200, 200)), "rician", 3.0, rng)
    assert zero.min() >= 0 and zero.mean() == pytest.approx(3.0 * math.sqrt(math.pi / 2), rel=0.02)  # Rayleigh
    bright = robustness.add_noise(np.full((200, 200), 60.0), "rician", 3.0, rng)
    assert bright.mean() == pytest.approx(math.sqrt(60.0 ** 2 + 3.0 ** 2), rel=0.01)
    first = robustness.add_noise(image, "rician", sigma, robustness.noise_rng(1, 2, "rician", 0, 3))
    again = robustness.add_noise(image, "rician", sigma, robustness.noise_rng(1, 2, "rician", 0, 3))
    other = robustness.add_noise(image, "rician", sigma, robustness.noise_rng(1, 2, "rician", 0, 4))
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    with pytest.raises(ValueError, match="noise"):
        robustness.add_noise(image, "speckle", 1.0, rng)


def test_the_mean_dice_gets_a_bootstrap_confidence_interval():
    """A BCa bootstrap over cases: around the mean, as wide as the normal approximation for many
    cases, the same on every run, undefined for fewer than three cases."""
    values = np.random.default_rng(3).normal(0.8, 0.05, 200)
    low, high = evaluate.mean_ci95(values)
    half = 1.96 * np.std(values, ddof=1) / np.sqrt(len(values))
    assert low < values.mean() < high
    assert (high - low) / 2 == pytest.approx(half, rel=0.15)
    assert evaluate.mean_ci95(values) == (low, high)
    skewed = [0.0, 0.55, 0.6, 0.62, 0.65, 0.7, 0.72, 0.75]  # one failed case pulls the mean down
    low, high = evaluate.mean_ci95(skewed)
    assert low < np.mean(skewed) < high and np.mean(skewed) - low > high - np.mean(skewed)
    assert all(math.isnan(v) for v in evaluate.mean_ci95([0.8, 0.9]))
    assert evaluate.mean_ci95([0.7, 0.7, 0.7, math.nan]) == (0.7, 0.7)


def test_robustness_summary():
    runs = []
    for case, values in (("a", [0.8, 0.6]), ("b", [0.5, 0.5])):
        for repeat, v in enumerate(values):
            runs.append({"case": case, "noise": "gaussian", "snr": 10.0, "repeat": repeat,
                         "myocardium_dice": v, "scar_dice": math.nan if case == "b" else v})
    clean = {"a": {"myocardium_dice": 0.9, "scar_dice": 0.9}, "b": {"myocardium_dice": 0.7, "scar_dice": math.nan}}
    rows = {r["structure"]: r for r in robustness.summarize_runs(runs, ("myocardium", "scar"), clean)}
    myo = rows["myocardium"]
    assert myo["runs"] == 4 and myo["cases"] == 2
    assert myo["dice_mean"] == pytest.approx(0.6) and myo["dice_sd"] == pytest.approx(np.std([.8, .6, .5, .5], ddof=1))
    assert myo["dice_cv"] == pytest.approx(myo["dice_sd"] / 0.6)
    # within-case CV: case a SD(0.8, 0.6)/0.7, case b 0 → mean of the two
    assert myo["within_case_cv"] == pytest.approx((np.std([.8, .6], ddof=1) / 0.7 + 0) / 2)
    assert myo["clean_dice_mean"] == pytest.approx(0.8)
    assert rows["scar"]["runs"] == 2 and rows["scar"]["clean_dice_mean"] == pytest.approx(0.9)


@needs_data
def test_volume_pairs_and_case_selection():
    """training/data.py reads the layouts, the split and the labels for evaluation as for training."""
    pairs = data.volume_pairs(EMIDEC / "volumes")
    assert sorted(pairs) == ["sampleNegative", "samplePositive"] == data.case_ids(EMIDEC / "volumes", "volumes")
    assert pairs["samplePositive"][1].name == "samplePositive_label.nii.gz"
    ids = data.case_ids(EMIDEC / "slices", "slices")
    assert len(ids) == 80
    test_ids = data.select_cases(ids, SPLIT, "test", None)
    assert test_ids == sorted(json.loads(SPLIT.read_text())["test"])
    assert data.select_cases(ids, SPLIT, "test", ["Case_N016", "Case_N006"]) == ["Case_N016"]
    with pytest.raises(ValueError, match="no subset"):
        data.select_cases(ids, SPLIT, "tset", None)
    (case,) = data.read_cases(EMIDEC / "slices", "slices", ["Case_N016"], in_plane_mm=1.25, thickness_mm=10.0)
    assert case.image.GetSize() == (256, 256, 4) and case.image.GetSpacing() == (1.25, 1.25, 10.0)
    assert case.labels.shape == (4, 256, 256) and case.spacing == (10.0, 1.25, 1.25)
    samples = data.read_dataset(EMIDEC / "slices", "slices", cases={"Case_N016"})   # the training reader
    assert [s.index for s in samples] == list(range(4)) and {s.case for s in samples} == {"Case_N016"}
    assert all(np.array_equal(s.mask, labels) for s, labels in zip(samples, case.labels))   # 256 px at 1.25 mm: as read


def _read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    """A randomly initialised ScarNet in the one checkpoint format: checks the pipeline, not accuracy."""
    from ScarNetCore.model.checkpoint import save_checkpoint
    from ScarNetCore.model import ScarNet, ScarNetConfig
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "random.safetensors"
    return save_checkpoint(path, ScarNet(ScarNetConfig(base_channels=4), pretrained_encoder=False), name="random")


@needs_data
def test_evaluate_slices_end_to_end(tmp_path, random_checkpoint):
    out = tmp_path / "eval"
    rc = evaluate.main(["--model", str(random_checkpoint), "--data", str(EMIDEC / "slices"), "--out", str(out),
                        "--split", str(SPLIT), "--subset", "test", "--cases", "Case_N016", "--save-predictions"])
    assert rc == 0
    (row,) = _read_csv(out / "per_case.csv")
    assert row["case"] == "Case_N016" and row["slices"] == "4" and row["spacing_mm"] == "10×1.25×1.25"
    masks = np.stack([sitk.GetArrayFromImage(sitk.ReadImage(str(p)))
                      for p in sorted((EMIDEC / "slices" / "masks").glob("Case_N016_slice*.png"))])
    voxel_ml = 1.25 * 1.25 * 10 / 1000
    assert float(row["ref_myocardium_ml"]) == pytest.approx(np.isin(masks, (2, 3, 4)).sum() * voxel_ml, rel=1e-5)
    assert float(row["ref_scar_ml"]) == 0 and float(row["ref_scar_percent"]) == 0
    # the table agrees with the prediction that was written
    pred_img = sitk.ReadImage(str(out / "predictions" / "Case_N016.nii.gz"))
    assert pred_img.GetSpacing() == (1.25, 1.25, 10.0)
    pred = sitk.GetArrayFromImage(pred_img)
    assert pred.shape == masks.shape and pred.max() <= 4
    expected = evaluate.case_metrics(pred, masks, (10.0, 1.25, 1.25))
    for key in ("myocardium_dice", "myocardium_hd95_mm", "scar_dice", "pred_scar_ml", "pred_scar_percent"):
        assert float(row[key]) == pytest.approx(expected[key], rel=1e-4, nan_ok=True), key
    summary = json.loads((out / "summary.json").read_text())
    assert summary["case_ids"] == ["Case_N016"] and summary["layout"] == "slices"
    assert summary["nominal_spacing_mm"] == {"in_plane": 1.25, "slice_thickness": 10.0}
    assert summary["structures"]["scar"]["dice_cases"] == 0        # normal case: no reference scar
    assert "Case_N016" in (summary["structures"]["mvo"]["both_empty_cases"]
                           + summary["structures"]["mvo"]["false_positive_cases"])
    assert {r["quantity"] for r in _read_csv(out / "summary.csv")} >= {"myocardium_dice", "scar_hd95_mm", "scar_percent_bias"}
    for name in ("scar_percent_correlation.png", "scar_percent_bland_altman.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert evaluate.main(["--model", str(random_checkpoint), "--data", str(EMIDEC / "slices"),
                          "--out", str(tmp_path / "x"), "--cases", "Case_X999"]) == 2


@needs_data
def test_evaluate_volume_with_noise_end_to_end(tmp_path, random_checkpoint):
    # the training layout (images/ + masks/) with 2 slices of the real sample: real spacing, scar and MVO
    image = sitk.ReadImage(str(EMIDEC / "volumes" / "samplePositive_image.nii.gz"))
    label = sitk.ReadImage(str(EMIDEC / "volumes" / "samplePositive_label.nii.gz"))
    scar_per_slice = (np.rint(sitk.GetArrayFromImage(label)) >= 3).sum(axis=(1, 2))
    top = int(np.argmax(scar_per_slice))
    z0 = min(top, image.GetSize()[2] - 2)
    root = tmp_path / "data"
    for folder, img in (("images", image), ("masks", label)):
        (root / folder).mkdir(parents=True)
        sitk.WriteImage(img[:, :, z0:z0 + 2], str(root / folder / "P1.nii.gz"))
    ref = np.rint(sitk.GetArrayFromImage(label)[z0:z0 + 2]).astype(int)
    out = tmp_path / "eval"
    rc = evaluate.main(["--model", str(random_checkpoint), "--data", str(root), "--out", str(out),
                        "--noise", "rician", "--snr", "10", "--repeats", "2"])
    assert rc == 0
    (row,) = _read_csv(out / "per_case.csv")
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000
    assert row["spacing_mm"] == "13×1.40625×1.40625"
    assert float(row["ref_scar_ml"]) == pytest.approx(np.isin(ref, (3, 4)).sum() * voxel_ml, rel=1e-5)
    assert float(row["ref_mvo_ml"]) == pytest.approx((ref == 4).sum() * voxel_ml, rel=1e-5)
    assert float(row["ref_scar_percent"]) == pytest.approx(100 * np.isin(ref, (3, 4)).sum() / np.isin(ref, (2, 3, 4)).sum())
    runs = _read_csv(out / "robustness_runs.csv")
    assert [(r["noise"], float(r["snr"]), r["repeat"]) for r in runs] == [("rician", 10.0, "0"), ("rician", 10.0, "1")]
    signal = sitk.GetArrayFromImage(image[:, :, z0:z0 + 2])[(ref >= 1) & (ref <= 4)].mean()
    assert float(runs[0]["sigma"]) == pytest.approx(signal / 10, rel=1e-5)
    table = {r["structure"]: r for r in _read_csv(out / "robustness.csv")}
    assert set(table) == {"myocardium", "scar", "mvo"} and table["scar"]["runs"] == "2"
    values = [float(r["scar_dice"]) for r in runs]
    assert float(table["scar"]["dice_mean"]) == pytest.approx(np.mean(values), abs=1e-5)
    assert float(table["scar"]["clean_dice_mean"]) == pytest.approx(float(row["scar_dice"]), abs=1e-5)
    assert (out / "robustness.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "summary.json").read_text())["robustness"]["repeats"] == 2
