"""Checking and normalising what `quantify` is given.

Every problem a user can fix raises InputError saying what is wrong and what to do.
Labels and images are read once, into the layout of a Stack (ScarNetCore.pipeline.stack), as the
segmentation reads an image; a 2-D image is a stack of one slice (geometry.StackGeometry.of).
"""
from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..io.validation import checked_voxels, label_values, label_voxels
from ..pipeline.stack import LabelStack, Stack
from .geometry import grid_3d

# Relative tolerance when comparing two grids: header round-off (float32 NIfTI, DICOM strings)
# must not make a label map "differ" from the image it was drawn on.
GRID_TOLERANCE = 1e-4


def stack_inputs(labels, image: sitk.Image | None) -> tuple[Stack, np.ndarray, np.ndarray | None]:
    """(the Stack whose grid the labels lie on, the labels as int16 in its layout [N, h, w], the LGE image
    in that layout or None): each image's voxels read and checked once, none turned back into an image.
    `labels` is a label image (checked here, and `image` against its grid) or a LabelStack (the image is
    its stack's slices)."""
    if isinstance(labels, LabelStack):
        if image is not None:
            raise InputError("the labels carry their image (a LabelStack, e.g. a segmentation result's "
                             "label_stack): give no separate image")
        return labels.stack, label_values(labels.labels, "labels"), labels.stack.slices
    if not isinstance(labels, sitk.Image):
        raise InputError(f"labels must be a SimpleITK image or a LabelStack, got {type(labels).__name__}")
    stack = Stack.from_image(labels, label_voxels(labels, "labels"))  # its slices are the labels
    return stack, stack.slices, None if image is None else on_grid(stack, image, "image")


def on_grid(stack: Stack, image: sitk.Image, name: str) -> np.ndarray:
    """The voxels of `image` (a mask or image beside the labels) in the layout of the stack the labels lie
    on, once it is checked and on the stack's grid."""
    voxels = checked_voxels(image, name, "a single-channel volume")
    check_same_grid(stack.grid, image, "the labels", f"the {name}")
    return stack.layout(voxels.reshape(stack.grid.GetSize()[::-1]))  # a 2-D image beside a one-slice 3-D one


def check_same_grid(reference: sitk.Image, other: sitk.Image, ref_name: str, other_name: str) -> None:
    """Raise InputError unless `other` lies voxel for voxel on `reference`'s grid (compared as 3-D grids:
    a 2-D image and a one-slice 3-D image can share one)."""
    problems = []
    size_a, spacing_a, origin_a, direction_a = grid_3d(reference)
    size_b, spacing_b, origin_b, direction_b = grid_3d(other)
    if size_a != size_b:
        problems.append(f"size {size_b} vs {size_a}")
    else:
        if not np.allclose(spacing_a, spacing_b, rtol=GRID_TOLERANCE, atol=0):
            problems.append(f"spacing {_fmt(spacing_b)} vs {_fmt(spacing_a)}")
        # origins may differ by round-off only: 1 % of the smallest voxel side
        if not np.allclose(origin_a, origin_b, rtol=0, atol=0.01 * float(spacing_a.min())):
            problems.append(f"origin {_fmt(origin_b)} vs {_fmt(origin_a)}")
        if not np.allclose(direction_a, direction_b, rtol=0, atol=1e-3):
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
