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
from ..io.validation import checked_voxels

# Relative tolerance when comparing two grids: header round-off (float32 NIfTI, DICOM strings)
# must not make a label map "differ" from the image it was drawn on.
GRID_TOLERANCE = 1e-4
NOMINAL_2D_THICKNESS_MM = 1.0


def as_volume(image: sitk.Image, name: str) -> tuple[sitk.Image, bool]:
    """Return a 3-D image and whether the input was 2-D.

    A 2-D image becomes one slice of NOMINAL_2D_THICKNESS_MM so that "mL" numbers equal
    area (cm²) / 10; percentages are unaffected.
    """
    checked_voxels(image, name, "a single-channel volume")
    if image.GetDimension() == 3:
        return image, False
    volume = sitk.JoinSeries([image], 0.0, NOMINAL_2D_THICKNESS_MM)
    d2 = np.asarray(image.GetDirection(), float).reshape(2, 2)
    d3 = np.eye(3)
    d3[:2, :2] = d2
    volume.SetDirection(tuple(d3.ravel()))
    volume.SetOrigin(tuple(image.GetOrigin()) + (0.0,))
    return volume, True


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


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"
