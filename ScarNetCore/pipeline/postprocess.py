"""Anatomical clean-up of predicted labels: one connected LV myocardium, scar inside it, MVO inside scar."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..labels import BACKGROUND, BLOOD_POOL, MVO, SCAR, myocardium_mask


def _largest_component(mask: np.ndarray) -> np.ndarray:
    components, count = ndimage.label(mask, structure=np.ones((3,) * mask.ndim))
    if count <= 1:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def clean_labels(labels: np.ndarray) -> np.ndarray:
    """labels: 2-D or 3-D array (slice axis first). Returns a cleaned copy.

    - myocardium (2∪3∪4): only the largest connected component is kept (stray blobs elsewhere
      in the chest are background); scar and MVO are myocardium classes, so they stay inside it;
    - LV blood pool: only the largest connected component is kept;
    - MVO: a component that touches no scar voxel in its slice is relabelled scar, since MVO is
      the core of an infarct and cannot stand alone; it still counts as infarct.
    """
    out = labels.copy()
    myo = myocardium_mask(out)
    out[myo & ~_largest_component(myo)] = BACKGROUND
    pool = out == BLOOD_POOL
    out[pool & ~_largest_component(pool)] = BACKGROUND
    mvo = out == MVO
    if mvo.any():
        in_plane = np.ones((1, 3, 3) if out.ndim == 3 else (3, 3), bool)
        components, count = ndimage.label(mvo, structure=np.ones((3,) * out.ndim))
        scar = out == SCAR
        for index in range(1, count + 1):
            blob = components == index
            if not (ndimage.binary_dilation(blob, in_plane) & scar).any():
                out[blob] = SCAR
    return out
