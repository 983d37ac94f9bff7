"""Known-answer tests of volumes, AHA segments and transmurality on analytic ring phantoms."""
import math

import numpy as np
import pytest
import SimpleITK as sitk

from ScarNetCore.quantify import quantify
from ScarNetCore.quantify import aha
from ScarNetCore.quantify.aha import sector_segments
from ScarNetCore.quantify.geometry import StackGeometry
from ScarNetCore.quantify.phantoms import ring_phantom, rotation
from ScarNetCore.quantify.transmurality import chords
from ScarNetCore.pipeline.stack import Stack

R_IN, R_OUT, THICK = 20.0, 30.0, 8.0


def _count(image, lo, hi):
    a = sitk.GetArrayFromImage(image)
    return int(((a >= lo) & (a <= hi)).sum())


def _by_segment(result):
    return {row["segment"]: row for row in result.per_segment}


def test_volumes_and_masses_exact_to_voxel_counting():
    p = ring_phantom(scar_depth_mm=5.0, mvo_depth_mm=2.0)
    g = quantify(p.labels, insertion_point=p.insertion_point, density_g_per_ml=1.1).global_metrics
    voxel_ml = 1.0 * 1.0 * THICK / 1000.0
    myo, scar, mvo, pool = (_count(p.labels, 2, 4), _count(p.labels, 3, 4), _count(p.labels, 4, 4),
                            _count(p.labels, 1, 1))
    assert g["voxel_volume_ml"] == pytest.approx(voxel_ml, rel=1e-12)
    assert (g["myocardium_voxels"], g["scar_voxels"], g["mvo_voxels"], g["blood_pool_voxels"]) == (myo, scar, mvo, pool)
    assert g["myocardium_ml"] == pytest.approx(myo * voxel_ml, rel=1e-12)
    assert g["myocardium_g"] == pytest.approx(myo * voxel_ml * 1.1, rel=1e-12)
    assert g["scar_ml"] == pytest.approx(scar * voxel_ml, rel=1e-12)
    assert g["scar_g"] == pytest.approx(scar * voxel_ml * 1.1, rel=1e-12)
    assert g["mvo_ml"] == pytest.approx(mvo * voxel_ml, rel=1e-12)
    assert g["blood_pool_ml"] == pytest.approx(pool * voxel_ml, rel=1e-12)
    assert g["scar_percent_lv"] == pytest.approx(100.0 * scar / myo, rel=1e-12)
    assert g["mvo_percent_lv"] == pytest.approx(100.0 * mvo / myo, rel=1e-12)
    # and close to the continuous geometry: 9 annuli + 1 disc; 120° sector 5 mm deep
    myo_exact = (9 * math.pi * (R_OUT ** 2 - R_IN ** 2) + math.pi * R_OUT ** 2) * THICK / 1000
    scar_exact = 9 * (120 / 360) * math.pi * ((R_IN + 5) ** 2 - R_IN ** 2) * THICK / 1000
    assert g["myocardium_ml"] == pytest.approx(myo_exact, rel=0.02)
    assert g["scar_ml"] == pytest.approx(scar_exact, rel=0.03)


def test_segment_assignment_exact_and_sector_scar_extent():
    p = ring_phantom(scar_from_deg=0.0, scar_to_deg=120.0)     # transmural scar over the septum
    result = quantify(p.labels, insertion_point=p.insertion_point)
    labels = sitk.GetArrayFromImage(p.labels)
    levels = np.array([1, 1, 1, 2, 2, 2, 3, 3, 3, 4])[:, None, None] * np.ones_like(labels)
    expected = np.where(labels >= 2, sector_segments(levels, p.angle_from_insertion_deg), 0)
    assert np.array_equal(sitk.GetArrayFromImage(result.segment_labels), expected)
    rows = _by_segment(result)
    for seg in (2, 3, 8, 9):                                    # the septum: fully scarred
        assert rows[seg]["scar_extent_percent"] == 100.0
        assert rows[seg]["transmurality_class"] == "76-100"
    for seg in (1, 4, 5, 6, 7, 10, 11, 12, 16, 17):
        assert rows[seg]["scar_voxels"] == 0 and rows[seg]["scar_extent_percent"] == 0.0
        assert rows[seg]["transmurality_max_percent"] == 0.0 and rows[seg]["transmurality_class"] == "0"
    assert rows[14]["scar_extent_percent"] == 100.0           # apical septal 15°..105° inside the scar
    assert 0 < rows[13]["scar_extent_percent"] < 30 and 0 < rows[15]["scar_extent_percent"] < 30
    assert sum(r["myocardium_voxels"] for r in result.per_segment) == result.global_metrics["myocardium_voxels"]
    assert result.global_metrics["insertion_point_estimated"] is False


