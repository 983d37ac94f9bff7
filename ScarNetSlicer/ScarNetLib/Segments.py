"""The four ScarNet segments: names, colours, terminology; label array <-> segmentation node.

Label convention (ScarNetCore.labels): 0 background, 1 LV blood pool, 2 healthy myocardium,
3 scar, 4 MVO. Each label becomes its own segment (non-overlapping, empty ones kept so the user
can paint them), tagged with its label value so renaming a segment does not break quantification.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np

import slicer
from ScarNetCore import labels as L

from .Conversion import arrayFromOrientedImage, orientedImageFromArray, orientedImageGeometryFromVolumeNode

TERMINOLOGY_CONTEXT = "ScarNet - LGE cardiac MRI"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
LABEL_TAG = "ScarNet.Label"               # segment tag: label value this segment stands for
CONTENT_HASH_ATTRIBUTE = "ScarNet.ContentHash"  # node attribute: fingerprint of what ScarNet wrote
INPUT_VOLUME_ATTRIBUTE = "ScarNet.InputVolumeID"
MODEL_ATTRIBUTE = "ScarNet.Model"
QC_FLAGS_ATTRIBUTE = "ScarNet.QCFlags"  # ';'-joined quality-control flags of the run (empty: none)
RUN_RECORD_ATTRIBUTE = "ScarNet.RunRecord"  # JSON: the run record, as in <name>_run.json (ScarNetCore/io/outputs.py)

Code = tuple  # (CodingSchemeDesignator, CodeValue, CodeMeaning)
LEFT_VENTRICLE: Code = L.LEFT_VENTRICLE


@dataclasses.dataclass(frozen=True)
class SegmentDefinition:
    label: int
    segmentId: str
    name: str
    color: tuple  # RGB 0..1, chosen to stay distinct on a greyscale LGE image
    category: Code
    type: Code
    region: Code = LEFT_VENTRICLE

    def terminologyEntry(self) -> str:
        """Slicer's serialized terminology string (same format real Slicer writes)."""
        return slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(
            TERMINOLOGY_CONTEXT,
            self.category[1], self.category[0], self.category[2],
            self.type[1], self.type[0], self.type[2],
            "", "", "",
            ANATOMIC_CONTEXT,
            self.region[1], self.region[0], self.region[2],
            "", "", "")


def _definition(label: int, segmentId: str, color: tuple) -> SegmentDefinition:
    name, category, type_ = L.TERMINOLOGY[label]  # the engine's codes: the DICOM SEG carries the same
    return SegmentDefinition(label, segmentId, name, color, category, type_)


SEGMENT_DEFINITIONS = (
    _definition(L.BLOOD_POOL, "ScarNet_LVBloodPool", (0.85, 0.33, 0.31)),
    _definition(L.MYOCARDIUM, "ScarNet_HealthyMyocardium", (0.40, 0.75, 0.45)),
    _definition(L.SCAR, "ScarNet_Scar", (1.00, 0.85, 0.10)),
    _definition(L.MVO, "ScarNet_MVO", (0.25, 0.45, 1.00)),
)
DEFINITION_BY_LABEL = {d.label: d for d in SEGMENT_DEFINITIONS}


def terminologyFilePath() -> Path:
    return Path(__file__).resolve().parents[1] / "Resources" / "ScarNet.term.json"


def loadTerminology(terminologyLogic) -> str:
    """Register ScarNet's codes with a vtkSlicerTerminologiesModuleLogic; returns the context name."""
    name = terminologyLogic.LoadTerminologyFromFile(str(terminologyFilePath()))
    return name


def labelsFingerprint(labels: np.ndarray) -> str:
    digest = hashlib.sha256()
    digest.update(str(labels.shape).encode())
    digest.update(np.ascontiguousarray(labels, dtype=np.uint8).tobytes())
    return digest.hexdigest()


