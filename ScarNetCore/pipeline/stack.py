"""The stack: a 2-D or 3-D image as the networks see it, slices along the acquisition axis.

One rule says which axis that is (slice_index_axis), and one layout follows from it (split_slices:
[slice, row, column], the other array axes in order). Inference, quantification (StackGeometry), the
overlay and training all cut this way, so slice t, its rows and its columns mean the same everywhere.
A 2-D image is a stack of one slice.
"""
from __future__ import annotations

from dataclasses import dataclass

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


def cut_axis(image: sitk.Image) -> int | None:
    """Numpy axis (z, y, x order) a 3-D image is cut along (slice_index_axis); None for a 2-D image."""
    if image.GetDimension() == 2:
        return None
    return image.GetDimension() - 1 - slice_index_axis(image.GetSpacing(), image.GetSize())


def split_slices(array_zyx: np.ndarray, image: sitk.Image, axis: int):
    """Move `axis` to the front: returns ([N, h, w] slices, (row, column) spacing in mm)."""
    spacing_zyx = image.GetSpacing()[::-1]
    in_plane = tuple(s for i, s in enumerate(spacing_zyx) if i != axis)
    return np.moveaxis(array_zyx, axis, 0), in_plane


def join_slices(slices: np.ndarray, axis: int) -> np.ndarray:
    """Inverse of split_slices."""
    return np.moveaxis(slices, 0, axis)


def neighbour_indices(index: np.ndarray, count: int, context: int, step: int = 1) -> np.ndarray:
    """[n, 2·context + 1] stack positions: each slice between its neighbours `step` slices away; a
    neighbour beyond the ends of the stack is the slice itself (as in training)."""
    index = np.asarray(index)[:, None]
    positions = index + np.arange(-context, context + 1)[None] * step
    return np.where((positions < 0) | (positions >= count), index, positions)


@dataclass(frozen=True)
class Stack:
    """An image cut into slices: `slices` [N, h, w] float32 in acquisition order, their in-plane
    `spacing` (row, column) in mm, the distance between slices `slice_mm` (None: a 2-D image, one
    slice), and where they came from (`axis`, the numpy axis cut; `grid`, the image whose size,
    spacing, origin and direction every result is given back on)."""
    slices: np.ndarray
    spacing: tuple[float, float]
    slice_mm: float | None
    axis: int | None
    grid: sitk.Image

    @classmethod
    def from_image(cls, image: sitk.Image) -> "Stack":
        array = sitk.GetArrayFromImage(image).astype(np.float32)
        axis = cut_axis(image)
        if axis is None:
            return cls(array[None], tuple(image.GetSpacing()[::-1]), None, None, image)
        slices, spacing = split_slices(array, image, axis)
        return cls(slices, spacing, image.GetSpacing()[::-1][axis], axis, image)

    def __len__(self) -> int:
        return len(self.slices)

    def neighbour_step(self, neighbour_mm: float) -> int:
        """How many slices apart a slice's neighbours `neighbour_mm` away are in this stack (at least
        1; 1 when the slice distance is unknown, a single slice)."""
        return max(1, int(round(neighbour_mm / self.slice_mm))) if self.slice_mm else 1

    def split(self, image: sitk.Image) -> np.ndarray:
        """Another image on this grid (labels drawn on it) in this stack's layout [N, h, w]."""
        array = sitk.GetArrayFromImage(image)
        return array[None] if self.axis is None else split_slices(array, self.grid, self.axis)[0]

    def to_image(self, per_slice: np.ndarray) -> sitk.Image:
        """[N, h, w] (or [N, K, h, w]: one vector component per class) → an image on this grid."""
        if per_slice.ndim == 4:
            per_slice = np.moveaxis(per_slice, 1, -1)
        array = per_slice[0] if self.axis is None else np.moveaxis(per_slice, 0, self.axis)
        out = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=per_slice.ndim == 4)
        out.CopyInformation(self.grid)
        return out
