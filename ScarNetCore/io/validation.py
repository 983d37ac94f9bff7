"""Is this an image ScarNet can use? The one check of every image it is given (an LGE image to
segment, a label map to quantify, the image and masks beside it), each failure one line that says
what is wrong and what to do (the CLI, the Slicer module, the Segmenter and quantify all ask here).
Labels that arrive as an array on a checked image's stack (a LabelStack) get the label-value check
alone (label_values)."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..labels import MVO
from .integrity import nonfinite_message


def checked_voxels(image: sitk.Image, name: str, give: str = "a single-channel greyscale LGE image") -> np.ndarray:
    """The image's voxels (a view, numpy z, y, x order) once they are one numeric, finite value each on
    a 2-D or 3-D grid; otherwise InputError saying what is wrong and what to `give` instead. Every
    image ScarNet reads goes through here: LGE images (validate_image), label maps (label_voxels),
    the images and masks quantify is given."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{name}: has {image.GetNumberOfComponentsPerPixel()} components per voxel (RGB/vector); "
                         f"give {give}")
    if image.GetDimension() not in (2, 3):
        raise InputError(f"{name}: is {image.GetDimension()}-D; give a 2-D slice or one 3-D short-axis stack "
                         "(split a 4-D/multi-phase series and choose one phase)")
    array = sitk.GetArrayViewFromImage(image)
    if array.size == 0:
        raise InputError(f"{name}: is empty (size {image.GetSize()})")
    if not np.issubdtype(array.dtype, np.number):
        raise InputError(f"{name}: voxel type {image.GetPixelIDTypeAsString()} is not numeric; give {give}")
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        if not finite.all():
            first = np.unravel_index(int(np.argmin(finite)), array.shape)[::-1]  # ITK index order (x, y, z)
            raise InputError(nonfinite_message(name, int((~finite).sum()), first))
    return array


def validate_image(image: sitk.Image, name: str = "input") -> None:
    """Reject what the slice-wise model cannot segment, saying what to do instead."""
    array = checked_voxels(image, name)
    if float(array.max()) == float(array.min()):
        raise InputError(f"{name}: is constant (every voxel = {float(array.min()):g}); it holds no image")


def label_voxels(labels: sitk.Image, name: str = "labels") -> np.ndarray:
    """A label map's values as int16 (numpy z, y, x order), refusing anything but whole numbers 0..4."""
    return label_values(checked_voxels(labels, name, "a label map with values 0..4"), name)


def label_values(array: np.ndarray, name: str = "labels") -> np.ndarray:
    """Label values (any numeric array) as int16, refusing anything but whole numbers 0..4."""
    if np.issubdtype(array.dtype, np.floating) and not np.array_equal(array, np.round(array)):
        # float storage is common (EMIDEC stores labels as float64); only whole numbers are labels
        flat = array.ravel()
        first = float(flat[np.flatnonzero(flat != np.round(flat))[0]])
        raise InputError(f"{name}: has non-integer values (e.g. {first:g}); this looks like an image or a "
                         "probability map, not a label map with values 0..4")
    lo, hi = float(array.min()), float(array.max())
    if lo < 0 or hi > MVO:
        bad = np.unique(array[(array < 0) | (array > MVO)])[:5]
        raise InputError(f"{name}: has label values {', '.join(f'{v:g}' for v in bad)} outside 0..4 "
                         "(0 background, 1 LV blood pool, 2 myocardium, 3 scar, 4 MVO); "
                         "relabel it to the ScarNet/EMIDEC convention")
    return array.astype(np.int16)


LABEL_MAP_MAX_VALUES = 8  # a label map has a handful of integer values; an LGE image has hundreds


def label_map_message(name: str, evidence: str, hint: str) -> str:
    return f"{name}: looks like a label map (a segmentation), not an LGE image: {evidence}; {hint}"


def check_not_label_map(image: sitk.Image, name: str = "input",
                        hint: str = "give the greyscale LGE image, or pass --force to segment it anyway") -> None:
    """Refuse a segmentation given as the image (an easy mix-up whose "result" would be nonsense).

    Two to LABEL_MAP_MAX_VALUES distinct integer values count as a label map; one value is left to
    validate_image (constant image), vector images too.
    """
    if image.GetNumberOfComponentsPerPixel() != 1:
        return
    array = sitk.GetArrayViewFromImage(image)
    if array.size == 0 or len(np.unique(array.ravel()[::101])) > LABEL_MAP_MAX_VALUES:
        return  # a sample already has too many values: the common case costs one pass over 1 % of voxels
    values = np.unique(array)
    if 2 <= len(values) <= LABEL_MAP_MAX_VALUES and np.all(values == np.round(values)):
        shown = ", ".join(f"{v:g}" for v in values.astype(float))
        raise InputError(label_map_message(name, f"{image.GetPixelIDTypeAsString()} voxels with only "
                                           f"{len(values)} values ({shown})", hint))
