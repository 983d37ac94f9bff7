"""Slice geometry of a volume: which axis is the acquisition axis, and how to cut along it."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def slice_index_axis(spacing_xyz, size_xyz=None) -> int:
    """Index axis (0 = i/x, 1 = j/y, 2 = k/z) of the acquisition direction: the one rule every part of
    ScarNet cuts a 3-D image by (inference, quantification, overlay, training).

    A length-1 axis (a single slice stored as 3-D) is the slice axis whatever its spacing (the last
    such axis). Otherwise the largest spacing: short-axis LGE stacks have 5–10 mm between slices and
    ~1–2 mm in plane; ties (isotropic data) go to the highest axis (k), the usual slice order.
    """
    if size_xyz is not None and 1 in tuple(size_xyz):
        return max(d for d, n in enumerate(size_xyz) if n == 1)
    spacing = np.asarray(spacing_xyz, float)
    return int(max(d for d in range(len(spacing)) if spacing[d] >= spacing.max() * (1 - 1e-6)))


def slice_axis(image: sitk.Image) -> int:
    """Numpy axis (z, y, x order) of a 3-D image's acquisition direction, see slice_index_axis."""
    return image.GetDimension() - 1 - slice_index_axis(image.GetSpacing(), image.GetSize())


def cut_axis(image: sitk.Image) -> int | None:
    """Numpy axis the Segmenter cuts an image along: slice_axis; None for a 2-D image (one slice)."""
    return None if image.GetDimension() == 2 else slice_axis(image)


def split_slices(array_zyx: np.ndarray, image: sitk.Image, axis: int):
    """Move `axis` to the front: returns ([N, h, w] slices, (row, column) spacing in mm).

    The one slice layout: inference, the overlay, training and quantify (StackGeometry) all cut this
    way, so slice t, its rows and its columns mean the same everywhere.
    """
    spacing_zyx = image.GetSpacing()[::-1]
    in_plane = tuple(s for i, s in enumerate(spacing_zyx) if i != axis)
    return np.moveaxis(array_zyx, axis, 0), in_plane


def join_slices(slices: np.ndarray, axis: int) -> np.ndarray:
    """Inverse of split_slices."""
    return np.moveaxis(slices, 0, axis)
