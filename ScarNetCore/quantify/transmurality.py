"""Transmurality along radial chords, the way CMR tools measure it.

In every slice, CHORDS_PER_SLICE rays leave the LV centre (see aha.py) at equal angles in
physical in-plane millimetres, offset by half a step from the RV insertion so no ray lies on a
segment border. Each ray is sampled every SAMPLE_FRACTION of the smallest in-plane spacing; each
sample reads the nearest voxel of the ray's own segment (see _own_segment_voxel).
Wall thickness = summed length of a ray's myocardial samples (2∪3∪4), scar thickness = summed
length of its scar samples (3∪4); transmurality = scar / wall × 100 %, i.e. the scar's share of
the chord from endocardium to epicardium, accurate to about one voxel. Reading only own-segment
voxels means a chord running along a segment border cannot give a scar-free segment a non-zero
transmurality from its neighbour's scar, so chords and voxel-based extents agree on which
segments are scarred. Rays that meet no myocardium (e.g. an incomplete basal ring) are left out.
In apical-cap slices (segment 17, no cavity) rays start at the myocardium's centroid, so there
the "wall" is the cap radius.

Per segment the report gives the mean and the maximum over its chords; the class (0, 1-25, 26-50,
51-75, 76-100 %) is that of the mean, with (0, 25] as "1-25" so any scar is never graded "0".
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..labels import myocardium_mask, scar_mask
from .aha import NONE, LVFrame, sector_segments

CHORDS_PER_SLICE = 360
SAMPLE_FRACTION = 0.2


@dataclass
class Chords:
    slice_index: np.ndarray       # per chord
    segment: np.ndarray           # AHA segment 1..17
    wall_mm: np.ndarray
    scar_mm: np.ndarray

    @property
    def transmurality(self) -> np.ndarray:
        return 100.0 * self.scar_mm / self.wall_mm


def chords(frame: LVFrame, segments: np.ndarray, n_chords: int = CHORDS_PER_SLICE) -> Chords:
    """Chords of every slice; `segments` is aha.segment_map's output (stack layout)."""
    stack, geom, axis = frame.stack, frame.geom, frame.axis
    matrix = geom.inplane_matrix(frame.u, frame.v)
    to_index = np.linalg.inv(matrix)                       # (x, y) mm -> (Δa, Δb)
    na, nb = stack.shape[1:]
    step = SAMPLE_FRACTION * float(min(geom.spacing[list(geom.inplane_axes)]))
    rel_deg = (np.arange(n_chords) + 0.5) * 360.0 / n_chords
    theta = np.radians(frame.insertion_deg + rel_deg)
    per_mm = (to_index @ np.vstack([np.cos(theta), np.sin(theta)])).T   # (n_chords, 2) index per mm
    myo_all, scar_all = myocardium_mask(stack), scar_mask(stack)
    parts = []
    for t in range(stack.shape[0]):
        if axis.levels[t] == NONE or not myo_all[t].any():
            continue
        centre = axis.centres[t]
        a, b = np.nonzero(myo_all[t])
        dx = matrix @ np.vstack([a - centre[0], b - centre[1]])
        reach = float(np.sqrt((dx ** 2).sum(0)).max()) + 2 * float(geom.spacing[list(geom.inplane_axes)].max())
        radii = np.arange(0.0, reach, step)
        pa = centre[0] + radii[None, :] * per_mm[:, :1]            # continuous sample positions
        pb = centre[1] + radii[None, :] * per_mm[:, 1:]
        segment = sector_segments(np.full(n_chords, axis.levels[t]), rel_deg)
        ia, ib = _own_segment_voxel(pa, pb, segments[t], segment[:, None], matrix)
        inside = ia >= 0
        ia, ib = np.where(inside, ia, 0), np.where(inside, ib, 0)
        wall = (myo_all[t][ia, ib] & inside).sum(1) * step
        scar = (scar_all[t][ia, ib] & inside).sum(1) * step
        hit = wall > 0
        parts.append((np.full(hit.sum(), t), segment[hit], wall[hit], scar[hit]))
    if not parts:
        empty = np.zeros(0)
        return Chords(empty.astype(int), empty.astype(np.int8), empty, empty)
    return Chords(*(np.concatenate(p) for p in zip(*parts)))


TRANSMURALITY_CLASSES = ("0", "1-25", "26-50", "51-75", "76-100")


def transmurality_class(percent: float | None) -> str | None:
    """The usual 5-grade class (Kim et al. 2000) of a transmurality/extent in %; None if unknown."""
    if percent is None or not np.isfinite(percent):
        return None
    if percent <= 0:
        return TRANSMURALITY_CLASSES[0]
    return TRANSMURALITY_CLASSES[min(4, int(np.ceil(percent / 25.0)))]


def _own_segment_voxel(pa, pb, segments_2d, chord_segment, matrix):
    """Voxel (a, b) sampled at continuous (pa, pb): the nearest of the 4 surrounding voxel centres that
    is not myocardium of another segment; (-1, -1) outside the grid.

    Plain nearest-voxel lookup lets a chord running just inside a segment border read the
    neighbouring segment's voxels (whose centres lie across the border), e.g. give a scar-free
    segment a scarred chord. One of the 4 surrounding centres always lies on the chord's side of
    the border, and it is within one voxel of the sample, so accuracy stays within one voxel.
    """
    na, nb = segments_2d.shape
    fa, fb = np.floor(pa).astype(np.intp), np.floor(pb).astype(np.intp)
    best_d = np.full(pa.shape, np.inf)
    best_a = np.full(pa.shape, -1, dtype=np.intp)
    best_b = np.full(pa.shape, -1, dtype=np.intp)
    for oa in (0, 1):
        for ob in (0, 1):
            ca, cb = fa + oa, fb + ob
            valid = (ca >= 0) & (ca < na) & (cb >= 0) & (cb < nb)
            seg = segments_2d[np.where(valid, ca, 0), np.where(valid, cb, 0)]
            valid &= (seg == 0) | (seg == chord_segment)
            da, db = ca - pa, cb - pb
            dx = matrix[0, 0] * da + matrix[0, 1] * db
            dy = matrix[1, 0] * da + matrix[1, 1] * db
            dist = np.where(valid, dx * dx + dy * dy, np.inf)
            better = dist < best_d
            best_d = np.where(better, dist, best_d)
            best_a = np.where(better, ca, best_a)
            best_b = np.where(better, cb, best_b)
    # a sample whose centres all lie outside the grid is outside
    outside = ~np.isfinite(best_d)
    best_a[outside] = -1
    best_b[outside] = -1
    return best_a, best_b
