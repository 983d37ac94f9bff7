"""A segmentation (a LabelStack on the grid read from a DICOM series) as a DICOM Segmentation of
that series, for PACS and DICOM viewers.

Written with highdicom (never by hand): one segment per ScarNet label, with the codes of
labels.TERMINOLOGY (the Slicer module's codes), referencing every image of the source series.

A SEG that cannot be made from the source raises DicomSegSkipped; the output layer then writes the
study's other files and records why (outputs.write_study: `dicom_seg_skipped`). In particular a source
without a Frame of Reference UID (0020,0052; some anonymisers remove it) gets no SEG. We do not make
one up: the Frame of Reference module is mandatory for MR images, and a SEG in patient space must
share its source's Frame of Reference, which is what lets a viewer lay it over the images. A new UID
shared by nothing else would give a SEG that claims a coordinate system no image has, so it could
not be overlaid on anything; the NIfTI labels on the input grid remain the segmentation.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import ScarNetError
from ..labels import LEFT_VENTRICLE, TERMINOLOGY
from ..pipeline.stack import LabelStack
from .files import atomic_path
from .reading import affine_of_image, frame_count

SERIES_NUMBER = 300  # the series number dcmqi (Slicer's DICOM SEG writer) gives segmentations
# attributes highdicom copies from the source into the SEG, and what a user would call each
REQUIRED = (("FrameOfReferenceUID", "Frame of Reference UID (0020,0052)"),
            ("StudyInstanceUID", "Study Instance UID (0020,000D)"),
            ("SeriesInstanceUID", "Series Instance UID (0020,000E)"),
            ("SOPInstanceUID", "SOP Instance UID (0008,0018)"),
            ("SOPClassUID", "SOP Class UID (0008,0016)"))


class DicomSegSkipped(ScarNetError):
    """No DICOM SEG can be made from this source series; the message says why."""


def write_dicom_seg(labels: LabelStack, series_files: list[Path], path: str | os.PathLike,
                    model_name: str = "") -> Path:
    """`labels` lie on the grid read from `series_files` (io.reading.dicom_series_files: slice k of its numpy
    array is file k, or the frames of one multi-frame file, placed by their positions). Raises DicomSegSkipped when
    the source cannot carry a SEG; errors writing the file (OSError) are not caught."""
    seg = make_dicom_seg(labels, series_files, model_name)
    with atomic_path(path) as tmp:
        seg.save_as(str(tmp))
    return Path(path)


def make_dicom_seg(labels: LabelStack, series_files: list[Path], model_name: str = ""):
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    sources = [pydicom.dcmread(str(f), stop_before_pixels=True, force=True) for f in series_files]  # as io reads them
    _check_sources(sources)
    # the grid's numpy order [file, row, column], like the source frames (the stack may be cut otherwise)
    array = np.ascontiguousarray(labels.stack.join(labels.labels), np.uint8)
    if array.ndim == 2:
        array = array[None]
    multiframe = len(sources) == 1 and frame_count(sources[0]) > 1
    if multiframe:
        # the frames of an enhanced (multi-frame) image need not be stored in slice order: give highdicom
        # the labels with their geometry and let it place each frame (and find its source frame)
        pixels = hd.Volume(array, affine_of_image(labels.stack.grid), hd.CoordinateSystemNames.PATIENT,
                           frame_of_reference_uid=sources[0].FrameOfReferenceUID)
    else:
        if len(sources) != len(array):  # the labels lie on the grid read from these files: a bug if not
            raise RuntimeError(f"internal error: {len(sources)} source images for {len(array)} label slices")
        pixels = array

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
    try:
        return hd.seg.Segmentation(
            source_images=sources, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segments, series_instance_uid=hd.UID(), series_number=SERIES_NUMBER,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="ScarNet",
            manufacturer_model_name=(model_name or "ScarNet")[:64], software_versions=__version__,
            device_serial_number="none", series_description="ScarNet segmentation",
            omit_empty_frames=False)  # every slice keeps its frames: the SEG's geometry is the whole stack
    except ValueError as exc:
        # highdicom checks the source against the standard (ValueError); its reason is the most precise one.
        # Other exceptions are bugs, ours or highdicom's: they fail the study rather than pass as a skip
        raise DicomSegSkipped(f"highdicom cannot make it from this series ({type(exc).__name__}: {exc})") from exc


def _check_sources(sources) -> None:
    """The reasons a scanner or anonymiser series cannot carry a SEG, said plainly, before highdicom.
    Mixed orientations need no check here: io.reading.dicom_series_files, which gives the files, refuses them."""
    for attribute, name in REQUIRED:
        lacking = sum(not getattr(s, attribute, None) for s in sources)
        if lacking:
            hint = " (some anonymisers remove it); DICOM requires it for a segmentation of the images" \
                if attribute == "FrameOfReferenceUID" else ""
            raise DicomSegSkipped(f"{lacking} of {len(sources)} source image(s) have no {name}{hint}")
    frames_of_reference = {s.FrameOfReferenceUID for s in sources}
    if len(frames_of_reference) > 1:
        raise DicomSegSkipped(f"the source images lie in {len(frames_of_reference)} Frames of Reference")
    single = [s for s in sources if frame_count(s) == 1]
    if single and any(getattr(s, a, None) is None for s in single
                      for a in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing")):
        raise DicomSegSkipped("the source images have no image plane (orientation, position or pixel spacing)")

