"""Checking and normalising what `quantify` is given.

Every problem a user can fix raises InputError saying what is wrong and what to do.
2-D inputs become single-slice 3-D volumes (1 mm nominal thickness, see `as_volume`) so the
rest of the package handles one case only.
"""
from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..labels import MVO

# Relative tolerance when comparing two grids: header round-off (float32 NIfTI, DICOM strings)
# must not make a label map "differ" from the image it was drawn on.
GRID_TOLERANCE = 1e-4
NOMINAL_2D_THICKNESS_MM = 1.0


def as_volume(image: sitk.Image, name: str) -> tuple[sitk.Image, bool]:
    """Return a 3-D image and whether the input was 2-D.

    A 2-D image becomes one slice of NOMINAL_2D_THICKNESS_MM so that "mL" numbers equal
    area (cm²) / 10; percentages are unaffected.
    """
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{name}: has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                         "give a single-channel volume")
    dim = image.GetDimension()
    if dim == 3:
        return image, False
    if dim != 2:
        raise InputError(f"{name}: is {dim}-D; give a 2-D slice or a 3-D short-axis stack")
    volume = sitk.JoinSeries([image], 0.0, NOMINAL_2D_THICKNESS_MM)
    d2 = np.asarray(image.GetDirection(), float).reshape(2, 2)
    d3 = np.eye(3)
    d3[:2, :2] = d2
    volume.SetDirection(tuple(d3.ravel()))
    volume.SetOrigin(tuple(image.GetOrigin()) + (0.0,))
    return volume, True


def label_array(labels: sitk.Image, name: str = "labels") -> np.ndarray:
    """The label volume as an int array (sitk z,y,x order), rejecting non-label content."""
    array = sitk.GetArrayFromImage(labels)
    if array.size == 0:
        raise InputError(f"{name}: is empty (size {labels.GetSize()})")
    if not np.issubdtype(array.dtype, np.number):
        raise InputError(f"{name}: voxel type {labels.GetPixelIDTypeAsString()} is not numeric; give a label map")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise InputError(f"{name}: has NaN/Inf voxels; give a label map with values 0..4")
        # float storage is common (EMIDEC stores labels as float64); only whole numbers are labels
        if not np.array_equal(array, np.round(array)):
            raise InputError(f"{name}: has non-integer values (e.g. {_first_fractional(array):g}); "
                             "this looks like an image or a probability map, not a label map with values 0..4")
    lo, hi = float(array.min()), float(array.max())
    if lo < 0 or hi > MVO:
        bad = np.unique(array[(array < 0) | (array > MVO)])[:5]
        raise InputError(f"{name}: has label values {', '.join(f'{v:g}' for v in bad)} outside 0..4 "
                         "(0 background, 1 LV blood pool, 2 myocardium, 3 scar, 4 MVO); "
                         "relabel it to the ScarNet/EMIDEC convention")
    return array.astype(np.int16)


def check_same_grid(reference: sitk.Image, other: sitk.Image, ref_name: str, other_name: str) -> None:
    """Raise InputError unless `other` lies voxel for voxel on `reference`'s grid."""
    problems = []
    if reference.GetSize() != other.GetSize():
        problems.append(f"size {other.GetSize()} vs {reference.GetSize()}")
    else:
        spacing_a, spacing_b = np.array(reference.GetSpacing()), np.array(other.GetSpacing())
        if not np.allclose(spacing_a, spacing_b, rtol=GRID_TOLERANCE, atol=0):
            problems.append(f"spacing {_fmt(spacing_b)} vs {_fmt(spacing_a)}")
        # origins may differ by round-off only: 1 % of the smallest voxel side
        if not np.allclose(reference.GetOrigin(), other.GetOrigin(), rtol=0, atol=0.01 * float(spacing_a.min())):
            problems.append(f"origin {_fmt(other.GetOrigin())} vs {_fmt(reference.GetOrigin())}")
        if not np.allclose(reference.GetDirection(), other.GetDirection(), rtol=0, atol=1e-3):
            problems.append("direction matrices differ")
    if problems:
        raise InputError(f"{other_name} is not on the grid of {ref_name} ({'; '.join(problems)}); "
                         f"resample {other_name} onto {ref_name} (e.g. in Slicer: Resample Image (BRAINS) "
                         "with the label volume as reference) or give the image the labels were drawn on")


def image_array(image: sitk.Image, name: str = "image") -> np.ndarray:
    array = sitk.GetArrayFromImage(image)
    if not np.issubdtype(array.dtype, np.number):
        raise InputError(f"{name}: voxel type {image.GetPixelIDTypeAsString()} is not numeric")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise InputError(f"{name}: has {int((~np.isfinite(array)).sum())} NaN/Inf voxels; fix or mask them first")
    return array


def check_density(density_g_per_ml: float) -> float:
    try:
        density = float(density_g_per_ml)
    except (TypeError, ValueError):
        raise InputError(f"density {density_g_per_ml!r} is not a number; give g/mL, e.g. 1.05") from None
    if not math.isfinite(density) or density <= 0:
        raise InputError(f"density {density_g_per_ml!r} must be a positive number of g/mL (myocardium: 1.05)")
    return density


def check_point(point, was_2d: bool) -> np.ndarray | None:
    """An insertion point as a length-3 float array (a 2-D point gets z = 0 on a 2-D image)."""
    if point is None:
        return None
    try:
        values = np.asarray([float(v) for v in point], dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"insertion point {point!r} must be three numbers X Y Z (physical LPS mm)") from None
    if was_2d and values.size == 2:
        values = np.append(values, 0.0)
    if values.size != 3 or not np.isfinite(values).all():
        raise InputError(f"insertion point {point!r} must be three finite numbers X Y Z (physical LPS mm)")
    return values


def _first_fractional(array: np.ndarray) -> float:
    flat = array.ravel()
    return float(flat[np.flatnonzero(flat != np.round(flat))[0]])


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"