def test_long_axis_thirds_and_apex_cap():
    p = ring_phantom(cavity_slices=9, cap_slices=2)
    result = quantify(p.labels, insertion_point=p.insertion_point)
    assert [r["level"] for r in result.per_slice] == ["basal"] * 3 + ["mid"] * 3 + ["apical"] * 3 + ["apex"] * 2
    rows = _by_segment(result)
    per_slice = [r["myocardium_voxels"] for r in result.per_slice]
    assert sum(rows[s]["myocardium_voxels"] for s in range(1, 7)) == sum(per_slice[0:3])
    assert sum(rows[s]["myocardium_voxels"] for s in range(13, 17)) == sum(per_slice[6:9])
    assert rows[17]["myocardium_voxels"] == sum(per_slice[9:11])
    assert result.global_metrics["apex_end"] == "high slice index"
    positions = [r["position"] for r in result.per_slice]
    assert np.allclose(np.diff(positions), THICK)
    assert sum(r["scar_voxels"] for r in result.per_slice) == result.global_metrics["scar_voxels"]

    seven = quantify(ring_phantom(cavity_slices=7, cap_slices=0).labels)   # no cap, equal cavities
    assert [r["level"] for r in seven.per_slice] == ["apical"] * 2 + ["mid"] * 3 + ["basal"] * 2
    # identity orientation: the normal (+S) points away from left-anterior-inferior, so apex = low index
    assert seven.global_metrics["apex_rule"].startswith("image orientation")
    assert seven.per_segment[16]["myocardium_voxels"] == 0 and seven.per_segment[16]["scar_extent_percent"] is None


@pytest.mark.parametrize("depth,spacing,size", [(3.0, (1.0, 1.0, THICK), (81, 81)),
                                                (5.0, (1.0, 1.0, THICK), (81, 81)),
                                                (8.0, (1.0, 1.0, THICK), (81, 81)),
                                                (5.0, (0.7, 1.3, THICK), (101, 55))])
def test_transmurality_within_one_voxel(depth, spacing, size):
    p = ring_phantom(scar_depth_mm=depth, spacing=spacing, inplane_size=size)
    result = quantify(p.labels, insertion_point=p.insertion_point)
    voxel = max(spacing[:2])
    wall = R_OUT - R_IN
    # every chord through the scar measures scar thickness and wall thickness within one voxel
    labels = Stack.from_image(p.labels, sitk.GetArrayFromImage(p.labels).astype(np.int16))
    frame = aha.LVFrame.of(labels.slices, StackGeometry.of(labels))
    ins = aha.insertion_from_point(np.asarray(p.insertion_point), frame)
    frame = frame.with_insertion(ins.angle_deg)
    seg = aha.segment_map(frame)
    found = chords(frame, seg)
    in_scar = np.isin(found.segment, (2, 3, 8, 9))
    assert in_scar.sum() == 4 * 60 * 3
    assert np.abs(found.scar_mm[in_scar] - depth).max() <= voxel
    assert np.abs(found.wall_mm[in_scar] - wall).max() <= voxel
    rows = _by_segment(result)
    expected = 100.0 * depth / wall
    for s in (2, 3, 8, 9, 14):
        assert abs(rows[s]["transmurality_mean_percent"] - expected) <= 100.0 * voxel / wall
        assert rows[s]["transmurality_max_percent"] <= 100.0 * (depth + voxel) / (wall - voxel)
    for s in (1, 4, 5, 6, 7, 10, 11, 12, 16):
        assert rows[s]["transmurality_max_percent"] == 0.0 and rows[s]["transmurality_class"] == "0"


