"""Render ScarNet.ui offscreen with PySide6 (no Slicer) to a PNG for the README.

Slicer's own widget classes do not exist outside Slicer, so each is drawn by a plain Qt stand-in
of similar look (node selector -> combo box, collapsible section -> group box, ...), filled
with the texts a user would see after loading the ScarNet sample. Layout, labels and buttons
are the real ones from the .ui file.

    QT_QPA_PLATFORM=offscreen python RenderPanel.py [out.png]
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[2]
UI_PATH = MODULE_DIR / "Resources" / "UI" / "ScarNet.ui"
DEFAULT_OUTPUT = MODULE_DIR.parent / "Resources" / "Screenshots" / "ScarNet_panel.png"

# what each node selector shows in a typical session (the bundled sample loaded, nothing run yet)
SELECTOR_TEXT = {
    "inputVolumeSelector": "EMIDEC_LGE",
    "outputSegmentationSelector": "Create new segmentation",
    "segmentationToQuantifySelector": "EMIDEC_LGE ScarNet",
    "insertionPointSelector": "Estimate from orientation",
    "resultTableSelector": "Create new table",
}


def standInClasses():
    from PySide6 import QtWidgets

    class qMRMLNodeComboBox(QtWidgets.QComboBox):
        pass

    class ctkCollapsibleButton(QtWidgets.QGroupBox):
        pass

    class ctkPathLineEdit(QtWidgets.QLineEdit):
        pass

    class qMRMLTableView(QtWidgets.QTableWidget):
        pass

    class qMRMLWidget(QtWidgets.QWidget):
        pass

    class qSlicerMarkupsPlaceWidget(QtWidgets.QToolButton):  # shows only its Place button in ScarNet
        pass

    return [qMRMLNodeComboBox, ctkCollapsibleButton, ctkPathLineEdit, qMRMLTableView, qMRMLWidget,
            qSlicerMarkupsPlaceWidget]


def loadPanel(uiPath: Path = UI_PATH):
    from PySide6 import QtCore, QtUiTools, QtWidgets
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    loader = QtUiTools.QUiLoader()
    standIns = standInClasses()  # referenced until load(): registerCustomWidget keeps no reference
    for cls in standIns:
        loader.registerCustomWidget(cls)
    file = QtCore.QFile(str(uiPath))
    file.open(QtCore.QIODevice.ReadOnly)
    panel = loader.load(file)
    file.close()
    if panel is None:
        raise RuntimeError(f"could not load {uiPath}: {loader.errorString()}")
    return app, panel


def dressPanel(panel) -> None:
    """Put in the values a user would see, where Slicer would fill them at run time."""
    from PySide6 import QtWidgets
    for box in panel.findChildren(QtWidgets.QGroupBox):
        box.setTitle(str(box.property("text") or ""))
    for name, text in SELECTOR_TEXT.items():
        combo = panel.findChild(QtWidgets.QComboBox, name)
        combo.addItem(text)
    device = panel.findChild(QtWidgets.QComboBox, "deviceComboBox")
    device.addItems(["auto", "cpu", "cuda", "mps"])
    panel.findChild(QtWidgets.QCheckBox, "useBundledModelCheckBox").setChecked(True)
    panel.findChild(QtWidgets.QLineEdit, "modelPathLineEdit").setEnabled(False)
    panel.findChild(QtWidgets.QSpinBox, "batchSizeSpinBox").setValue(8)
    panel.findChild(QtWidgets.QDoubleSpinBox, "densitySpinBox").setValue(1.05)
    panel.findChild(QtWidgets.QLabel, "modelInfoLabel").setText("Bundled model: scarnet_v2_emidec.safetensors")
    panel.findChild(QtWidgets.QProgressBar, "progressBar").setValue(0)
    panel.findChild(QtWidgets.QToolButton, "insertionPointPlaceWidget").setText("Place")
    table = panel.findChild(QtWidgets.QTableWidget, "resultTableView")
    table.setColumnCount(3)
    table.setHorizontalHeaderLabels(["Measurement", "Value", "Unit"])
    table.horizontalHeader().setStretchLastSection(True)


def render(outputPath: Path = DEFAULT_OUTPUT, width: int = 440) -> Path:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    app, panel = loadPanel()
    dressPanel(panel)
    panel.resize(width, panel.sizeHint().height())
    panel.adjustSize()
    panel.resize(width, panel.height())
    outputPath = Path(outputPath)
    outputPath.parent.mkdir(parents=True, exist_ok=True)
    if not panel.grab().save(str(outputPath)):
        raise RuntimeError(f"could not write {outputPath}")
    return outputPath


if __name__ == "__main__":
    print(render(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUTPUT))
