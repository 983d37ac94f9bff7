"""Where voxels are in the patient: slice axis, physical in-plane coordinates, voxel volume.

Arrays are handled in "stack" layout [slice, a, b]: the layout of ScarNetCore.pipeline.stack.split_slices,
which the segmentation also uses, so quantify's slice t is the segmentation's slice t. `slice` is the
acquisition (through-plane) axis and (a, b) the rows and columns, so per-slice loops and long-axis
logic never depend on how the file happened to order its axes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..pipeline.stack import Stack

# A 2-D image is one slice of this thickness, so that its "mL" numbers equal area (cm²) / 10;
# percentages are unaffected.
NOMINAL_2D_THICKNESS_MM = 1.0
# LPS unit vectors of the directions that matter anatomically.
PATIENT_RIGHT = np.array([-1.0, 0.0, 0.0])
PATIENT_ANTERIOR = np.array([0.0, -1.0, 0.0])
# The LV long axis points from base to apex roughly towards left, anterior and inferior.
TYPICAL_APEX_DIRECTION = np.array([1.0, -1.0, -1.0]) / np.sqrt(3.0)


def grid_3d(image) -> tuple[tuple[int, int, int], np.ndarray, np.ndarray, np.ndarray]:
    """(size, spacing, origin, 3x3 direction) of a 2-D or 3-D image's grid, in index order. A 2-D image
    is one slice of NOMINAL_2D_THICKNESS_MM along a third axis (k) normal to its plane, at k = 0."""
    size, spacing, origin = image.GetSize(), image.GetSpacing(), image.GetOrigin()
    direction = np.asarray(image.GetDirection(), float).reshape(image.GetDimension(), -1)
    if image.GetDimension() == 2:
        size, spacing, origin = (*size, 1), (*spacing, NOMINAL_2D_THICKNESS_MM), (*origin, 0.0)
        direction = np.pad(direction, (0, 1))
        direction[2, 2] = 1.0
    return tuple(int(n) for n in size), np.asarray(spacing, float), np.asarray(origin, float), direction


@dataclass(frozen=True)
class StackGeometry:
    size: tuple[int, int, int]          # SimpleITK index order (i, j, k)
    spacing: np.ndarray                 # mm, index order
    origin: np.ndarray                  # LPS mm
    direction: np.ndarray               # 3x3, column d = physical direction of index axis d
    slice_axis: int                     # index axis of the acquisition (through-plane) direction
    inplane_axes: tuple[int, int]       # index axes of the stack's rows (a) and columns (b)

    @classmethod
    def of(cls, stack: Stack) -> "StackGeometry":
        """The geometry of a Stack's grid (grid_3d), cut as the stack is (slice_index_axis)."""
        size, spacing, origin, direction = grid_3d(stack.grid)
        slice_axis = 2 if stack.axis is None else 2 - stack.axis  # numpy axis n is index axis 2 - n
        # split_slices keeps the other array axes in order
        inplane = tuple(d for d in (2, 1, 0) if d != slice_axis)
        return cls(size=size, spacing=spacing, origin=origin, direction=direction, slice_axis=slice_axis,
                   inplane_axes=inplane)  # type: ignore[arg-type]

    # ---- layout ----------------------------------------------------------------------------
    @property
    def n_slices(self) -> int:
        return int(self.size[self.slice_axis])

    @property
    def inplane_shape(self) -> tuple[int, int]:
        return int(self.size[self.inplane_axes[0]]), int(self.size[self.inplane_axes[1]])

    # ---- physical quantities ------------------------------------------------------------
    @property
    def voxel_volume_mm3(self) -> float:
        # |det| is 1 for the orthonormal matrices real scanners write; kept for sheared headers
        return float(np.prod(self.spacing) * abs(np.linalg.det(self.direction)))

    @property
    def step_a(self) -> np.ndarray:
        """Physical displacement (mm) of one step along in-plane index axis a."""
        return self.direction[:, self.inplane_axes[0]] * self.spacing[self.inplane_axes[0]]

    @property
    def step_b(self) -> np.ndarray:
        return self.direction[:, self.inplane_axes[1]] * self.spacing[self.inplane_axes[1]]

    @property
    def step_slice(self) -> np.ndarray:
        return self.direction[:, self.slice_axis] * self.spacing[self.slice_axis]

    @property
    def normal(self) -> np.ndarray:
        """Unit normal of the slice planes, pointing towards increasing slice index."""
        n = np.cross(self.step_a, self.step_b)
        n /= np.linalg.norm(n)
        return n if float(n @ self.step_slice) >= 0 else -n

    @property
    def slice_thickness_mm(self) -> float:
        return float(abs(self.step_slice @ self.normal))

    def physical(self, t, a, b) -> np.ndarray:
        """LPS point(s) of stack index (t, a, b); accepts scalars or broadcastable arrays."""
        t, a, b = (np.asarray(v, float)[..., None] for v in (t, a, b))
        return self.origin + t * self.step_slice + a * self.step_a + b * self.step_b

    def continuous_stack_index(self, point) -> np.ndarray:
        """Inverse of `physical`: (t, a, b) of an LPS point."""
        matrix = np.column_stack([self.step_slice, self.step_a, self.step_b])
        return np.linalg.solve(matrix, np.asarray(point, float) - self.origin)

    def slice_centre(self, t: int) -> np.ndarray:
        """LPS point at the centre of slice t's grid."""
        na, nb = self.inplane_shape
        return self.physical(t, (na - 1) / 2.0, (nb - 1) / 2.0)

    def slice_position(self, t: int) -> float:
        """Signed distance (mm) of slice t along the slice normal: one number per slice for tables/plots."""
        return float(self.slice_centre(t) @ self.normal)

    def inplane_basis(self, apex_direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Orthonormal (u, v) in the slice plane with u × v = apex_direction.

        Angles atan2(y·v, x·u) then increase counter-clockwise as seen from the apex looking
        towards the base, the direction in which AHA segments 1→2→…→6 are numbered.
        """
        u = self.step_a - (self.step_a @ apex_direction) * apex_direction
        u /= np.linalg.norm(u)
        v = np.cross(apex_direction, u)
        return u, v

    def inplane_matrix(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """2x2 matrix taking in-plane index offsets (Δa, Δb) to physical in-plane mm (x along u, y along v)."""
        return np.array([[self.step_a @ u, self.step_b @ u],
                         [self.step_a @ v, self.step_b @ v]])