def _same_numbers(a, b, trans_tol=1e-6):
    for key in ("myocardium_voxels", "scar_voxels", "mvo_voxels", "blood_pool_voxels"):
        assert a.global_metrics[key] == b.global_metrics[key]
    for key in ("myocardium_ml", "scar_ml", "scar_percent_lv"):
        assert a.global_metrics[key] == pytest.approx(b.global_metrics[key], rel=1e-9)
    for ra, rb in zip(a.per_segment, b.per_segment):
        assert (ra["segment"], ra["myocardium_voxels"], ra["scar_voxels"]) == \
               (rb["segment"], rb["myocardium_voxels"], rb["scar_voxels"])
        if ra["transmurality_mean_percent"] is not None:
            assert ra["transmurality_mean_percent"] == pytest.approx(rb["transmurality_mean_percent"], abs=trans_tol)


def _reindex(image, array, spacing, direction, origin):
    out = sitk.GetImageFromArray(np.ascontiguousarray(array))
    out.SetSpacing(tuple(float(s) for s in spacing))
    out.SetDirection(tuple(float(d) for d in np.asarray(direction).ravel()))
    out.SetOrigin(tuple(float(o) for o in origin))
    return out


def test_oblique_permuted_and_flipped_geometry_same_physical_numbers():
    base = ring_phantom(scar_depth_mm=5.0, scar_from_deg=60.0, scar_to_deg=240.0)
    reference = quantify(base.labels, insertion_point=base.insertion_point)
    # oblique: the same object under a rotated direction matrix and another origin
    rot = rotation((0.3, -0.5, 0.8), 37.0) @ rotation((1.0, 0.2, 0.0), -61.0)
    oblique = ring_phantom(scar_depth_mm=5.0, scar_from_deg=60.0, scar_to_deg=240.0, direction=rot,
                           origin=(-12.5, 40.0, 103.0))
    _same_numbers(reference, quantify(oblique.labels, insertion_point=oblique.insertion_point), trans_tol=0.5)
    # slices along index axis 0 instead of 2 (columns permuted with the array: same voxel positions)
    arr, d = sitk.GetArrayFromImage(base.labels), np.eye(3)
    permuted = _reindex(base.labels, np.transpose(arr, (1, 2, 0)), (THICK, 1.0, 1.0), d[:, [2, 0, 1]], (0, 0, 0))
    _same_numbers(reference, quantify(permuted, insertion_point=base.insertion_point))
    # slice order reversed (determinant -1): apex now at low index, physics unchanged
    nz = arr.shape[0]
    flipped = _reindex(base.labels, arr[::-1], (1.0, 1.0, THICK), np.diag([1.0, 1.0, -1.0]), (0, 0, THICK * (nz - 1)))
    result = quantify(flipped, insertion_point=base.insertion_point)
    assert result.global_metrics["apex_end"] == "low slice index"
    _same_numbers(reference, result)


def test_anisotropic_inplane_spacing_same_physical_numbers():
    kwargs = dict(scar_depth_mm=5.0, scar_from_deg=0.0, scar_to_deg=120.0)
    iso = ring_phantom(spacing=(1.0, 1.0, THICK), inplane_size=(81, 81), **kwargs)
    aniso = ring_phantom(spacing=(0.7, 1.3, THICK), inplane_size=(101, 55), **kwargs)
    a = quantify(iso.labels, insertion_point=iso.insertion_point)
    b = quantify(aniso.labels, insertion_point=aniso.insertion_point)
    assert b.global_metrics["myocardium_voxels"] == _count(aniso.labels, 2, 4)
    assert b.global_metrics["myocardium_ml"] == pytest.approx(_count(aniso.labels, 2, 4) * 0.7 * 1.3 * THICK / 1000)
    assert b.global_metrics["myocardium_ml"] == pytest.approx(a.global_metrics["myocardium_ml"], rel=0.02)
    assert b.global_metrics["scar_ml"] == pytest.approx(a.global_metrics["scar_ml"], rel=0.04)
    assert abs(b.global_metrics["scar_percent_lv"] - a.global_metrics["scar_percent_lv"]) < 0.5
    ra, rb = _by_segment(a), _by_segment(b)
    for seg in range(1, 18):
        assert ra[seg]["myocardium_ml"] == pytest.approx(rb[seg]["myocardium_ml"], rel=0.05)
        assert abs(ra[seg]["scar_extent_percent"] - rb[seg]["scar_extent_percent"]) < 3.0
    for seg in (2, 3, 8, 9, 14):   # 50 % transmural; one (largest) voxel is 13 % of the wall
        assert abs(rb[seg]["transmurality_mean_percent"] - ra[seg]["transmurality_mean_percent"]) <= 13.0


