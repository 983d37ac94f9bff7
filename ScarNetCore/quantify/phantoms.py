"""Analytic ring phantoms with known answers, for tests and self-checks.

The LV is a stack of annuli (blood pool inside r_inner, myocardium to r_outer) on a grid whose
slices run along index axis k; optional apical-cap slices (solid myocardial discs, no cavity)
follow the cavity slices at high k, so the apex is at high k (without a cap, aha.py's other
rules decide; with an identity direction that puts the apex at low k and mirrors the angles). Angles are measured in the
physical in-plane frame (x along the direction of index axis i, y along index axis j),
counter-clockwise about +k, i.e. as seen from the apex; scar fills the sector
[insertion + scar_from_deg, insertion + scar_to_deg) from the endocardium out to scar_depth_mm.
The phantom is built in index space from physical millimetres, so any direction matrix with
determinant +1 describes the same physical object.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..labels import BLOOD_POOL, MVO, MYOCARDIUM, SCAR


@dataclass
class RingPhantom:
    labels: sitk.Image
    insertion_point: tuple[float, float, float]
    angle_from_insertion_deg: np.ndarray   # per voxel (sitk z, y, x array layout), in-plane, [0, 360)
    radius_mm: np.ndarray                  # per voxel, from the LV axis
    r_inner: float
    r_outer: float
    cavity_slices: int
    cap_slices: int


def ring_phantom(r_inner: float = 20.0, r_outer: float = 30.0, spacing=(1.0, 1.0, 8.0), inplane_size=(81, 81),
                 cavity_slices: int = 9, cap_slices: int = 1, insertion_deg: float = 10.0,
                 scar_from_deg: float = 0.0, scar_to_deg: float = 120.0, scar_depth_mm: float | None = None,
                 mvo_depth_mm: float = 0.0, direction=None, origin=(0.0, 0.0, 0.0)) -> RingPhantom:
    nx, ny = inplane_size

    sx, sy, _ = spacing
    x = (np.arange(nx) - (nx - 1) / 2.0) * sx
    y = (np.arange(ny) - (ny - 1) / 2.0) * sy
    yy, xx = np.meshgrid(y, x, indexing="ij")                    # [j, i]
    radius = np.hypot(xx, yy)
    rel = np.mod(np.degrees(np.arctan2(yy, xx)) - insertion_deg, 360.0)
    depth = (r_outer - r_inner) if scar_depth_mm is None else scar_depth_mm
    ring = (radius >= r_inner) & (radius < r_outer)
    in_sector = (rel >= scar_from_deg) & (rel < scar_to_deg)
    cavity = np.zeros((ny, nx), np.uint8)
    cavity[radius < r_inner] = BLOOD_POOL
    cavity[ring] = MYOCARDIUM
    cavity[ring & in_sector & (radius < r_inner + depth)] = SCAR
    cavity[ring & in_sector & (radius < r_inner + mvo_depth_mm)] = MVO
    cap = np.where(radius < r_outer, MYOCARDIUM, 0).astype(np.uint8)
    array = np.stack([cavity] * cavity_slices + [cap] * cap_slices)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    if direction is not None:
        image.SetDirection(tuple(float(d) for d in np.asarray(direction, float).ravel()))
    rad = np.radians(insertion_deg)
    # point on the mid-wall at the insertion angle, on the middle cavity slice
    mid_r = (r_inner + r_outer) / 2.0
    index = ((nx - 1) / 2.0 + mid_r * np.cos(rad) / sx, (ny - 1) / 2.0 + mid_r * np.sin(rad) / sy,
             float(cavity_slices // 2))
    point = image.TransformContinuousIndexToPhysicalPoint(index)
    return RingPhantom(image, tuple(point), np.broadcast_to(rel, array.shape).copy(),
                       np.broadcast_to(radius, array.shape).copy(), r_inner, r_outer, cavity_slices, cap_slices)


def rotation(axis, angle_deg: float) -> np.ndarray:
    """Rotation matrix (Rodrigues) about `axis` by `angle_deg`, for oblique test geometries."""
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = np.radians(angle_deg)
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k
