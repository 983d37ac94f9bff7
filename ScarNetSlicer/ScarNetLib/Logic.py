"""ScarNetLogic: segment an LGE volume into a segmentation node, quantify it, export the study's files.

Works on MRML nodes and the scene they belong to (``node.GetScene()``), never on widgets, so it
runs headless (slicer-core) exactly as in Slicer. Every check that can fail runs before anything
is added to the scene, and results are written only when a run has finished - a failed or
cancelled run leaves the scene as it was.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable, Optional

import numpy as np
import SimpleITK as sitk

import slicer
from ScarNetCore.errors import InputError

try:  # real Slicer: the module's logic is a ScriptedLoadableModuleLogic (parameter node, moduleName)
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic
except ImportError:  # slicer-core (headless) has no scripted-module layer
    ScriptedLoadableModuleLogic = object

from . import Dependencies, Parameter
from .Conversion import ScarNetSceneError, rasToLps, sitkImageFromVolumeNode, volumeNodeGeometryMatches
from .Parameter import ScarNetSettings
from .Runner import CANCELLED, FAILED, InProcessRunner, RunState, ThreadRunner
from .Segments import (CONTENT_HASH_ATTRIBUTE, INPUT_VOLUME_ATTRIBUTE, MODEL_ATTRIBUTE, QC_FLAGS_ATTRIBUTE,
                       RUN_RECORD_ATTRIBUTE, SEGMENT_DEFINITIONS,
                       labelArrayFromSegmentation, labelsFingerprint, writeLabelsToSegmentation)
from .Signal import Signal

# Output states (see outputState)
NEW, EMPTY, UNCHANGED, EDITED, FOREIGN = "new", "empty", "unchanged", "edited", "foreign"

SEGMENTATION_REFERENCE_ROLE = "ScarNet.Segmentation"  # table -> segmentation it was computed from

_UNITS = (("_percent", "%"), ("_ml", "mL"), ("_g", "g"), ("_mm", "mm"))
_PRETTY = {
    "myocardium_ml": "LV myocardium volume", "myocardium_g": "LV myocardium mass",
    "scar_ml": "Scar volume", "scar_g": "Scar mass", "scar_percent_lv": "Scar, % of LV myocardium",
    "mvo_ml": "MVO volume", "mvo_g": "MVO mass", "mvo_percent_lv": "MVO, % of LV myocardium",
    "blood_pool_ml": "LV blood pool volume",
}


def _unit(key: str) -> str:
    return next((unit for suffix, unit in _UNITS if key.endswith(suffix)), "")


@dataclasses.dataclass(frozen=True)
class Quantification:
    """What ScarNetLogic.quantify made: the engine's result (ScarNetCore.quantify.QuantResult, whose
    warnings the reader should see) and the three table nodes showing it."""
    result: object
    table: object           # summary: one row per measurement
    perSliceTable: object
    perSegmentTable: object  # AHA segments 1..17


class ScarNetLogic(ScriptedLoadableModuleLogic):
    """Usable without the widget. Signals: progressInfo(done, total), inferenceFinished(segNode),
    errorOccurred(message), inferenceCancelled()."""

    def __init__(self, segmenterFactory=None, runnerFactory: Optional[Callable[[], object]] = None):
        ScriptedLoadableModuleLogic.__init__(self)
        self.segmenterFactory = segmenterFactory  # None -> ScarNetCore.pipeline.segmenter.Segmenter
        self.runnerFactory = runnerFactory or (lambda: ThreadRunner(self.segmenterFactory))
        self.progressInfo = Signal("done:int, total:int")
        self.inferenceFinished = Signal("segmentationNode")
        self.errorOccurred = Signal("message:str")
        self.inferenceCancelled = Signal()

    # ------------------------------------------------------------------------- dependencies
    @staticmethod
    def missingPackages(action: str = Dependencies.SEGMENT, modelPath=None) -> dict:
        """Distribution -> pip requirement of each package `action` (segment/quantify/export) needs that this
        Python lacks or has too old; for segmenting, with what the model's encoder needs (None: bundled)."""
        return Dependencies.missingPackages(action, modelPath)

    @staticmethod
    def installPackages(missing: dict, progress=None) -> bool:
        """Install `missing` (only after the user agreed), reporting pip's lines to progress(line); True when
        Slicer must restart to use them."""
        return Dependencies.install(missing, progress)

    # ----------------------------------------------------------------------------------- checks
    @staticmethod
    def outputState(segmentationNode) -> str:
        """What writing into this node would destroy: nothing (new/empty/unchanged) or user work."""
        if segmentationNode is None:
            return NEW
        if segmentationNode.GetSegmentation().GetNumberOfSegments() == 0:
            return EMPTY
        written = segmentationNode.GetAttribute(CONTENT_HASH_ATTRIBUTE)
        if not written:
            return FOREIGN  # segments ScarNet did not make (drawn by hand, another tool)
        inputId = segmentationNode.GetAttribute(INPUT_VOLUME_ATTRIBUTE)
        scene = segmentationNode.GetScene()
        volume = scene.GetNodeByID(inputId) if (scene is not None and inputId) else None
        if volume is None or volume.GetImageData() is None:
            return EDITED  # cannot prove it is unchanged, so treat it as user work
        try:
            current = labelsFingerprint(labelArrayFromSegmentation(segmentationNode, volume))
        except RuntimeError:
            return EDITED
        return UNCHANGED if current == written else EDITED

    def checkOutputWritable(self, segmentationNode, overwrite: bool) -> None:
        state = self.outputState(segmentationNode)
        if state in (EDITED, FOREIGN) and not overwrite:
            what = "was edited after ScarNet wrote it" if state == EDITED else "holds segments ScarNet did not make"
            raise ScarNetSceneError(
                f"Segmentation '{segmentationNode.GetName()}' {what}; ScarNet will not overwrite it. "
                "Choose 'Create new segmentation' as output, or allow overwriting explicitly.")

    def prepareInput(self, inputVolumeNode, outputSegmentationNode=None, settings: Optional[ScarNetSettings] = None,
                     overwrite: Optional[bool] = None) -> tuple[sitk.Image, Optional[str], ScarNetSettings, bool]:
        """All checks that need no model; raises InputError/ScarNetSceneError/ValueError."""
        settings = settings if settings is not None else ScarNetSettings()
        Parameter.validate(settings)
        modelPath = Parameter.modelPathOrNone(settings)
        Dependencies.require(Dependencies.SEGMENT, modelPath)
        overwrite = settings.overwriteEdited if overwrite is None else bool(overwrite)
        from ScarNetCore.io.validation import check_not_label_map, label_map_message, validate_image
        hint = "select the greyscale LGE volume"
        if inputVolumeNode is not None and inputVolumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
            # the same words as the command line's check, which looks at the voxel values
            raise InputError(label_map_message(f"Input volume '{inputVolumeNode.GetName()}'",
                                               "it is a labelmap volume node", hint))
        image = sitkImageFromVolumeNode(inputVolumeNode)
        validate_image(image, f"Input volume '{inputVolumeNode.GetName()}'")
        check_not_label_map(image, f"Input volume '{inputVolumeNode.GetName()}'", hint)
        if image.GetDimension() != 3:
            raise InputError(f"Input volume '{inputVolumeNode.GetName()}' is not 3-D.")
        if outputSegmentationNode is not None and outputSegmentationNode.GetScene() is not inputVolumeNode.GetScene():
            raise ScarNetSceneError("The output segmentation is not in the input volume's scene.")
        self.checkOutputWritable(outputSegmentationNode, overwrite)
        return image, modelPath, settings, overwrite

    # ------------------------------------------------------------------------------ segmenting
    def process(self, inputVolumeNode, outputSegmentationNode=None, settings: Optional[ScarNetSettings] = None,
                overwrite: Optional[bool] = None, progress=None, runner=None):
        """Segment synchronously and return the segmentation node (new unless one is given).

        Headless contract: refuses (ScarNetSceneError) to write into a segmentation the user edited
        unless overwrite=True; on any error nothing is added to or changed in the scene.
        """
        image, modelPath, settings, overwrite = self.prepareInput(
            inputVolumeNode, outputSegmentationNode, settings, overwrite)
        runner = runner or InProcessRunner(self.segmenterFactory, progress=progress)
        runner.start(image, modelPath, settings.device, settings.batchSize)
        state = runner.wait()
        state.raiseIfUnsuccessful()
        return self.applyLabels(inputVolumeNode, state.labels, outputSegmentationNode, overwrite=overwrite,
                                modelInfo=state.modelInfo, qcFlags=state.qcFlags, runRecord=state.runRecord)

    def startProcessing(self, inputVolumeNode, outputSegmentationNode=None,
                        settings: Optional[ScarNetSettings] = None, overwrite: Optional[bool] = None,
                        runner=None) -> "SegmentationJob":
        """Start a background run; the caller (a QTimer in the GUI) calls job.poll() until it returns False.

        The job's signals are relayed to this logic's, so a widget connects once, not per job."""
        image, modelPath, settings, overwrite = self.prepareInput(
            inputVolumeNode, outputSegmentationNode, settings, overwrite)
        job = SegmentationJob(self.applyLabels, runner or self.runnerFactory(), inputVolumeNode,
                              outputSegmentationNode, overwrite)
        for source, target in ((job.progressInfo, self.progressInfo), (job.finished, self.inferenceFinished),
                               (job.errorOccurred, self.errorOccurred), (job.cancelled, self.inferenceCancelled)):
            source.connect(target.emit)
        job.start(image, modelPath, settings)
        return job

    def applyLabels(self, inputVolumeNode, labels: sitk.Image, outputSegmentationNode=None, overwrite: bool = False,
                    modelInfo: Optional[dict] = None, qcFlags: Optional[list] = None, runRecord: Optional[dict] = None):
        """Apply a ScarNet result to the scene and return the segmentation node (new unless one is given).

        The one step after the Segmenter returns, used by process() and by background jobs alike:
        `labels` is a label image in ScarNetCore's convention (uint8 0 background, 1 LV blood pool,
        2 healthy myocardium, 3 scar, 4 MVO) on exactly the input volume's voxel grid, e.g.
        ``Segmenter.segment(image).labels`` or a known label volume. It becomes the four ScarNet
        segments (names, colours, terminology) on the input's grid, tagged as ScarNet's work
        (content fingerprint, input volume, `modelInfo`, `qcFlags`, and `runRecord`, the engine's run record
        (ScarNetCore.io.outputs.run_record) completed with the files the input volume was loaded from). Refuses (ScarNetSceneError) an edited or
        foreign output unless overwrite=True, and (InputError) labels off the grid or outside 0..4;
        on any error the scene is left as it was.
        """
        scene = inputVolumeNode.GetScene() if inputVolumeNode is not None else None
        if scene is None:
            raise ScarNetSceneError("The input volume is no longer in the scene; the result was not applied.")
        if labels is None or labels.GetNumberOfComponentsPerPixel() != 1 or \
                labels.GetPixelID() not in (sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16,
                                            sitk.sitkUInt32, sitk.sitkInt32, sitk.sitkUInt64, sitk.sitkInt64):
            raise InputError("The segmentation result is not a single-component integer label image; "
                             "it was not applied.")
        if not volumeNodeGeometryMatches(inputVolumeNode, labels):
            raise InputError("The segmentation result does not lie on the input volume's voxel grid; "
                             "it was not applied.")
        labelArray = sitk.GetArrayFromImage(labels)
        unknown = sorted(set(np.unique(labelArray).tolist()) - {0, *(d.label for d in SEGMENT_DEFINITIONS)})
        if unknown:
            raise InputError(f"The segmentation result holds label values {unknown[:5]} outside ScarNet's 0..4; "
                             "it was not applied.")
        if outputSegmentationNode is not None and outputSegmentationNode.GetScene() is not scene:
            raise ScarNetSceneError("The output segmentation is not in the input volume's scene.")
        self.checkOutputWritable(outputSegmentationNode, overwrite)
        labelArray = labelArray.astype(np.uint8)
        created = outputSegmentationNode is None
        node = outputSegmentationNode
        try:
            if created:
                node = scene.AddNewNodeByClass(
                    "vtkMRMLSegmentationNode", scene.GenerateUniqueName(f"{inputVolumeNode.GetName()} ScarNet"))
            if node.GetDisplayNode() is None:
                node.CreateDefaultDisplayNodes()
            writeLabelsToSegmentation(node, labelArray, inputVolumeNode)
            node.SetAndObserveTransformNodeID(inputVolumeNode.GetTransformNodeID())
            node.SetAttribute(CONTENT_HASH_ATTRIBUTE, labelsFingerprint(labelArrayFromSegmentation(node, inputVolumeNode)))
            node.SetAttribute(INPUT_VOLUME_ATTRIBUTE, inputVolumeNode.GetID())
            node.SetAttribute(MODEL_ATTRIBUTE, json.dumps(modelInfo or {}, sort_keys=True, default=str))
            node.SetAttribute(QC_FLAGS_ATTRIBUTE, ";".join(qcFlags or []))
            node.SetAttribute(RUN_RECORD_ATTRIBUTE, self._recordWithInput(runRecord, inputVolumeNode))
            self.placeNextTo(node, inputVolumeNode)
        except Exception:
            if created and node is not None:
                scene.RemoveNode(node)
            raise
        return node

    @staticmethod
    def modelInfo(segmentationNode) -> dict:
        """The model facts ScarNet put on the node when it segmented (empty for other segmentations)."""
        text = segmentationNode.GetAttribute(MODEL_ATTRIBUTE) if segmentationNode is not None else None
        return json.loads(text) if text else {}

    @staticmethod
    def qcWarnings(segmentationNode) -> list[str]:
        """The run's quality-control flags as sentences for the user (empty when all is well)."""
        from ScarNetCore.pipeline.segmenter import QC_MESSAGES
        flags = [f for f in (segmentationNode.GetAttribute(QC_FLAGS_ATTRIBUTE) or "").split(";") if f]
        return [QC_MESSAGES.get(flag, flag) for flag in flags]

    # --------------------------------------------------------------------------- quantifying
    def quantify(self, segmentationNode, inputVolumeNode, tableNode=None, perSliceTableNode=None,
                 perSegmentTableNode=None, densityGPerMl: float = 1.05, insertionPointNode=None) -> Quantification:
        """Quantify the segmentation as it is now (manual edits included).

        `insertionPointNode`: a markups node whose last placed point is the anterior RV insertion point
        (None: estimated). The summary, per-slice and per-segment (AHA) tables are refilled when given, created
        when None; all three come back with the result.
        """
        Dependencies.require(Dependencies.QUANTIFY)
        _, result = self._quantification(segmentationNode, inputVolumeNode, densityGPerMl, insertionPointNode)
        scene = segmentationNode.GetScene()
        base = segmentationNode.GetName()
        rows = self.summaryRows(result.global_metrics)
        tableNode = self._fillTable(scene, tableNode, f"{base} quantification", rows, segmentationNode, inputVolumeNode)
        perSlice = self._fillTable(scene, perSliceTableNode, f"{base} per slice",
                                   list(getattr(result, "per_slice", None) or []), segmentationNode, inputVolumeNode)
        perSegment = self._fillTable(scene, perSegmentTableNode, f"{base} AHA segments",
                                     list(getattr(result, "per_segment", None) or []), segmentationNode, inputVolumeNode)
        return Quantification(result, tableNode, perSlice, perSegment)

    @staticmethod
    def insertionPointLps(markupsNode, volumeNode) -> Optional[tuple]:
        """The last placed point of `markupsNode` in the coordinates of the image ScarNet reads from
        `volumeNode` (its own LPS, before any parent transform), or None without a placed point. The last:
        a list the user picked may already hold points, and the one just clicked with Place is added after
        them (a point still being placed does not count). The point is placed in world coordinates; a
        transformed volume's voxels are not, so the point is taken back through the volume's transforms -
        else a moved volume would get its AHA segments from the wrong place."""
        if markupsNode is None:
            return None
        placed = [i for i in range(markupsNode.GetNumberOfControlPoints())
                  if markupsNode.GetNthControlPointPositionStatus(i) == slicer.vtkMRMLMarkupsNode.PositionDefined]
        if not placed:
            return None
        world = [0.0, 0.0, 0.0]
        markupsNode.GetNthControlPointPositionWorld(placed[-1], world)
        import vtk
        worldToVolume = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, volumeNode.GetParentTransformNode(), worldToVolume)
        return rasToLps(worldToVolume.TransformPoint(world))

    @classmethod
    def _quantification(cls, segmentationNode, inputVolumeNode, densityGPerMl, insertionPointNode):
        """(labels, QuantResult) of the segmentation as it is now, on the input volume's grid; the labels as a
        ScarNetCore LabelStack (on the volume's stack), which quantify and the output layer read as they are."""
        if segmentationNode is None or segmentationNode.GetScene() is None:
            raise InputError("Select the segmentation to quantify.")
        from ScarNetCore.io.validation import checked_voxels
        from ScarNetCore.pipeline.stack import LabelStack
        from ScarNetCore.quantify import quantify
        image = sitkImageFromVolumeNode(inputVolumeNode)
        checked_voxels(image, inputVolumeNode.GetName())
        labels = LabelStack.on(image, labelArrayFromSegmentation(segmentationNode, inputVolumeNode))
        insertion = cls.insertionPointLps(insertionPointNode, inputVolumeNode)
        return labels, quantify(labels, density_g_per_ml=float(densityGPerMl), insertion_point=insertion)

    def _fillTable(self, scene, tableNode, name, rows: list, segmentationNode, referenceNode):
        import vtk
        if tableNode is None:
            tableNode = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
            self.placeNextTo(tableNode, referenceNode)
        wasModifying = tableNode.StartModify()
        table = tableNode.GetTable()
        table.Initialize()  # also drops old columns: re-quantifying replaces, never appends
        columns = list(dict.fromkeys(key for row in rows for key in row))
        for column in columns:
            values = [row.get(column) for row in rows]
            numeric = all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                          for v in values if v is not None)
            array = vtk.vtkDoubleArray() if numeric else vtk.vtkStringArray()
            array.SetName(column)
            for value in values:
                if numeric:
                    array.InsertNextValue(float("nan") if value is None else float(value))
                else:
                    array.InsertNextValue("" if value is None else str(value))
            table.AddColumn(array)
            if numeric and column != "Value":
                unit = _unit(column)
                if unit:
                    tableNode.SetColumnUnitLabel(column, unit)
        if hasattr(tableNode, "SetUseColumnTitleAsColumnHeader"):
            tableNode.SetUseColumnTitleAsColumnHeader(True)
        else:  # Slicer < 5.x
            tableNode.SetUseColumnNameAsColumnHeader(True)
        tableNode.SetNodeReferenceID(SEGMENTATION_REFERENCE_ROLE, segmentationNode.GetID())
        table.Modified()
        tableNode.Modified()
        tableNode.EndModify(wasModifying)
        return tableNode

    @staticmethod
    def summaryRows(metrics: dict) -> list[dict]:
        """One row per metric; clinical ones first. Numbers in Value, words/flags in Note."""
        ordered = [k for k in _PRETTY if k in metrics] + [k for k in metrics if k not in _PRETTY]
        rows = []
        for key in ordered:
            value = metrics[key]
            numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
            rows.append({"Measurement": _PRETTY.get(key, key.replace("_", " ")),
                         "Value": float(value) if numeric else float("nan"),
                         "Unit": _unit(key) or ("mm (LPS)" if key.startswith("insertion_point_") else ""),
                         "Note": "" if numeric or value is None else str(value), "Key": key})
        return rows

    @staticmethod
    def tableRows(tableNode) -> list[dict]:
        table = tableNode.GetTable()
        names = [table.GetColumn(c).GetName() for c in range(table.GetNumberOfColumns())]
        rows = []
        for r in range(table.GetNumberOfRows()):
            row = {}
            for c, name in enumerate(names):
                value = table.GetValue(r, c)
                row[name] = value.ToDouble() if value.IsNumeric() else value.ToString()
            rows.append(row)
        return rows

    @staticmethod
    def metricsFromTable(tableNode) -> dict:
        """Key -> value of a summary table made by quantify()."""
        return {row["Key"]: row["Note"] if row["Note"] else row["Value"] for row in ScarNetLogic.tableRows(tableNode)}

    def exportResults(self, segmentationNode, inputVolumeNode, outputDirectory, name: Optional[str] = None,
                      densityGPerMl: float = 1.05, insertionPointNode=None, overwrite: bool = False) -> dict:
        """Write the study's files exactly as `scarnet segment` names and writes them (ScarNetCore.io.outputs):
        the segmentation as it is now (edits included) as <name>_seg.nii.gz, its summary, per-slice and
        AHA CSVs, the bullseye and <name>_run.json. Returns {kind: path}.

        `name` defaults to the input volume's name: Slicer names a volume loaded from case.nii.gz
        'case', the stem the command line gives the outputs of case.nii.gz. Refuses (ScarNetError)
        to replace a study's files unless overwrite=True.
        """
        Dependencies.require(Dependencies.EXPORT)
        from ScarNetCore.io import outputs
        name = name or inputVolumeNode.GetName()
        outputs.refuse_overwrite(outputDirectory, name, overwrite)
        labels, result = self._quantification(segmentationNode, inputVolumeNode, densityGPerMl, insertionPointNode)
        record = self.runRecord(segmentationNode)
        if record is None:  # not segmented by ScarNet: the record says so (no model)
            record = outputs.run_record(self.inputFiles(inputVolumeNode), {}, outputs.now())
        record["options"].update(density_g_per_ml=float(densityGPerMl),
                                 insertion_point=self.insertionPointLps(insertionPointNode, inputVolumeNode))
        record["labels_edited"] = self.outputState(segmentationNode) != UNCHANGED
        return outputs.write_study(outputDirectory, name, result, record, labels=labels, qc_flags=record["qc_flags"],
                                   overwrite=overwrite)

    @staticmethod
    def runRecord(segmentationNode) -> Optional[dict]:
        """The run record ScarNet put on the node when it segmented (None for other segmentations)."""
        text = segmentationNode.GetAttribute(RUN_RECORD_ATTRIBUTE) if segmentationNode is not None else None
        return json.loads(text) if text else None

    @staticmethod
    def inputFiles(volumeNode) -> list:
        """The files the volume was loaded from (its storage node; every file of a DICOM series)."""
        storage = volumeNode.GetStorageNode() if volumeNode is not None else None
        if storage is None:
            return []
        names = [storage.GetFileName()] + [storage.GetNthFileName(i) for i in range(storage.GetNumberOfFileNames())]
        return [name for name in dict.fromkeys(names) if name and os.path.isfile(name)]

    def _recordWithInput(self, runRecord: Optional[dict], inputVolumeNode) -> str:
        """The runner's record (it saw only voxels) with the input volume's files and checksums."""
        if not runRecord:
            return ""
        from ScarNetCore.io import outputs
        record = dict(runRecord, inputs=outputs.file_entries(self.inputFiles(inputVolumeNode)),
                      input_volume=inputVolumeNode.GetName())
        return json.dumps(record, default=str)

    # ---------------------------------------------------------------------------- the scene
    @staticmethod
    def placeNextTo(node, referenceNode) -> bool:
        """Put `node` under the same subject hierarchy parent (patient/study) as `referenceNode`."""
        scene = node.GetScene()
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene) if scene is not None else None
        if shNode is None:
            return False
        referenceItem = shNode.GetItemByDataNode(referenceNode) if referenceNode is not None else 0
        parent = shNode.GetItemParent(referenceItem) if referenceItem else shNode.GetSceneItemID()
        item = shNode.GetItemByDataNode(node)
        if item:
            shNode.SetItemParent(item, parent)
        else:  # without Slicer's SH plugins (headless) nodes get no item automatically
            shNode.CreateItem(parent, node)
        return True

    @staticmethod
    def segmentNames(segmentationNode) -> list[str]:
        segmentation = segmentationNode.GetSegmentation()
        return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


