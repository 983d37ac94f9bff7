"""A label volume as a DICOM Segmentation of its source series, for PACS and DICOM viewers.

Written with highdicom (never by hand): one segment per ScarNet label, with the codes of
labels.TERMINOLOGY (the Slicer module's codes), referencing every image of the source series.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import __version__
from .errors import InputError
from .io import atomic_path
from .labels import LEFT_VENTRICLE, TERMINOLOGY

SERIES_NUMBER = 300  # the series number dcmqi (Slicer's DICOM SEG writer) gives segmentations


def write_dicom_seg(labels: sitk.Image, series_files: list[Path], path: str | os.PathLike,
                    model_name: str = "") -> Path:
    """`labels` lies on the grid read from `series_files` (io.dicom_series_files: slice k is file k)."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    sources = [pydicom.dcmread(str(f)) for f in series_files]
    array = sitk.GetArrayFromImage(labels).astype(np.uint8)  # [slice, row, column], like the source frames
    if array.ndim == 2:
        array = array[None]
    frames = sum(int(getattr(s, "NumberOfFrames", 1) or 1) for s in sources)
    if frames != len(array):
        raise InputError(f"{series_files[0].parent}: {frames} source images for {len(array)} label slices; "
                         "no DICOM SEG written")

    def code(c):
        return hd.sr.CodedConcept(value=c[1], scheme_designator=c[0], meaning=c[2])

    algorithm = hd.AlgorithmIdentificationSequence(name="ScarNet", family=codes.cid7162.ArtificialIntelligence,
                                                   version=(model_name or __version__)[:64])
    segments = [hd.seg.SegmentDescription(segment_number=label, segment_label=name,
                                          segmented_property_category=code(category),
                                          segmented_property_type=code(type_),
                                          algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                                          algorithm_identification=algorithm,
                                          anatomic_regions=[code(LEFT_VENTRICLE)])
                for label, (name, category, type_) in sorted(TERMINOLOGY.items())]
    # label values are the segment numbers (1..4), so the label array is highdicom's "label-map style" input
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=array, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments, series_instance_uid=hd.UID(), series_number=SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="ScarNet",
        manufacturer_model_name=(model_name or "ScarNet")[:64], software_versions=__version__,
        device_serial_number="none", series_description="ScarNet segmentation",
        omit_empty_frames=False)  # every slice keeps its frames: the SEG's geometry is the whole stack
    with atomic_path(path) as tmp:
        seg.save_as(str(tmp))
    return Path(path)
