"""Overlap metrics on the clinical structures: myocardium (2∪3∪4), scar (3∪4), MVO (4)."""
from __future__ import annotations

import numpy as np

from ScarNetCore.labels import mvo_mask, myocardium_mask, scar_mask

STRUCTURES = {"myocardium": myocardium_mask, "scar": scar_mask, "mvo": mvo_mask}


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Binary Dice; NaN when both are empty (undefined: e.g. scar Dice of a case without infarct)."""
    pred, ref = pred.astype(bool), ref.astype(bool)
    total = pred.sum() + ref.sum()
    if total == 0:
        return float("nan")
    return float(2 * (pred & ref).sum() / total)


def structure_dice(pred_labels: np.ndarray, ref_labels: np.ndarray) -> dict[str, float]:
    return {name: dice(mask(pred_labels), mask(ref_labels)) for name, mask in STRUCTURES.items()}


def summarize_cases(per_case: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean Dice per structure over cases; scar/MVO only over cases whose reference has them."""
    out = {}
    for name in STRUCTURES:
        values = [v[name] for v in per_case.values() if not np.isnan(v[name])]
        out[f"{name}_dice"] = float(np.mean(values)) if values else float("nan")
    return out
