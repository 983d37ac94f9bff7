"""Volumes, masses and percentages: global, per slice and per AHA segment.

Volume = voxel count × voxel volume (product of the spacings), so it holds for any direction
matrix; mass = volume × density (1.05 g/mL for myocardium by default). Scar % of the LV
myocardium is the same by volume and by mass since one density applies to both.
"""
from __future__ import annotations

import numpy as np

from ..labels import BLOOD_POOL, MYOCARDIUM, myocardium_mask, mvo_mask, scar_mask
from .aha import LEVEL_NAMES, SEGMENT_LEVEL, SEGMENT_NAMES
from .geometry import StackGeometry
from .transmurality import Chords, transmurality_class

ML_PER_MM3 = 1e-3


def percent(part: float, whole: float) -> float | None:
    """part / whole × 100, None when the whole is empty (the percentage does not exist)."""
    return 100.0 * part / whole if whole else None


def _tissue(prefix: str, voxels: int, voxel_ml: float, density: float, mass: bool = True) -> dict:
    row = {f"{prefix}_voxels": int(voxels), f"{prefix}_ml": voxels * voxel_ml}
    if mass:
        row[f"{prefix}_g"] = voxels * voxel_ml * density
    return row


def global_metrics(stack: np.ndarray, voxel_ml: float, density: float) -> dict:
    myo = int(myocardium_mask(stack).sum())
    scar = int(scar_mask(stack).sum())
    mvo = int(mvo_mask(stack).sum())
    pool = int((stack == BLOOD_POOL).sum())
    healthy = int((stack == MYOCARDIUM).sum())
    metrics = {}
    metrics.update(_tissue("myocardium", myo, voxel_ml, density))
    metrics.update(_tissue("scar", scar, voxel_ml, density))
    metrics["scar_percent_lv"] = percent(scar, myo)
    metrics.update(_tissue("mvo", mvo, voxel_ml, density))
    metrics["mvo_percent_lv"] = percent(mvo, myo)
    # blood is not myocardium: its mass at the myocardial density would mislead, so volume only
    metrics.update(_tissue("blood_pool", pool, voxel_ml, density, mass=False))
    metrics.update(_tissue("healthy_myocardium", healthy, voxel_ml, density))
    metrics["voxel_volume_ml"] = voxel_ml
    metrics["density_g_per_ml"] = density
    return metrics


def classical_global(name: str, labels: np.ndarray, myo_voxels: int, voxel_ml: float, density: float) -> dict:
    scar = int(scar_mask(labels).sum())
    return {f"scar_voxels_{name}": scar, f"scar_ml_{name}": scar * voxel_ml,
            f"scar_g_{name}": scar * voxel_ml * density, f"scar_percent_lv_{name}": percent(scar, myo_voxels)}


def per_slice_rows(stack: np.ndarray, geom: StackGeometry, levels: np.ndarray, voxel_ml: float,
                   density: float, classical: dict[str, np.ndarray]) -> list[dict]:
    n = stack.shape[0]
    flat = stack.reshape(n, -1)
    myo = myocardium_mask(flat).sum(1)
    scar = scar_mask(flat).sum(1)
    mvo = mvo_mask(flat).sum(1)
    pool = (flat == BLOOD_POOL).sum(1)
    other = {name: scar_mask(arr.reshape(n, -1)).sum(1) for name, arr in classical.items()}
    rows = []
    for t in range(n):
        centre = geom.slice_centre(t)
        row = {"slice_index": t, "level": LEVEL_NAMES[int(levels[t])], "position": geom.slice_position(t),
               "position_x": float(centre[0]), "position_y": float(centre[1]), "position_z": float(centre[2])}
        row.update(_tissue("myocardium", myo[t], voxel_ml, density))
        row.update(_tissue("scar", scar[t], voxel_ml, density))
        row["scar_percent_slice"] = percent(scar[t], myo[t])
        row.update(_tissue("mvo", mvo[t], voxel_ml, density))
        row.update(_tissue("blood_pool", pool[t], voxel_ml, density, mass=False))
        for name, counts in other.items():
            row[f"scar_ml_{name}"] = int(counts[t]) * voxel_ml
            row[f"scar_percent_slice_{name}"] = percent(counts[t], myo[t])
        rows.append(row)
    return rows


def per_segment_rows(stack: np.ndarray, segments: np.ndarray, chords: Chords, voxel_ml: float,
                     density: float, classical: dict[str, np.ndarray]) -> list[dict]:
    def count(mask: np.ndarray) -> np.ndarray:
        return np.bincount(segments[mask].astype(np.intp), minlength=18)

    myo = count(myocardium_mask(stack) & (segments > 0))
    scar = count(scar_mask(stack) & (segments > 0))
    mvo = count(mvo_mask(stack) & (segments > 0))
    other = {name: count(scar_mask(arr) & (segments > 0)) for name, arr in classical.items()}
    trans = chords.transmurality
    rows = []
    for seg in range(1, 18):
        on = chords.segment == seg
        mean = float(trans[on].mean()) if on.any() else None
        row = {"segment": seg, "name": SEGMENT_NAMES[seg], "level": LEVEL_NAMES[SEGMENT_LEVEL[seg]]}
        row.update(_tissue("myocardium", myo[seg], voxel_ml, density))
        row.update(_tissue("scar", scar[seg], voxel_ml, density))
        row["scar_extent_percent"] = percent(scar[seg], myo[seg])
        row.update(_tissue("mvo", mvo[seg], voxel_ml, density, mass=False))
        row["chords"] = int(on.sum())
        row["transmurality_mean_percent"] = mean
        row["transmurality_max_percent"] = float(trans[on].max()) if on.any() else None
        row["transmurality_class"] = transmurality_class(mean)
        for name, counts in other.items():
            row[f"scar_extent_percent_{name}"] = percent(counts[seg], myo[seg])
        rows.append(row)
    return rows
