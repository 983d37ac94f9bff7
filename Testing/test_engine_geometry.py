"""The label volume lies exactly on the input grid, whatever the orientation or dimension of the input."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import SLICE_IMAGES

from ScarNetCore.io.reading import read_image


def assert_same_grid(labels: sitk.Image, image: sitk.Image):
    # exact equality: the output must be resampling-free and loadable as a segmentation of the input
    assert labels.GetDimension() == image.GetDimension()
    assert labels.GetSize() == image.GetSize()
    assert labels.GetSpacing() == image.GetSpacing()
    assert labels.GetOrigin() == image.GetOrigin()
    assert labels.GetDirection() == image.GetDirection()
    assert labels.GetPixelID() == sitk.sitkUInt8
    values = np.unique(sitk.GetArrayViewFromImage(labels))
    assert set(values.tolist()) <= {0, 1, 2, 3, 4}


def test_geometry_preserved_positive(positive_slab, positive_slab_result):
    result, _ = positive_slab_result
    assert_same_grid(result.labels, positive_slab)
    assert result.probabilities is None  # only on request
    assert result.model_info["name"] == "test-random"
    # labels to compare: the tests below check that other layouts of this image give the same ones
    assert sitk.GetArrayFromImage(result.labels).any() and "no_lv_found" not in result.qc_flags


def test_geometry_preserved_negative(segmenter, negative_slab):
    result = segmenter.segment(negative_slab, batch_size=2, return_probabilities=True)
    assert_same_grid(result.labels, negative_slab)
    probs = result.probabilities
    assert probs.GetNumberOfComponentsPerPixel() == 5
    assert probs.GetSize() == negative_slab.GetSize() and probs.GetDirection() == negative_slab.GetDirection()
    p = sitk.GetArrayFromImage(probs)
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, atol=1e-5)


def test_progress_monotonic_ends_at_total(positive_slab_result):
    _, calls = positive_slab_result
    totals = {total for _, total in calls}
    done = [d for d, _ in calls]
    assert totals == {2}
    assert done == sorted(done) and done[0] == 0 and done[-1] == 2


def test_2d_sitk_slice(segmenter, positive_image):
    image2d = positive_image[:, :, 3]
    assert image2d.GetDimension() == 2
    result = segmenter.segment(image2d)
    assert_same_grid(result.labels, image2d)


def test_2d_png_file(segmenter):
    pngs = sorted(SLICE_IMAGES.glob("*.png"))
    if not pngs:
        pytest.skip(f"no EMIDEC PNG slices under {SLICE_IMAGES}")
    image = read_image(pngs[len(pngs) // 2])
    result = segmenter.segment(image)
    assert_same_grid(result.labels, image)


def test_acquisition_axis_not_last(segmenter, positive_slab, positive_slab_result):
    """Slices along x (index axis 0) are found by spacing and segmented in-plane, as in the original."""
    original, _ = positive_slab_result
    # new index (i', j', k') = old (k, i, j): the 13 mm slice axis becomes the first index axis
    permuted = sitk.PermuteAxes(positive_slab, [2, 0, 1])
    assert permuted.GetSpacing()[0] == positive_slab.GetSpacing()[2]
    result = segmenter.segment(permuted, batch_size=1)
    assert_same_grid(result.labels, permuted)
    back = sitk.PermuteAxes(result.labels, [1, 2, 0])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(original.labels))


def _rotation(axis, angle_deg):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = np.radians(angle_deg)
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def test_oblique_copy_identical_labels(segmenter, positive_slab, positive_slab_result):
    original, _ = positive_slab_result
    oblique = sitk.Image(positive_slab)
    direction = _rotation((0.3, -0.5, 0.8), 37.0) @ np.asarray(positive_slab.GetDirection()).reshape(3, 3)
    oblique.SetDirection(direction.ravel().tolist())
    oblique.SetOrigin((-120.5, 33.25, 410.0))
    result = segmenter.segment(oblique, batch_size=1)
    assert_same_grid(result.labels, oblique)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.labels), sitk.GetArrayFromImage(original.labels))


def test_a_single_slice_stored_as_3d_is_one_slice_everywhere(segmenter):
    """A 1×64×64 (z, y, x) image whose slice spacing (1.0 mm) is the smallest: inference and
    quantification (and the overlay, by the same rule) take it as one slice, not 64 along the rows."""
    from ScarNetCore.quantify import quantify
    from ScarNetCore.pipeline.stack import cut_axis
    yy, xx = np.mgrid[:64, :64]
    labels = np.zeros((1, 64, 64), np.uint8)
    radius = np.hypot(yy - 32, xx - 32)
    labels[0][radius < 16] = 2
    labels[0][radius < 9] = 1
    labels[0][(radius >= 9) & (radius < 16) & (xx > 36)] = 3
    image = sitk.GetImageFromArray(labels.astype(np.float32) * 100 + 50)
    image.SetSpacing((1.5, 1.5, 1.0))
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(image)
    assert cut_axis(image) == 0
    result = quantify(label_image, image)
    assert len(result.per_slice) == 1
    assert segmenter.segment(image).labels.GetSize() == (64, 64, 1)
