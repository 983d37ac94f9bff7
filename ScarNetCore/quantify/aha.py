"""AHA 17-segment model (Cerqueira et al., Circulation 2002;105:539-542) on a short-axis stack.

Rules, in the order they are applied:

1. Apex side of the stack. The apex is at the end of the myocardial slice range where slices
   with myocardium but no blood pool (the apical cap) exist, if that holds for one end only.
   Otherwise it is the end whose outer third of cavity slices has the smaller mean blood-pool
   area (the cavity narrows towards the apex) when the two differ by more than 10 %. Otherwise
   the slice normal's orientation in the patient decides: the LV long axis points from base to
   apex towards the patient's left-anterior-inferior. If even that is undecided (normal
   perpendicular to it), the apex is taken at the highest slice index. A single slice (or a 2-D
   image) decides by orientation: with an identity direction matrix the apex lies towards -z,
   i.e. the slice as displayed (x right, y down) is seen from the apex, as a standard short-axis
   view is.
2. Long-axis levels. The contiguous run of myocardium-only slices at the apical end is the apex
   (segment 17). The remaining slices from the basal-most myocardial slice to the last slice
   before the cap are split into basal, mid and apical thirds by slice centre: slice t of n goes
   to third floor(3 (t + ½) / n), so 9 slices split 3/3/3, 7 split 2/3/2, a single slice is mid.
3. LV centre per slice: centroid of the blood pool, or of the myocardium where there is no blood
   pool. Angles are measured in physical in-plane millimetres about this centre,
   counter-clockwise as seen from the apex.
4. Sectors start at the anterior RV insertion point and run towards the septum: basal/mid
   sectors of 60° in the order 2, 3, 4, 5, 6, 1 (7..12 for mid), so the septum (2-3, 8-9) lies
   between 0° and 120° from the insertion point. Apical sectors of 90° are centred on the
   mid-septum (60°): 14 septal 15°-105°, 15 inferior, 16 lateral, 13 anterior 285°-15°.
5. The insertion point angle is measured about the centre of the slice nearest to the point
   along the long axis and then used for every slice (a point placed once, usually on a mid slice).
6. Without a user point the insertion is estimated from the image orientation (flagged
   "estimated" in every output): the mid-septum is taken to point towards the patient's right
   (LPS −x) projected into the short-axis plane, and the anterior insertion 60° from it towards
   anterior. For a standard short-axis plan this is only approximate (hearts rotate); if the
   long axis is almost left-right, the projection of patient-anterior is used as the insertion
   direction instead. The result's insertion_point_x/y/z then hold a representative point (mid
   slice, epicardial radius) so a viewer can show where the estimate lies. On images whose header lost the orientation (identity direction, e.g.
   EMIDEC NIfTI), the estimate is arbitrary: give the point.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..errors import InputError
from ..labels import BLOOD_POOL, myocardium_mask
from .geometry import PATIENT_ANTERIOR, PATIENT_RIGHT, TYPICAL_APEX_DIRECTION, StackGeometry

NONE, BASAL, MID, APICAL, APEX = 0, 1, 2, 3, 4
LEVEL_NAMES = {NONE: "", BASAL: "basal", MID: "mid", APICAL: "apical", APEX: "apex"}
SEGMENT_LEVEL = {**{s: BASAL for s in range(1, 7)}, **{s: MID for s in range(7, 13)},
                 **{s: APICAL for s in range(13, 17)}, 17: APEX}
SEGMENT_NAMES = {
    1: "basal anterior", 2: "basal anteroseptal", 3: "basal inferoseptal", 4: "basal inferior",
    5: "basal inferolateral", 6: "basal anterolateral",
    7: "mid anterior", 8: "mid anteroseptal", 9: "mid inferoseptal", 10: "mid inferior",
    11: "mid inferolateral", 12: "mid anterolateral",
    13: "apical anterior", 14: "apical septal", 15: "apical inferior", 16: "apical lateral",
    17: "apex",
}
SEPTUM_FROM_INSERTION_DEG = 60.0
APICAL_OFFSET_DEG = 15.0  # apical septal sector (90°) centred on the mid-septum at 60°


@dataclass
class LongAxis:
    apex_direction: np.ndarray   # unit LPS vector from base to apex (± slice normal)
    apex_at_high_index: bool
    apex_rule: str               # which rule of the module docstring decided
    levels: np.ndarray           # per slice: NONE/BASAL/MID/APICAL/APEX
    centres: np.ndarray          # per slice (a, b) continuous index of the LV centre, NaN if no myocardium


def long_axis(stack: np.ndarray, geom: StackGeometry) -> LongAxis:
    n = stack.shape[0]
    myo = myocardium_mask(stack)
    pool = stack == BLOOD_POOL
    myo_area = myo.reshape(n, -1).sum(1)
    pool_area = pool.reshape(n, -1).sum(1)
    centres = np.full((n, 2), np.nan)
    for t in range(n):
        mask = pool[t] if pool_area[t] else myo[t]
        if mask.any():
            centres[t] = np.argwhere(mask).mean(0)
    levels = np.zeros(n, dtype=np.int8)
    covered = np.flatnonzero(myo_area)
    if covered.size == 0:
        high, rule = _apex_from_orientation(geom)
        return LongAxis(_apex_vector(geom, high), high, rule, levels, centres)

    first, last = int(covered[0]), int(covered[-1])
    cap_low = _cap_run(pool_area, myo_area, range(first, last + 1))
    cap_high = _cap_run(pool_area, myo_area, range(last, first - 1, -1))
    if (cap_low > 0) != (cap_high > 0) and cap_low + cap_high < last - first + 1:
        high, rule = cap_high > 0, "apical cap (slices with myocardium but no blood pool)"
    else:
        decided = _apex_from_cavity(pool_area[first:last + 1])
        if decided is not None:
            high, rule = decided, "cavity narrows towards the apex"
        else:
            high, rule = _apex_from_orientation(geom)
    cap = cap_high if high else cap_low
    if cap >= last - first + 1:
        cap = 0  # no blood pool labelled at all: no way to tell a cap, keep every slice in the thirds
    # order slices base -> apex
    ordered = list(range(first, last + 1)) if high else list(range(last, first - 1, -1))
    body = ordered[:len(ordered) - cap]
    for t in ordered[len(body):]:
        levels[t] = APEX
    for rank, t in enumerate(body):
        levels[t] = BASAL + min(2, int(np.floor(3 * (rank + 0.5) / len(body))))
    return LongAxis(_apex_vector(geom, high), bool(high), rule, levels, centres)


def _cap_run(pool_area, myo_area, slices) -> int:
    run = 0
    for t in slices:
        if myo_area[t] and not pool_area[t]:
            run += 1
        else:
            break
    return run


def _apex_from_cavity(pool_area: np.ndarray) -> bool | None:
    with_pool = pool_area[pool_area > 0].astype(float)
    if with_pool.size < 2:
        return None
    third = max(1, with_pool.size // 3)
    low, high = with_pool[:third].mean(), with_pool[-third:].mean()
    if abs(low - high) <= 0.1 * max(low, high):
        return None
    return bool(high < low)


def _apex_from_orientation(geom: StackGeometry) -> tuple[bool, str]:
    alignment = float(geom.normal @ TYPICAL_APEX_DIRECTION)
    if abs(alignment) > 0.1:
        return alignment > 0, "image orientation (apex towards patient left-anterior-inferior)"
    return True, "default (apex at the highest slice index)"


def _apex_vector(geom: StackGeometry, high: bool) -> np.ndarray:
    return geom.normal if high else -geom.normal


@dataclass(frozen=True, eq=False)  # eq=False: numpy fields do not compare with ==
class LVFrame:
    """Where angles are measured: the labels, their geometry, the long axis, the in-plane basis (u, v)
    with u × v = apex direction, and the RV insertion angle in that basis (None until it is known)."""
    stack: np.ndarray             # labels, stack layout
    geom: StackGeometry
    axis: LongAxis
    u: np.ndarray
    v: np.ndarray
    insertion_deg: float | None = None

    @classmethod
    def of(cls, stack: np.ndarray, geom: StackGeometry) -> "LVFrame":
        axis = long_axis(stack, geom)
        return cls(stack, geom, axis, *geom.inplane_basis(axis.apex_direction))

    def with_insertion(self, insertion_deg: float) -> "LVFrame":
        return replace(self, insertion_deg=float(insertion_deg))

    def inplane_xy(self, centre_ab, a, b) -> tuple[np.ndarray, np.ndarray]:
        """Physical in-plane mm (x along u, y along v) of index (a, b) relative to centre (a, b)."""
        m = self.geom.inplane_matrix(self.u, self.v)
        da, db = np.asarray(a, float) - centre_ab[0], np.asarray(b, float) - centre_ab[1]
        return m[0, 0] * da + m[0, 1] * db, m[1, 0] * da + m[1, 1] * db


def sector_segments(levels: np.ndarray, rel_angle_deg: np.ndarray) -> np.ndarray:
    """AHA segment (1..17, 0 where level is NONE) from level and angle from the insertion point."""
    levels = np.asarray(levels)
    rel = np.mod(np.asarray(rel_angle_deg, float), 360.0)
    six = (np.floor(rel / 60.0).astype(int) + 1) % 6 + 1            # sector 0 -> 2, ..., sector 5 -> 1
    four = (np.floor(np.mod(rel - APICAL_OFFSET_DEG, 360.0) / 90.0).astype(int) + 1) % 4 + 13
    out = np.zeros(np.broadcast(levels, rel).shape, dtype=np.int8)
    out = np.where(levels == BASAL, six, out)
    out = np.where(levels == MID, six + 6, out)
    out = np.where(levels == APICAL, four, out)
    out = np.where(levels == APEX, 17, out)
    return out.astype(np.int8)


@dataclass
class Insertion:
    angle_deg: float              # angle of the anterior RV insertion in the (u, v) frame
    point: np.ndarray             # LPS point (given, or a representative point for the estimate)
    estimated: bool
    reference_slice: int
    warnings: list[str]


def insertion_from_point(point: np.ndarray, frame: LVFrame) -> Insertion:
    geom, axis = frame.geom, frame.axis
    slices = _slices_with_centre(axis)
    if not slices:
        return Insertion(0.0, np.asarray(point, float), False, -1, ["no myocardium: the insertion point is unused"])
    t_point = geom.continuous_stack_index(point)[0]
    t = min(slices, key=lambda s: abs(s - t_point))
    centre = geom.physical(t, *axis.centres[t])
    rel = np.asarray(point, float) - centre
    x, y = float(rel @ frame.u), float(rel @ frame.v)
    radius = float(np.hypot(x, y))
    if radius < 1e-6:
        raise InputError("the insertion point lies on the LV long axis; place it where the RV free wall "
                         "meets the anterior septum (the anterior RV insertion)")
    warnings = []
    outer = _outer_radius(frame, t)
    if outer > 0 and radius > 4 * outer:
        warnings.append(f"the insertion point is {radius:.0f} mm from the LV centre (LV radius ≈ {outer:.0f} mm): "
                        "check it is in LPS coordinates (Slicer shows RAS: negate X and Y)")
    off_plane = abs(float(rel @ geom.normal))
    extent = geom.slice_thickness_mm * max(1, len(slices))
    if off_plane > extent:
        warnings.append(f"the insertion point is {off_plane:.0f} mm outside the slices that hold myocardium")
    return Insertion(float(np.degrees(np.arctan2(y, x))), np.asarray(point, float), False, t, warnings)


def estimate_insertion(frame: LVFrame) -> Insertion:
    """Rule 6 of the module docstring."""
    axis, u, v = frame.axis, frame.u, frame.v
    right = PATIENT_RIGHT - (PATIENT_RIGHT @ axis.apex_direction) * axis.apex_direction
    if np.linalg.norm(right) > 0.2:
        angle = np.degrees(np.arctan2(right @ v, right @ u)) - SEPTUM_FROM_INSERTION_DEG
    else:
        front = PATIENT_ANTERIOR - (PATIENT_ANTERIOR @ axis.apex_direction) * axis.apex_direction
        angle = np.degrees(np.arctan2(front @ v, front @ u))
    slices = _slices_with_centre(axis)
    warning = ("RV insertion point estimated from the image orientation (septum towards the patient's right); "
               "AHA segment positions are approximate; give the anterior RV insertion point for exact segments")
    if not slices:
        return Insertion(float(angle), np.full(3, np.nan), True, -1, [warning])
    mids = [t for t in slices if axis.levels[t] == MID] or slices
    t = mids[len(mids) // 2]
    # a representative point (on the epicardial radius) so viewers can show where the estimate lies
    radius = _outer_radius(frame, t) or 30.0
    rad = np.radians(angle)
    point = frame.geom.physical(t, *axis.centres[t]) + radius * (np.cos(rad) * u + np.sin(rad) * v)
    return Insertion(float(angle), point, True, t, [warning])


def _slices_with_centre(axis: LongAxis) -> list[int]:
    return [t for t in range(len(axis.levels)) if axis.levels[t] != NONE and np.isfinite(axis.centres[t]).all()]


def _outer_radius(frame: LVFrame, t: int) -> float:
    a, b = np.nonzero(myocardium_mask(frame.stack[t]))
    if a.size == 0:
        return 0.0
    x, y = frame.inplane_xy(frame.axis.centres[t], a, b)
    return float(np.sqrt(x * x + y * y).max())


def segment_map(frame: LVFrame) -> np.ndarray:
    """AHA segment number (1..17) of every myocardial voxel, 0 elsewhere, in stack layout."""
    stack, axis = frame.stack, frame.axis
    out = np.zeros(stack.shape, dtype=np.int8)
    myo = myocardium_mask(stack)
    for t in range(stack.shape[0]):
        if axis.levels[t] == NONE or not myo[t].any():
            continue
        a, b = np.nonzero(myo[t])
        x, y = frame.inplane_xy(axis.centres[t], a, b)
        rel = np.degrees(np.arctan2(y, x)) - frame.insertion_deg
        out[t, a, b] = sector_segments(np.full(a.size, axis.levels[t]), rel)
    return out
