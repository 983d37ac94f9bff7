"""n-SD and FWHM recover a planted scar on a synthetic LGE image with known intensity distributions."""
import numpy as np
import pytest
import SimpleITK as sitk

from ScarNetCore.errors import InputError
from ScarNetCore.quantify import quantify
from ScarNetCore.quantify.phantoms import ring_phantom

HEALTHY, SCAR_MEAN, SD = 100.0, 300.0, 10.0


def _study(offset=0.0, seed=0):
    p = ring_phantom(scar_depth_mm=6.0, mvo_depth_mm=2.0, scar_from_deg=0.0, scar_to_deg=120.0)
    labels = sitk.GetArrayFromImage(p.labels)
    rng = np.random.default_rng(seed)
    image = np.zeros(labels.shape)
    image[labels == 1] = 250.0
    image[labels == 2] = rng.normal(HEALTHY, SD, (labels == 2).sum())
    image[labels == 3] = rng.normal(SCAR_MEAN, SD, (labels == 3).sum())
    image[labels == 4] = 60.0                                    # MVO: dark core
    img = sitk.GetImageFromArray(image + offset)
    img.CopyInformation(p.labels)
    return p, labels, img


def _scar(image):
    return sitk.GetArrayFromImage(image) == 3


def test_nsd_and_fwhm_recover_planted_scar():
    p, labels, image = _study()
    result = quantify(p.labels, image, insertion_point=p.insertion_point, classical=True)
    g = result.global_metrics
    planted = labels == 3
    assert set(result.classical_labels) == {"2SD", "3SD", "5SD", "6SD", "FWHM"}
    # remote: a scar-free segment, with the healthy distribution's statistics
    assert g["remote_rule"].startswith("AHA segment") and g["remote_segment"] not in (2, 3, 8, 9, 13, 14, 15)
    assert g["remote_mean"] == pytest.approx(HEALTHY, abs=2.0) and g["remote_sd"] == pytest.approx(SD, rel=0.15)
    for name in ("5SD", "6SD", "FWHM"):
        assert np.array_equal(_scar(result.classical_labels[name]), planted), name
        assert g[f"scar_voxels_{name}"] == (labels >= 3).sum(), name      # scar ∪ MVO
    # 2 SD: the planted scar plus about 2.3 % of the healthy myocardium (one-sided normal tail)
    two = _scar(result.classical_labels["2SD"])
    assert (two & planted).sum() == planted.sum()
    false_rate = (two & (labels == 2)).sum() / (labels == 2).sum()
    assert 0.01 < false_rate < 0.045
    # MVO is kept as MVO (4), blood pool as 1, everything stays on the input grid
    five = sitk.GetArrayFromImage(result.classical_labels["5SD"])
    assert np.array_equal(five == 4, labels == 4) and np.array_equal(five == 1, labels == 1)
    assert result.classical_labels["5SD"].GetSize() == p.labels.GetSize()
    assert result.classical_labels["5SD"].GetDirection() == p.labels.GetDirection()
    # tables: scar % per method counts scar ∪ MVO like the reference
    myo = (labels >= 2).sum()
    assert g["scar_percent_lv_5SD"] == pytest.approx(100.0 * (labels >= 3).sum() / myo)
    assert g["scar_percent_lv_FWHM"] == pytest.approx(g["scar_percent_lv"])
    assert g["threshold_5SD"] == pytest.approx(g["remote_mean"] + 5 * g["remote_sd"])
    assert g["threshold_FWHM"] == pytest.approx(g["fwhm_peak"] / 2)
    rows = {r["segment"]: r for r in result.per_segment}
    assert rows[2]["scar_extent_percent_5SD"] == pytest.approx(rows[2]["scar_extent_percent"])
    assert sum(r["scar_ml_5SD"] for r in result.per_slice) == pytest.approx(g["scar_ml_5SD"])
    assert not any("FWHM" in w for w in result.warnings)


def test_user_remote_mask_and_offset_warning():
    p, labels, image = _study(offset=2000.0, seed=1)
    remote = sitk.GetImageFromArray((labels == 2).astype(np.uint8) * np.isin(
        sitk.GetArrayFromImage(quantify(p.labels, insertion_point=p.insertion_point).segment_labels), (5, 11)))
    remote.CopyInformation(p.labels)
    result = quantify(p.labels, image, insertion_point=p.insertion_point, classical=True, remote_mask=remote)
    g = result.global_metrics
    assert g["remote_rule"] == "user mask" and g["remote_segment"] is None
    assert g["remote_voxels"] == sitk.GetArrayFromImage(remote).sum()
    assert g["remote_mean"] == pytest.approx(HEALTHY + 2000.0, abs=2.0)
    # n-SD does not care about an intensity offset ...
    assert np.array_equal(_scar(result.classical_labels["5SD"]), labels == 3)
    # ... FWHM does, and says so
    assert g["scar_percent_lv_FWHM"] > 90
    assert any("FWHM" in w and "offset" in w for w in result.warnings)


def test_classical_needs_image_and_valid_remote():
    p, labels, image = _study()
    with pytest.raises(InputError, match="need the LGE image"):
        quantify(p.labels, classical=True)
    outside = sitk.Image(p.labels.GetSize(), sitk.sitkUInt8)
    outside.CopyInformation(p.labels)
    with pytest.raises(InputError, match="remote-myocardium mask has 0 voxels"):
        quantify(p.labels, image, classical=True, remote_mask=outside)
    with pytest.raises(InputError, match="only used by the classical methods"):
        quantify(p.labels, image, remote_mask=outside)