def findScarNetSegmentIds(segmentationNode) -> dict[int, str]:
    """label value -> segment ID, by our tag first, then by the standard name (user-made segments)."""
    segmentation = segmentationNode.GetSegmentation()
    byLabel: dict[int, str] = {}
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    for segmentId in ids:
        value = vtkTag(segmentation.GetSegment(segmentId), LABEL_TAG)
        if value is not None and value.isdigit() and int(value) in DEFINITION_BY_LABEL:
            byLabel.setdefault(int(value), segmentId)
    for definition in SEGMENT_DEFINITIONS:
        if definition.label in byLabel:
            continue
        for segmentId in ids:
            if segmentation.GetSegment(segmentId).GetName().strip().lower() == definition.name.lower():
                byLabel[definition.label] = segmentId
                break
    return byLabel


def vtkTag(segment, name: str):
    """A segment tag's value, or None if the tag is absent."""
    import vtk
    holder = vtk.reference("")
    return str(holder) if segment.GetTag(name, holder) else None


def labelArrayFromSegmentation(segmentationNode, volumeNode) -> np.ndarray:
    """The segmentation as it is now, as a uint8 label array on the volume's voxel grid.

    Overlaps (possible after manual editing with overlap allowed) resolve to the higher label:
    MVO over scar over myocardium over blood pool, as MVO lies within the infarct.
    """
    geometry = orientedImageGeometryFromVolumeNode(volumeNode)
    byLabel = findScarNetSegmentIds(segmentationNode)
    nx, ny, nz = volumeNode.GetImageData().GetDimensions()
    if not byLabel:
        return np.zeros((nz, ny, nx), dtype=np.uint8)
    import vtk
    segmentIds, labelValues = vtk.vtkStringArray(), vtk.vtkIntArray()
    for label in sorted(byLabel):
        segmentIds.InsertNextValue(byLabel[label])
        labelValues.InsertNextValue(label)
    merged = slicer.vtkOrientedImageData()
    ok = segmentationNode.GenerateMergedLabelmapForAllSegments(
        merged, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, geometry, segmentIds, labelValues)
    if not ok:
        raise RuntimeError(f"Could not read segmentation '{segmentationNode.GetName()}' as a labelmap.")
    if not slicer.vtkOrientedImageDataResample.DoGeometriesMatch(merged, geometry) or \
            tuple(merged.GetExtent()) != tuple(geometry.GetExtent()):
        resampled = slicer.vtkOrientedImageData()
        slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(merged, geometry, resampled)
        merged = resampled
    return arrayFromOrientedImage(merged).astype(np.uint8)


def writeLabelsToSegmentation(segmentationNode, labels: np.ndarray, volumeNode) -> None:
    """Replace the node's content with one segment per ScarNet label, on the volume's grid."""
    labelmapName = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
    terminologyTag = slicer.vtkSegment.GetTerminologyEntryTagName()
    segmentation = segmentationNode.GetSegmentation()
    wasModifying = segmentationNode.StartModify()
    try:
        segmentation.RemoveAllSegments()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentation.SetSourceRepresentationName(labelmapName) if hasattr(segmentation, "SetSourceRepresentationName") \
            else segmentation.SetMasterRepresentationName(labelmapName)
        for definition in SEGMENT_DEFINITIONS:
            segment = slicer.vtkSegment()
            segment.SetName(definition.name)
            segment.SetColor(*definition.color)
            segment.SetTag(LABEL_TAG, str(definition.label))
            segment.SetTag(terminologyTag, definition.terminologyEntry())
            segment.AddRepresentation(labelmapName, orientedImageFromArray(labels == definition.label, volumeNode))
            segmentation.AddSegment(segment, definition.segmentId)
        # the labels do not overlap, so one shared layer holds them all (as Segment Editor would)
        segmentation.CollapseBinaryLabelmaps(False)
    finally:
        segmentationNode.EndModify(wasModifying)
