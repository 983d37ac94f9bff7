"""The stack: a 2-D or 3-D image as the networks see it, slices along the acquisition axis.

One rule says which axis that is (slice_index_axis), and one layout follows from it (split_slices:
[slice, row, column], the other array axes in order). Inference, quantification (StackGeometry), the
overlay and training all cut this way, so slice t, its rows and its columns mean the same everywhere.
A 2-D image is a stack of one slice. A segmentation travels as a LabelStack (labels in that layout and
the Stack they lie on) from the Segmenter to quantify, the overlay and the DICOM SEG; it becomes an
image only to be written as one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # imported where an image is made or read: training imports this module on machines
    import SimpleITK as sitk  # without SimpleITK (the GPU machine), for the slice layout alone


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


def neighbour_indices(index: np.ndarray, count: int, context: int, step: int = 1) -> np.ndarray:
    """[n, 2·context + 1] stack positions: each slice between its neighbours `step` slices away; a
    neighbour beyond the ends of the stack is the slice itself (as in training)."""
    index = np.asarray(index)[:, None]
    positions = index + np.arange(-context, context + 1)[None] * step
    return np.where((positions < 0) | (positions >= count), index, positions)


@dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class Stack:
    """An image cut into slices: `slices` [N, h, w] in acquisition order (float32 unless from_image was
    given the voxels, as quantify gives a label map's), their in-plane
    `spacing` (row, column) in mm, the distance between slices `slice_mm` (None: a 2-D image, one
    slice), and where they came from (`axis`, the numpy axis cut; `grid`, the image whose size,
    spacing, origin and direction every result is given back on)."""
    slices: np.ndarray
    spacing: tuple[float, float]
    slice_mm: float | None
    axis: int | None
    grid: sitk.Image

    @classmethod
    def from_image(cls, image: sitk.Image, voxels: np.ndarray | None = None) -> "Stack":
        """The image cut into slices; `voxels`: its voxels already read (numpy z, y, x order, e.g. checked
        label values), else they are read here as float32."""
        import SimpleITK as sitk
        array = sitk.GetArrayFromImage(image).astype(np.float32) if voxels is None else voxels
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

    def layout(self, array_zyx: np.ndarray) -> np.ndarray:
        """An array on this grid (numpy z, y, x order) in this stack's layout [N, h, w] (a view)."""
        return array_zyx[None] if self.axis is None else split_slices(array_zyx, self.grid, self.axis)[0]

    def join(self, per_slice: np.ndarray) -> np.ndarray:
        """Inverse of `layout`: [N, h, w] (or [N, h, w, K]) back in the grid's numpy order (a view)."""
        return per_slice[0] if self.axis is None else np.moveaxis(per_slice, 0, self.axis)

    def to_image(self, per_slice: np.ndarray) -> sitk.Image:
        """[N, h, w] (or [N, K, h, w]: one vector component per class) → an image on this grid."""
        import SimpleITK as sitk
        vector = per_slice.ndim == 4
        array = self.join(np.moveaxis(per_slice, 1, -1) if vector else per_slice)
        out = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=vector)
        out.CopyInformation(self.grid)
        return out


@dataclass(frozen=True, eq=False)
class LabelStack:
    """A segmentation as its readers take it (quantify, the overlay, the DICOM SEG): `labels` 0..4 in a
    stack's layout [N, h, w], and the `stack` they are drawn on (its grid; its slices are the LGE image).
    Segmenter.segment gives one, so the labels reach those readers with no trip through an image."""
    stack: Stack
    labels: np.ndarray

    def __post_init__(self):
        if self.labels.shape != self.stack.slices.shape:
            raise ValueError(f"labels of shape {self.labels.shape} do not lie on a stack of {self.stack.slices.shape}")

    @classmethod
    def on(cls, image: sitk.Image, labels_zyx: np.ndarray) -> "LabelStack":
        """Labels given as an array on `image`'s grid (numpy z, y, x order: a label map's voxels, Slicer's
        labelmap array) on that image's stack."""
        stack = Stack.from_image(image)
        return cls(stack, stack.layout(labels_zyx))

    def to_image(self) -> sitk.Image:
        """The label image (uint8) on the stack's grid: what is written as NIfTI."""
        return self.stack.to_image(self.labels.astype(np.uint8, copy=False))