class SegmentationJob:
    """One background run, driven from the main thread by poll(); results applied only on success.

    Signals: progressInfo(done, total), finished(segmentationNode), errorOccurred(message), cancelled().
    `apply` applies a finished run's labels to the scene (ScarNetLogic.applyLabels).
    """

    def __init__(self, apply: Callable, runner, inputVolumeNode, outputSegmentationNode, overwrite: bool):
        self.apply, self.runner = apply, runner
        self.inputVolumeNode, self.outputSegmentationNode, self.overwrite = inputVolumeNode, outputSegmentationNode, overwrite
        self.progressInfo = Signal("done:int, total:int")
        self.finished = Signal("segmentationNode")
        self.errorOccurred = Signal("message:str")
        self.cancelled = Signal()
        self.state = RunState()
        self.segmentationNode = None
        self.errorMessage = ""
        self._cancelRequested = False
        self._outputHashAtStart = self._outputHash()

    def _outputHash(self):
        node = self.outputSegmentationNode
        if node is None or node.GetScene() is None or node.GetSegmentation().GetNumberOfSegments() == 0:
            return None
        return labelsFingerprint(labelArrayFromSegmentation(node, self.inputVolumeNode))

    def start(self, image, modelPath, settings) -> None:
        self.runner.start(image, modelPath, settings.device, settings.batchSize)

    def cancel(self) -> None:
        """From now on the run ends as cancelled, even if its result is already waiting (scene close)."""
        self._cancelRequested = True
        self.runner.cancel()

    @property
    def isRunning(self) -> bool:
        return not self.state.isDone

    def poll(self) -> bool:
        """Update progress; on completion apply or report. Returns True while still running."""
        if self.state.isDone:
            return False
        state = self.runner.poll()
        if not state.isDone:
            if (state.done, state.total) != (self.state.done, self.state.total):
                self.progressInfo.emit(state.done, state.total)
            self.state = state
            return True
        if self._cancelRequested and state.status != CANCELLED:
            state = RunState(CANCELLED, message="Cancelled; nothing was changed.")
        self.state = state
        if state.status == CANCELLED:
            self.cancelled.emit()
            return False
        try:
            state.raiseIfUnsuccessful()
            if self.outputSegmentationNode is not None and self._outputHash() != self._outputHashAtStart:
                raise ScarNetSceneError(f"Segmentation '{self.outputSegmentationNode.GetName()}' was changed while "
                                        "ScarNet was running; the result was not applied.")
            self.segmentationNode = self.apply(
                self.inputVolumeNode, state.labels, self.outputSegmentationNode, overwrite=self.overwrite,
                modelInfo=state.modelInfo, qcFlags=state.qcFlags, runRecord=state.runRecord)
        except Exception as exc:
            self.state = RunState(FAILED, errorType=type(exc).__name__, message=str(exc))
            self.errorMessage = str(exc)
            self.errorOccurred.emit(self.errorMessage)
            return False
        self.finished.emit(self.segmentationNode)
        return False

    def wait(self, timeout: Optional[float] = None, interval: float = 0.02) -> RunState:
        """Headless helper: poll until done (what the GUI's QTimer does)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll():
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(interval)
        return self.state
