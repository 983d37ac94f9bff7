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