def test_estimated_insertion_point_standard_orientation():
    apex = np.array([1.0, -1.0, -1.0]) / math.sqrt(3)   # typical LV long axis, LPS
    i_axis = np.cross(apex, [0.0, 0.0, 1.0])
    i_axis /= np.linalg.norm(i_axis)
    direction = np.column_stack([i_axis, np.cross(apex, i_axis), apex])
    p = ring_phantom(direction=direction)
    result = quantify(p.labels)
    g = result.global_metrics
    assert g["insertion_point_estimated"] is True
    assert any("estimated" in w for w in result.warnings)
    assert all(np.isfinite([g["insertion_point_x"], g["insertion_point_y"], g["insertion_point_z"]]))
    # the mid-wall voxel lying towards the patient's right is septal, the one towards the left lateral
    seg = sitk.GetArrayFromImage(result.segment_labels)
    k = 4                                              # a mid slice
    centre = np.array(p.labels.TransformContinuousIndexToPhysicalPoint((40.0, 40.0, float(k))))
    for toward, allowed in (((-1, 0, 0), {8, 9}), ((1, 0, 0), {11, 12})):
        w = np.asarray(toward, float) - (np.dot(toward, apex)) * apex
        point = centre + 25.0 * w / np.linalg.norm(w)
        i, j, kk = p.labels.TransformPhysicalPointToIndex(tuple(point))
        assert kk == k and seg[kk, j, i] in allowed


def test_two_d_slice():
    p = ring_phantom(cavity_slices=1, cap_slices=0, scar_depth_mm=5.0)
    slice2d = p.labels[:, :, 0]
    point = p.insertion_point[:2]
    result = quantify(slice2d, insertion_point=point)
    g = result.global_metrics
    assert g["input_2d"] is True and len(result.per_slice) == 1
    assert g["myocardium_ml"] == pytest.approx(_count(p.labels, 2, 4) * 1.0 / 1000)   # 1 mm nominal thickness
    rows = _by_segment(result)
    assert all(rows[s]["myocardium_voxels"] == 0 for s in list(range(1, 7)) + list(range(13, 18)))
    # a 2-D slice is seen as displayed (x right, y down) from the apex, i.e. the apex lies towards -z:
    # the phantom's sector [0°, 120°) counter-clockwise about +z is [240°, 360°) seen from the apex
    assert g["apex_rule"].startswith("image orientation")
    assert rows[7]["scar_extent_percent"] > 40 and rows[12]["scar_extent_percent"] > 40
    assert all(rows[s]["scar_extent_percent"] == 0 for s in (8, 9, 10, 11))
    assert result.segment_labels.GetDimension() == 2


def test_no_myocardium_and_no_blood_pool_cases():
    empty = sitk.Image(20, 20, 3, sitk.sitkUInt8)
    result = quantify(empty)
    assert result.global_metrics["myocardium_voxels"] == 0
    assert result.global_metrics["scar_percent_lv"] is None
    assert any("no myocardium" in w for w in result.warnings)
    # only myocardium labelled (no cavity): slices stay basal/mid/apical, nothing becomes the apex
    p = ring_phantom(cap_slices=0)
    arr = sitk.GetArrayFromImage(p.labels)
    arr[arr == 1] = 0
    only_myo = sitk.GetImageFromArray(arr)
    only_myo.CopyInformation(p.labels)
    rows = _by_segment(quantify(only_myo, insertion_point=p.insertion_point))
    assert rows[17]["myocardium_voxels"] == 0 and rows[7]["myocardium_voxels"] > 0
