"""Classical LGE scar thresholds inside a given myocardium, for comparison with ScarNet.

n-SD (n = 2, 3, 5, 6): scar = myocardial voxels brighter than mean + n·SD of a remote (healthy)
myocardium reference.
  * Remote reference given by the user: the mask's voxels that lie in the myocardium.
  * Automatic rule: the AHA segment (1-16, at least MIN_REMOTE_VOXELS myocardial voxels) with the
    lowest median intensity. Readers pick remote myocardium as a region of visually normal (dark)
    myocardium; a whole segment keeps the natural spread of healthy signal (taking the darkest
    voxels instead would shrink the SD and inflate every n-SD scar), and the median is not pulled
    up by a few enhanced voxels. If no segment is large enough the whole myocardium is used and a
    warning says so (its SD then includes the scar, so n-SD under-calls).
FWHM (full width at half maximum, Amado et al. 2004): scar = myocardial voxels at or above half
the peak intensity of the enhanced region; the peak is the maximum, within the myocardium, of the
image after an in-plane 3x3 median filter, so one hot voxel cannot set it. FWHM assumes an
infarct is present and a zero-based magnitude image: a warning says its result is unreliable
when the peak is below remote mean + 5 SD or half the peak is not above the remote mean (offset
intensities, as in EMIDEC).
Output label volumes keep the blood pool (1); myocardium is 2 and the thresholded scar 3.
Voxels the input labels as MVO (4) stay MVO: MVO is dark on LGE, so no threshold finds it, and
clinical practice (Segment, cvi42) adds it to the infarct by hand.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..labels import BLOOD_POOL, MVO, MYOCARDIUM, SCAR, myocardium_mask

NSD_LEVELS = (2, 3, 5, 6)
METHOD_NAMES = tuple(f"{n}SD" for n in NSD_LEVELS) + ("FWHM",)
MIN_REMOTE_VOXELS = 30


@dataclass
class Remote:
    mean: float
    sd: float
    voxels: int
    rule: str
    segment: int | None


@dataclass
class ClassicalResult:
    labels: dict[str, np.ndarray]      # method name -> label array (same layout as the input)
    thresholds: dict[str, float]
    remote: Remote
    fwhm_peak: float
    warnings: list[str]


def remote_reference(image: np.ndarray, labels: np.ndarray, segments: np.ndarray,
                     remote_mask: np.ndarray | None = None) -> tuple[Remote, list[str]]:
    myo = myocardium_mask(labels)
    warnings: list[str] = []
    if remote_mask is not None:
        inside = remote_mask.astype(bool) & myo
        if inside.sum() < 2:
            raise InputError(f"the remote-myocardium mask has {int(inside.sum())} voxels inside the myocardium; "
                             "draw it inside healthy myocardium")
        values = image[inside]
        return Remote(float(values.mean()), float(values.std(ddof=1)), int(values.size), "user mask", None), warnings
    best = None
    for seg in range(1, 17):
        values = image[(segments == seg) & myo]
        if values.size >= MIN_REMOTE_VOXELS:
            median = float(np.median(values))
            if best is None or median < best[0]:
                best = (median, seg, values)
    if best is not None:
        _, seg, values = best
        return Remote(float(values.mean()), float(values.std(ddof=1)), int(values.size),
                      "AHA segment with the lowest median intensity", seg), warnings
    values = image[myo]
    if values.size < 2:
        raise InputError("classical methods need a myocardium: the labels hold fewer than 2 myocardial voxels")
    warnings.append(f"no AHA segment has {MIN_REMOTE_VOXELS} myocardial voxels: the whole myocardium is the remote "
                    "reference, so n-SD thresholds are too high; give a remote-myocardium mask")
    return Remote(float(values.mean()), float(values.std(ddof=1)), int(values.size), "whole myocardium", None), warnings


def classical_methods(image: np.ndarray, labels: np.ndarray, segments: np.ndarray,
                      remote_mask: np.ndarray | None = None, inplane_axes: tuple[int, int] = (1, 2)) -> ClassicalResult:
    """Run every n-SD level and FWHM. Arrays share one layout; `inplane_axes` are its in-plane axes."""
    remote, warnings = remote_reference(image, labels, segments, remote_mask)
    myo = myocardium_mask(labels)
    mvo = labels == MVO
    base = np.where(labels == BLOOD_POOL, BLOOD_POOL, 0).astype(np.uint8)
    base[myo] = MYOCARDIUM
    base[mvo] = MVO
    out, thresholds = {}, {}
    for n in NSD_LEVELS:
        threshold = remote.mean + n * remote.sd
        thresholds[f"{n}SD"] = threshold
        out[f"{n}SD"] = _label(base, myo & ~mvo & (image > threshold))
    size = [1, 1, 1]
    for axis in inplane_axes:
        size[axis] = 3
    smoothed = ndimage.median_filter(image, size=size, mode="nearest")
    peak = float(smoothed[myo].max())
    thresholds["FWHM"] = peak / 2.0
    out["FWHM"] = _label(base, myo & ~mvo & (image >= peak / 2.0))
    if peak < remote.mean + 5 * remote.sd:
        warnings.append("FWHM: no clearly enhanced myocardium (peak below remote mean + 5 SD); FWHM assumes an "
                        "infarct is present and its scar here is unreliable")
    if peak / 2.0 <= remote.mean:
        warnings.append(f"FWHM: its threshold ({peak / 2.0:.4g}) is not above the remote myocardium mean "
                        f"({remote.mean:.4g}); the image intensities are offset (not zero-based magnitude), so FWHM "
                        "labels healthy myocardium as scar; use n-SD for this image")
    return ClassicalResult(out, thresholds, remote, peak, warnings)


def _label(base: np.ndarray, scar: np.ndarray) -> np.ndarray:
    labels = base.copy()
    labels[scar] = SCAR
    return labels
