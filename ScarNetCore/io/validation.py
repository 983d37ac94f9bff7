"""Is this an image the model can segment? The one check of an input image, with the error that says
what to do (the CLI, the Slicer module and the Segmenter all ask it)."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .integrity import nonfinite_message


def validate_image(image: sitk.Image, name: str = "input") -> None:
    """Reject what the slice-wise model cannot segment, saying what to do instead."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{name}: has {image.GetNumberOfComponentsPerPixel()} components per voxel (RGB/vector); "
                         "give a single-channel greyscale LGE image")
    if image.GetDimension() not in (2, 3):
        raise InputError(f"{name}: is {image.GetDimension()}-D; give one 3-D LGE stack "
                         "(split a 4-D/multi-phase series and choose one phase)")
    array = sitk.GetArrayViewFromImage(image)
    if array.size == 0:
        raise InputError(f"{name}: is empty (size {image.GetSize()})")
    if not np.issubdtype(array.dtype, np.number):
        raise InputError(f"{name}: voxel type {image.GetPixelIDTypeAsString()} is not numeric")
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        if not finite.all():
            first = np.unravel_index(int(np.argmin(finite)), array.shape)[::-1]  # ITK index order (x, y, z)
            raise InputError(nonfinite_message(name, int((~finite).sum()), first))
    if float(array.max()) == float(array.min()):
        raise InputError(f"{name}: is constant (every voxel = {float(array.min()):g}); it holds no image")


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
