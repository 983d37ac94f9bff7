"""Slice geometry of a volume: which axis is the acquisition axis, and how to cut along it."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def slice_axis(image: sitk.Image) -> int:
    """Numpy axis (z, y, x order) of the acquisition direction: the index axis with the largest spacing.

    Short-axis LGE stacks have 5–10 mm between slices and ~1–2 mm in plane; ties (isotropic data)
    fall back to the slowest axis, the usual slice order of a stack.
    """
    spacing_zyx = image.GetSpacing()[::-1]
    return int(np.argmax(np.round(spacing_zyx, 6)))


def split_slices(array_zyx: np.ndarray, image: sitk.Image, axis: int):
    """Move `axis` to the front: returns ([N, h, w] slices, (row, column) spacing in mm)."""
    spacing_zyx = image.GetSpacing()[::-1]
    in_plane = tuple(s for i, s in enumerate(spacing_zyx) if i != axis)
    return np.moveaxis(array_zyx, axis, 0), in_plane


def join_slices(slices: np.ndarray, axis: int) -> np.ndarray:
    """Inverse of split_slices."""
    return np.moveaxis(slices, 0, axis)
