"""ScarNet Slicer logic: MRML <-> SimpleITK conversion, segments, tables, background runs.

Importable without Qt or a Slicer GUI (only MRML classes from the ``slicer`` namespace, which
real Slicer and the ``slicer-core`` PyPI package both provide), so it is tested headless.
All image computation (segmentation, quantification) lives in ScarNetCore.
"""
from .Signal import Signal
from .Parameter import ScarNetSettings, DEVICE_CHOICES
from .Conversion import (
    sitkImageFromVolumeNode,
    orientedImageGeometryFromVolumeNode,
    volumeNodeGeometryMatches,
    validateVolumeNode,
    ScarNetSceneError,
)
from .Segments import SEGMENT_DEFINITIONS, SegmentDefinition, terminologyFilePath
from .Runner import InProcessRunner, ThreadRunner, SubprocessRunner, RunState
from .Logic import ScarNetLogic, SegmentationJob

__all__ = [
    "Signal", "ScarNetSettings", "DEVICE_CHOICES",
    "sitkImageFromVolumeNode", "orientedImageGeometryFromVolumeNode", "volumeNodeGeometryMatches",
    "validateVolumeNode", "ScarNetSceneError",
    "SEGMENT_DEFINITIONS", "SegmentDefinition", "terminologyFilePath",
    "InProcessRunner", "ThreadRunner", "SubprocessRunner", "RunState",
    "ScarNetLogic", "SegmentationJob",
]
