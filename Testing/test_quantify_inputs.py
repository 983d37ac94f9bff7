"""Inputs a user can get wrong give InputError with a message saying what to do."""
import numpy as np
import pytest
import SimpleITK as sitk

from ScarNetCore.errors import InputError, ScarNetError
from ScarNetCore.quantify import quantify
from ScarNetCore.quantify.phantoms import ring_phantom


def _image(array, like=None):
    image = sitk.GetImageFromArray(array)
    if like is not None:
        image.CopyInformation(like)
    return image


@pytest.fixture(scope="module")
def phantom():
    return ring_phantom(cavity_slices=3, cap_slices=0, inplane_size=(71, 71))


def test_label_values_outside_range(phantom):
    arr = sitk.GetArrayFromImage(phantom.labels).astype(np.int16)
    arr[0, 0, 0] = 5
    with pytest.raises(InputError, match=r"outside 0\.\.4"):
        quantify(_image(arr, phantom.labels))
    arr[0, 0, 0] = -1
    with pytest.raises(InputError, match="-1"):
        quantify(_image(arr, phantom.labels))


def test_non_integer_and_float_labels(phantom):
    arr = sitk.GetArrayFromImage(phantom.labels).astype(np.float64)
    ok = quantify(_image(arr, phantom.labels))          # EMIDEC stores labels as float64: fine
    assert ok.global_metrics["myocardium_voxels"] == int((arr >= 2).sum())
    arr[1, 5, 5] = 1.5
    with pytest.raises(InputError, match="non-integer"):
        quantify(_image(arr, phantom.labels))
    arr[1, 5, 5] = np.nan
    with pytest.raises(InputError, match="NaN"):
        quantify(_image(arr, phantom.labels))


def test_image_grid_must_match(phantom):
    labels = phantom.labels
    image = sitk.Cast(labels, sitk.sitkFloat32)
    moved = sitk.Image(image)
    moved.SetSpacing((1.0, 1.2, 8.0))
    with pytest.raises(InputError, match="not on the grid.*spacing"):
        quantify(labels, moved)
    shifted = sitk.Image(image)
    shifted.SetOrigin((0.0, 3.0, 0.0))
    with pytest.raises(InputError, match="origin"):
        quantify(labels, shifted)
    smaller = sitk.Image(70, 71, 3, sitk.sitkFloat32)
    with pytest.raises(InputError, match="size"):
        quantify(labels, smaller)
    tiny_roundoff = sitk.Image(image)
    tiny_roundoff.SetOrigin((1e-5, 0.0, 0.0))
    quantify(labels, tiny_roundoff)                      # header round-off is not a different grid


def test_bad_parameters(phantom):
    for density in (0, -1.0, float("nan"), "abc"):
        with pytest.raises(InputError, match="density"):
            quantify(phantom.labels, density_g_per_ml=density)
    with pytest.raises(InputError, match="three"):
        quantify(phantom.labels, insertion_point=(1.0, 2.0))
    centre = phantom.labels.TransformContinuousIndexToPhysicalPoint((35.0, 35.0, 1.0))
    with pytest.raises(InputError, match="long axis"):
        quantify(phantom.labels, insertion_point=centre)
    with pytest.raises(InputError, match="SimpleITK image"):
        quantify(np.zeros((3, 3, 3)))
    rgb = sitk.Compose([sitk.Cast(phantom.labels, sitk.sitkUInt8)] * 3)
    with pytest.raises(ScarNetError, match="components"):
        quantify(rgb)


def test_far_insertion_point_warns_about_ras(phantom):
    # a point given in RAS by mistake (X, Y negated) lands far from the heart
    x, y, z = phantom.insertion_point
    result = quantify(phantom.labels, insertion_point=(-x - 200, -y - 200, z))
    assert any("RAS" in w for w in result.warnings)


def _same_report(a, b):
    assert a.global_metrics == b.global_metrics and a.warnings == b.warnings
    assert a.per_slice == b.per_slice and a.per_segment == b.per_segment
    for one, other in [(a.segment_labels, b.segment_labels), *zip(a.classical_labels.values(),
                                                                  b.classical_labels.values())]:
        assert one.GetSize() == other.GetSize() and one.GetSpacing() == other.GetSpacing()
        assert one.GetOrigin() == other.GetOrigin() and one.GetDirection() == other.GetDirection()
        np.testing.assert_array_equal(sitk.GetArrayFromImage(one), sitk.GetArrayFromImage(other))
    assert list(a.classical_labels) == list(b.classical_labels)


@pytest.mark.parametrize("shape", ["stack", "2-D slice", "single slice stored as 3-D", "slices along i"])
def test_labels_on_the_image_stack_give_the_numbers_of_the_label_image(phantom, shape):
    """What the segmentation hands over (a LabelStack: the labels in the layout the image was cut into)
    and the same labels as an image on the input grid give the same report, number for number and voxel
    for voxel, whichever axis the image is cut along and for 2-D images."""
    from ScarNetCore.pipeline.stack import LabelStack
    labels = phantom.labels
    if shape == "2-D slice":
        labels = labels[:, :, 1]
    elif shape == "single slice stored as 3-D":
        labels = labels[:, :, 1:2]
    elif shape == "slices along i":
        labels = sitk.PermuteAxes(labels, (2, 0, 1))
    array = sitk.GetArrayFromImage(labels)
    # an LGE-like image as scanners store it (int16): brighter scar, some texture, on the labels' grid
    texture = np.random.default_rng(0).normal(0, 5, array.shape)
    image = _image((100.0 + 300.0 * (array >= 3) + texture).astype(np.int16), labels)
    stack = LabelStack.on(image, array)
    assert stack.to_image().GetSize() == labels.GetSize()
    _same_report(quantify(labels, image, classical=True), quantify(stack, classical=True))


def test_a_label_stack_carries_its_image():
    from ScarNetCore.pipeline.stack import LabelStack
    image = _image(np.random.default_rng(1).normal(100, 10, (3, 20, 20)))
    stack = LabelStack.on(image, np.zeros((3, 20, 20), np.uint8))
    with pytest.raises(InputError, match="carry their image"):
        quantify(stack, image)
    with pytest.raises(ValueError, match="do not lie on"):
        LabelStack(stack.stack, np.zeros((3, 20, 21), np.uint8))
    with pytest.raises(InputError, match="outside 0..4"):
        quantify(LabelStack(stack.stack, np.full((3, 20, 20), 7, np.uint8)))


def test_a_2d_slice_and_the_same_slice_stored_as_3d_share_a_grid():
    """A 2-D label map beside a one-slice 3-D image (1 mm thick at z = 0, as a 2-D slice is measured), and
    the other way round, lie on one grid: the same numbers as two 2-D images, not a grid error."""
    p = ring_phantom(cavity_slices=1, cap_slices=0, spacing=(1.0, 1.0, 1.0))
    flat, one_slice = p.labels[:, :, 0], p.labels[:, :, 0:1]
    image = sitk.Cast(one_slice, sitk.sitkFloat32) * 100 + 5    # healthy myocardium 205, scar 305

    def numbers(labels, beside):
        metrics = quantify(labels, beside, classical=True, remote_mask=(beside > 150) & (beside < 250)).global_metrics
        return {k: v for k, v in metrics.items() if k != "input_2d"}
    reference = numbers(flat, image[:, :, 0])
    assert numbers(flat, image) == reference and numbers(one_slice, image[:, :, 0]) == reference
