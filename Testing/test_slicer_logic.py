"""ScarNet Slicer logic on a real MRML scene from the slicer-core PyPI package (headless Slicer core).

Segment -> geometry and terminology -> edit -> quantify -> re-run -> bad inputs, without a GUI.
A fake Segmenter (ScarNetSlicer/Testing/Python/ScarNetFakes.py) makes the labels known exactly;
one integration test runs the real ScarNetCore Segmenter on the bundled sample.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "ScarNetSlicer"), str(ROOT / "ScarNetSlicer" / "Testing" / "Python")]

slicer = pytest.importorskip("slicer")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the 'slicer' module found is not slicer-core (pip install slicer-core)", allow_module_level=True)
import SimpleITK as sitk  # noqa: E402
import vtk  # noqa: E402

from ScarNetCore.errors import Cancelled, CheckpointError, InputError  # noqa: E402
from ScarNetFakes import fakeFactory, phantomImage, phantomLabels, slowFakeFactory  # noqa: E402
from ScarNetLib import ScarNetLogic, ScarNetSettings, SubprocessRunner, ThreadRunner  # noqa: E402
from ScarNetLib.Conversion import (ScarNetSceneError, addVolumeNodeFromSitk, ijkToRasArray,  # noqa: E402
                                   sitkImageFromVolumeNode)
from ScarNetLib.Segments import (SEGMENT_DEFINITIONS, TERMINOLOGY_CONTEXT, labelArrayFromSegmentation,  # noqa: E402
                                 terminologyFilePath, vtkTag)

HAVE_QUANTIFY = importlib.util.find_spec("ScarNetCore.quantify") is not None
OBLIQUE = sitk.VersorTransform((0.3, 0.5, 0.8), 0.6).GetMatrix()


def makeScene(direction=OBLIQUE, shape=(6, 40, 48), spacing=(1.4, 1.3, 8.0), origin=(10.0, -20.0, 30.0)):
    scene = slicer.vtkMRMLScene()
    labels = phantomLabels(shape)
    image = sitk.GetImageFromArray(phantomImage(labels))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    volume = addVolumeNodeFromSitk(scene, image, "LGE")
    return scene, volume, labels, image


def sceneSnapshot(scene):
    """IDs and modification state of every node: 'unchanged' means this tuple is equal."""
    nodes = scene.GetNodes()
    return tuple(sorted((nodes.GetItemAsObject(i).GetID(), nodes.GetItemAsObject(i).GetMTime())
                        for i in range(nodes.GetNumberOfItems())))


def segmentLabelArray(segmentationNode, segmentId):
    oriented = slicer.vtkOrientedImageData()
    slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(segmentationNode, segmentId, oriented)
    return oriented


@pytest.fixture
def logic():
    return ScarNetLogic(segmenterFactory=fakeFactory)


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


def test_segmentation_geometry_segments_and_terminology(logic):
    scene, volume, labels, _ = makeScene()
    segmentationNode = logic.process(volume)
    assert segmentationNode.GetScene() is scene
    assert logic.segmentNames(segmentationNode) == ["LV blood pool", "Healthy myocardium", "Scar", "MVO"]
    # reference geometry = the input volume's grid, and the content lies on exactly that grid
    segmentation = segmentationNode.GetSegmentation()
    geometryName = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    reference = slicer.vtkOrientedImageData()
    slicer.vtkSegmentationConverter.DeserializeImageGeometry(segmentation.GetConversionParameter(geometryName), reference)
    volumeMatrix, referenceMatrix = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(volumeMatrix)
    reference.GetImageToWorldMatrix(referenceMatrix)
    for r in range(4):
        for c in range(4):
            assert referenceMatrix.GetElement(r, c) == pytest.approx(volumeMatrix.GetElement(r, c), abs=1e-6)
    assert reference.GetExtent() == volume.GetImageData().GetExtent()
    np.testing.assert_array_equal(labelArrayFromSegmentation(segmentationNode, volume), labels)
    # separate, non-overlapping segments, each exactly its label
    for definition in SEGMENT_DEFINITIONS:
        oriented = segmentLabelArray(segmentationNode, definition.segmentId)
        matrix = vtk.vtkMatrix4x4()
        oriented.GetImageToWorldMatrix(matrix)
        for r in range(4):
            for c in range(4):
                assert matrix.GetElement(r, c) == pytest.approx(volumeMatrix.GetElement(r, c), abs=1e-6)
        segment = segmentation.GetSegment(definition.segmentId)
        assert segment.GetColor() == pytest.approx(definition.color)
        entry = vtkTag(segment, slicer.vtkSegment.GetTerminologyEntryTagName())
        parsed = slicer.vtkSlicerTerminologyEntry()
        assert slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(entry, parsed)
        assert parsed.GetTerminologyContextName() == TERMINOLOGY_CONTEXT
        assert parsed.GetTypeObject().GetCodeValue() == definition.type[1]
        assert parsed.GetTypeObject().GetCodingSchemeDesignator() == definition.type[0]
        assert parsed.GetCategoryObject().GetCodeValue() == definition.category[1]
    types = {d.name: d.type[1] for d in SEGMENT_DEFINITIONS}
    assert types["Healthy myocardium"] == "74281007" and types["Scar"] == "12402003"
    assert segmentationNode.GetDisplayNode() is not None


def test_terminology_file_loads_in_slicer_terminology_logic():
    terminologyLogic = slicer.vtkSlicerTerminologiesModuleLogic()
    assert terminologyLogic.LoadTerminologyFromFile(str(terminologyFilePath())) == TERMINOLOGY_CONTEXT
    document = json.loads(terminologyFilePath().read_text())
    declared = {(t["CodingSchemeDesignator"], t["CodeValue"], c["CodeValue"])
                for c in document["SegmentationCodes"]["Category"] for t in c["Type"]}
    for definition in SEGMENT_DEFINITIONS:
        assert (definition.type[0], definition.type[1], definition.category[1]) in declared


def test_placed_next_to_input_in_subject_hierarchy(logic):
    scene, volume, _, _ = makeScene()
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = shNode.CreateStudyItem(shNode.CreateSubjectItem(shNode.GetSceneItemID(), "Patient"), "LGE study")
    shNode.CreateItem(study, volume)
    segmentationNode = logic.process(volume)
    assert shNode.GetItemParent(shNode.GetItemByDataNode(segmentationNode)) == study


def test_parent_transform_follows_input(logic):
    scene, volume, _, _ = makeScene()
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    assert logic.process(volume).GetTransformNodeID() == transform.GetID()


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


@pytest.mark.skipif(not HAVE_QUANTIFY, reason="ScarNetCore.quantify not available")
def test_quantify_follows_manual_edits(logic, tmp_path):
    scene, volume, labels, image = makeScene()
    segmentationNode = logic.process(volume)
    table = logic.quantify(segmentationNode, volume)
    assert table.IsA("vtkMRMLTableNode") and table.GetScene() is scene
    metrics = logic.metricsFromTable(table)
    voxelMl = float(np.prod(image.GetSpacing())) / 1000.0
    from ScarNetCore.labels import myocardium_mask, scar_mask
    assert metrics["myocardium_ml"] == pytest.approx(myocardium_mask(labels).sum() * voxelMl, rel=1e-6)
    assert metrics["scar_ml"] == pytest.approx(scar_mask(labels).sum() * voxelMl, rel=1e-6)
    assert metrics["myocardium_g"] == pytest.approx(metrics["myocardium_ml"] * 1.05, rel=1e-6)
    assert metrics["scar_percent_lv"] == pytest.approx(100 * scar_mask(labels).sum() / myocardium_mask(labels).sum(),
                                                       rel=1e-6)
    _, perSlice, perSegment = logic.lastTables
    assert perSlice.GetTable().GetNumberOfRows() > 0 and perSegment.GetTable().GetNumberOfRows() == 17

    erased = eraseHalf(segmentationNode, "ScarNet_Scar")
    assert erased > 0
    assert logic.outputState(segmentationNode) == "edited"
    table2 = logic.quantify(segmentationNode, volume, tableNode=table)
    assert table2 is table  # "Update quantification" refills, never piles up tables
    edited = logic.metricsFromTable(table)
    assert edited["scar_ml"] == pytest.approx(metrics["scar_ml"] - erased * voxelMl, rel=1e-6)
    assert edited["myocardium_ml"] == pytest.approx(metrics["myocardium_ml"] - erased * voxelMl, rel=1e-6)

    path = logic.exportTable(table, tmp_path / "scar.csv")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {"Measurement", "Value", "Unit", "Note", "Key"} <= set(rows[0])
    assert float(next(r for r in rows if r["Key"] == "scar_ml")["Value"]) == pytest.approx(edited["scar_ml"])
    reports = logic.writeReports(tmp_path / "reports", "case")
    assert any(str(p).endswith("_bullseye.png") for p in (reports.values() if isinstance(reports, dict) else reports))


# ------------------------------------------------------------------------ never lose edits
def test_rerun_never_touches_edited_segmentation(logic):
    scene, volume, labels, _ = makeScene()
    first = logic.process(volume)
    eraseHalf(first, "ScarNet_Scar")
    editedContent = labelArrayFromSegmentation(first, volume)
    before = sceneSnapshot(scene)

    second = logic.process(volume)  # default: a new node
    assert second is not first
    np.testing.assert_array_equal(labelArrayFromSegmentation(first, volume), editedContent)

    before = sceneSnapshot(scene)
    with pytest.raises(ScarNetSceneError, match="edited"):
        logic.process(volume, first)  # headless, no overwrite flag: refuse
    assert sceneSnapshot(scene) == before
    np.testing.assert_array_equal(labelArrayFromSegmentation(first, volume), editedContent)

    # an unedited ScarNet result may be refreshed in place; an explicit flag allows overwriting edits
    assert logic.outputState(second) == "unchanged"
    assert logic.process(volume, second) is second
    assert logic.process(volume, first, overwrite=True) is first
    np.testing.assert_array_equal(labelArrayFromSegmentation(first, volume), labels)


def test_refuses_segmentation_made_by_someone_else(logic):
    scene, volume, _, _ = makeScene()
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
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    assert logic.process(volume, empty) is empty


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
    scene, volume, _, image = makeScene()
    bad = make(scene, image)
    before = sceneSnapshot(scene)
    with pytest.raises(InputError, match=message) as info:
        logic.process(bad)
    assert str(info.value)
    assert sceneSnapshot(scene) == before


def test_model_that_fails_to_load_leaves_scene_unchanged():
    def brokenFactory(modelPath, device):
        raise CheckpointError(f"{modelPath}: not a ScarNet checkpoint")
    scene, volume, _, _ = makeScene()
    before = sceneSnapshot(scene)
    settings = ScarNetSettings(useBundledModel=False, modelPath=Path("/nonexistent/model.safetensors"))
    with pytest.raises(CheckpointError, match="not a ScarNet checkpoint"):
        ScarNetLogic(segmenterFactory=brokenFactory).process(volume, settings=settings)
    assert sceneSnapshot(scene) == before


def test_no_input_selected(logic):
    with pytest.raises(InputError, match="none selected"):
        logic.process(None)


# ---------------------------------------------------------------------- background runs
def test_background_job_reports_progress_and_applies_on_finish():
    scene, volume, labels, _ = makeScene()
    logic = ScarNetLogic(segmenterFactory=fakeFactory)
    progress, finished = [], []
    logic.progressInfo.connect(lambda done, total: progress.append((done, total)))
    logic.inferenceFinished.connect(finished.append)
    job = logic.startProcessing(volume, settings=ScarNetSettings(batchSize=2), runner=ThreadRunner(fakeFactory))
    job.wait(timeout=30)
    assert finished and finished[0] is job.segmentationNode
    np.testing.assert_array_equal(labelArrayFromSegmentation(job.segmentationNode, volume), labels)


@pytest.mark.parametrize("runnerKind", ["thread", "subprocess"])
def test_cancel_leaves_scene_as_it_was(runnerKind, monkeypatch):
    scene, volume, _, _ = makeScene()
    logic = ScarNetLogic(segmenterFactory=slowFakeFactory)
    if runnerKind == "thread":
        runner = ThreadRunner(slowFakeFactory)
    else:
        monkeypatch.setenv("PYTHONPATH", str(ROOT / "ScarNetSlicer" / "Testing" / "Python"))
        runner = SubprocessRunner(pythonExecutable=sys.executable, segmenterFactory="ScarNetFakes:slowFakeFactory")
    cancelled = []
    logic.inferenceCancelled.connect(lambda: cancelled.append(True))
    before = sceneSnapshot(scene)
    job = logic.startProcessing(volume, settings=ScarNetSettings(batchSize=1), runner=runner)
    deadline = time.monotonic() + 60
    while job.poll() and job.state.done < 1 and time.monotonic() < deadline:
        time.sleep(0.05)  # the GUI's QTimer does this
    job.cancel()
    state = job.wait(timeout=60)
    assert state.status == "cancelled" and cancelled
    assert sceneSnapshot(scene) == before


def test_subprocess_runner_segments(monkeypatch):
    scene, volume, labels, _ = makeScene()
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "ScarNetSlicer" / "Testing" / "Python"))
    logic = ScarNetLogic()
    job = logic.startProcessing(volume, runner=SubprocessRunner(sys.executable, "ScarNetFakes:fakeFactory"))
    state = job.wait(timeout=120)
    assert state.status == "finished", state.message
    np.testing.assert_array_equal(labelArrayFromSegmentation(job.segmentationNode, volume), labels)
    assert json.loads(job.segmentationNode.GetAttribute("ScarNet.Model"))["name"] == "FakeScarNet"


def test_subprocess_runner_reports_engine_errors(monkeypatch):
    scene, volume, _, _ = makeScene()
    errors = []
    logic = ScarNetLogic()
    logic.errorOccurred.connect(errors.append)
    settings = ScarNetSettings(useBundledModel=False, modelPath=Path("/nonexistent/model.safetensors"))
    before = sceneSnapshot(scene)
    job = logic.startProcessing(volume, settings=settings, runner=SubprocessRunner(sys.executable))
    state = job.wait(timeout=180)
    assert state.status == "failed" and errors and errors[0]
    assert sceneSnapshot(scene) == before


# --------------------------------------------------------------- the real engine, if present
def _realModelAvailable():
    try:
        from ScarNetCore.resources import default_model_path
        import ScarNetCore.inference  # noqa: F401
    except ImportError:
        return False
    return default_model_path().is_file()


@pytest.mark.skipif(not _realModelAvailable(), reason="bundled ScarNet model not present")
def test_real_segmenter_on_bundled_sample():
    from ScarNetCore.resources import sample_volume_path
    scene = slicer.vtkMRMLScene()
    volume = addVolumeNodeFromSitk(scene, sitk.ReadImage(str(sample_volume_path())), "EMIDEC sample")
    logic = ScarNetLogic()
    segmentationNode = logic.process(volume, settings=ScarNetSettings(device="cpu"))
    assert logic.segmentNames(segmentationNode) == ["LV blood pool", "Healthy myocardium", "Scar", "MVO"]
    labels = labelArrayFromSegmentation(segmentationNode, volume)
    assert labels.shape == sitk.GetArrayViewFromImage(sitkImageFromVolumeNode(volume)).shape
    assert set(np.unique(labels)) <= {0, 1, 2, 3, 4}
    assert logic.lastModelInfo.get("name")
    if HAVE_QUANTIFY:
        metrics = logic.metricsFromTable(logic.quantify(segmentationNode, volume))
        assert metrics["myocardium_ml"] >= 0
