"""Where the LV is in a stack, from stage 1's LV probability (numpy only; the networks run in
predictor.py).

The stack's LV is the 3-D connected component carrying the most probability, so one centre serves
every slice and spurious blobs on single slices are ignored. Slices the component does not reach get
no stage-2 work.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..model.cascade import CascadeParams
from .preprocessing import PreprocessConfig


@dataclass
class LVLocation:
    found: bool
    centre: tuple[float, float] | None = None     # native pixels (row, column), shared by all slices
    slices: np.ndarray | None = None              # bool [N]: slices that get stage-2 work
    at_edge: bool = False                         # the LV touches the image border: part may be cut off
    largest_mm2: float = 0.0                      # stage 1's largest LV cross-section, found or not


def find_lv(lv_probability: np.ndarray, spacing_mm: tuple[float, float], params: CascadeParams) -> LVLocation:
    """lv_probability: [N, h, w] on the native grid. The LV is one 3-D component for the whole stack."""
    mask = lv_probability > params.lv_threshold
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    if count == 0:
        return LVLocation(False)
    mass = ndimage.sum(lv_probability, components, index=np.arange(1, count + 1))
    lv = components == int(np.argmax(mass)) + 1
    area_mm2 = cross_sections_mm2(lv, spacing_mm)
    if area_mm2.max() < params.min_stack_lv_mm2:
        return LVLocation(False, largest_mm2=float(area_mm2.max()))
    centre = tuple(float(c) for c in ndimage.center_of_mass(lv.any(0)))
    return LVLocation(True, centre, area_mm2 >= params.min_lv_area_mm2, touches_border(lv), float(area_mm2.max()))


def whole_image_location(shape, spacing_mm, params: CascadeParams, crop: PreprocessConfig, count: int,
                         stage_1_mm2: float) -> LVLocation | None:
    """When stage 1 sees an LV too small to trust in an image that fits in one stage-2 crop (a user's
    crop to the heart), stage 2 looks at all of it and decides: stage 2 is trained on such crops.
    stage_1_mm2: stage 1's largest LV cross-section, under min_stack_lv_mm2. None when it is under
    min_lv_area_mm2 as well (not one slice's worth: nothing to confirm, and a non-cardiac picture may
    still look like a heart to stage 2), or the image is larger than the crop (stage 2's geometry), or
    too small to hold the smallest LV."""
    if stage_1_mm2 < params.min_lv_area_mm2:
        return None
    if any(n * s > crop.grid_size * crop.target_spacing_mm for n, s in zip(shape, spacing_mm)):
        return None
    if np.prod(shape) * np.prod(spacing_mm) < params.min_stack_lv_mm2:
        return None
    return LVLocation(True, tuple((n - 1) / 2 for n in shape), np.ones(count, bool), largest_mm2=stage_1_mm2)


def cross_sections_mm2(mask: np.ndarray, spacing_mm) -> np.ndarray:
    """mask [N, h, w] → [N]: each slice's area of the mask in mm² (spacing_mm: the in-plane spacing)."""
    return mask.sum(axis=(1, 2)) * float(spacing_mm[0] * spacing_mm[1])


def touches_border(mask: np.ndarray) -> bool:
    """mask [N, h, w]: whether any slice's mask reaches the first or last row or column of the image."""
    return bool(mask[:, [0, -1]].any() or mask[:, :, [0, -1]].any())
