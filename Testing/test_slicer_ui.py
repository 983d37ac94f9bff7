"""ScarNet.ui loads with PySide6's QUiLoader (offscreen) and matches what ScarNet.py uses.

Slicer's classes (qMRMLNodeComboBox, ctk*) do not exist here; each is registered as a stand-in
derived from the Qt base class the .ui declares, which is what Slicer's widgets derive from.
"""
from __future__ import annotations

import ast
import dataclasses
import os
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
from PySide6 import QtCore, QtUiTools, QtWidgets  # noqa: E402  (a test requirement: fail, not skip, if missing)

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "ScarNetSlicer"
UI_PATH = MODULE_DIR / "Resources" / "UI" / "ScarNet.ui"
MODULE_SOURCE = (MODULE_DIR / "ScarNet.py").read_text()
sys.path[:0] = [str(MODULE_DIR), str(MODULE_DIR / "Testing" / "Python")]

# Slicer/CTK class -> the Qt class it derives from (what the .ui must declare)
SLICER_BASES = {"qMRMLNodeComboBox": "QWidget", "ctkCollapsibleButton": "QWidget", "ctkPathLineEdit": "QWidget",
                "qMRMLTableView": "QTableView", "qMRMLWidget": "QWidget"}

# every widget ScarNet.py touches, with its class
EXPECTED = {
    "segmentButton": "QPushButton", "cancelButton": "QPushButton", "editButton": "QPushButton",
    "updateQuantificationButton": "QPushButton", "exportTableButton": "QPushButton",
    "refreshDevicesButton": "QToolButton", "progressBar": "QProgressBar", "modelPathLineEdit": "ctkPathLineEdit",
    "devicesLabel": "QLabel", "modelInfoLabel": "QLabel", "statusLabel": "QLabel", "resultTableView": "qMRMLTableView",
    "quantificationNotesLabel": "QLabel",
    # bound through SlicerParameterName
    "inputVolumeSelector": "qMRMLNodeComboBox", "outputSegmentationSelector": "qMRMLNodeComboBox",
    "segmentationToQuantifySelector": "qMRMLNodeComboBox", "insertionPointSelector": "qMRMLNodeComboBox",
    "resultTableSelector": "qMRMLNodeComboBox", "useBundledModelCheckBox": "QCheckBox",
    "deviceComboBox": "QComboBox", "batchSizeSpinBox": "QSpinBox", "densitySpinBox": "QDoubleSpinBox",
}
# parameter type -> widget classes parameterNodeWrapper can connect it to
CONNECTABLE = {"bool": {"QCheckBox"}, "int": {"QSpinBox", "QSlider"}, "float": {"QDoubleSpinBox", "ctkSliderWidget"},
               "str": {"QComboBox", "QLineEdit"}, "Path": {"ctkPathLineEdit"}, "node": {"qMRMLNodeComboBox"}}


@pytest.fixture(scope="module")
def uiTree():
    return ET.parse(UI_PATH)


@pytest.fixture(scope="module")
def panel(uiTree):
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    loader = QtUiTools.QUiLoader()
    # Keep the stand-in classes referenced: registerCustomWidget does not, and a class is only freed
    # by the cyclic GC - if that runs before load() (timing depends on earlier tests), load() crashes.
    standIns = [type(c.findtext("class"), (getattr(QtWidgets, c.findtext("extends")),), {})
                for c in uiTree.getroot().iter("customwidget")]
    for cls in standIns:
        loader.registerCustomWidget(cls)
    file = QtCore.QFile(str(UI_PATH))
    assert file.open(QtCore.QIODevice.ReadOnly)
    widget = loader.load(file)
    file.close()
    assert widget is not None, loader.errorString()
    yield widget
    widget.deleteLater()
    app.processEvents()


def test_custom_slicer_classes_declared_with_qt_base(uiTree):
    declared = {c.findtext("class"): c.findtext("extends") for c in uiTree.getroot().iter("customwidget")}
    used = {w.get("class") for w in uiTree.getroot().iter("widget")}
    for cls in used:
        if not hasattr(QtWidgets, cls):
            assert cls in declared, f"{cls} is used but not declared in <customwidgets>"
    for cls, base in declared.items():
        assert hasattr(QtWidgets, base), f"{cls} extends {base}, which is not a Qt class"
        if cls in SLICER_BASES:
            assert base == SLICER_BASES[cls], f"{cls} must extend {SLICER_BASES[cls]}, not {base}"


def test_every_widget_the_module_uses_exists_with_the_right_type(panel):
    referenced = set(re.findall(r"self\.ui\.(\w+)", MODULE_SOURCE))
    assert referenced, "ScarNet.py refers to no ui widgets?"
    missingTypes = referenced - set(EXPECTED)
    assert not missingTypes, f"add the expected class of {missingTypes} to this test"
    for name in referenced | {n for n in EXPECTED}:
        widget = panel.findChild(QtCore.QObject, name)
        assert widget is not None, f"ScarNet.ui has no widget '{name}'"
        assert widget.metaObject().className() == EXPECTED[name], \
            f"'{name}' is a {widget.metaObject().className()}, ScarNet.py expects {EXPECTED[name]}"
    assert panel.metaObject().className() == "qMRMLWidget"  # loadUI + setMRMLScene need it


def _parameterNodeFields() -> dict:
    """Field name -> annotation source of ScarNetParameterNode in ScarNet.py (no Slicer needed)."""
    tree = ast.parse(MODULE_SOURCE)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ScarNetParameterNode")
    return {n.target.id: ast.unparse(n.annotation) for n in cls.body if isinstance(n, ast.AnnAssign)}


def _kind(annotation) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    if text.startswith("vtkMRML"):
        return "node"
    for kind in ("bool", "int", "float", "str", "Path"):
        if kind in text:
            return kind
    raise AssertionError(f"unknown parameter type {text}")


def test_slicer_parameter_names_bind_to_parameters_of_the_right_type(uiTree, panel):
    from ScarNetLib.Parameter import ScarNetSettings
    fields = _parameterNodeFields()
    packFields = {f.name: f.type for f in dataclasses.fields(ScarNetSettings)}
    bound = {}
    for widget in uiTree.getroot().iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[widget.get("name")] = (widget.get("class"), prop.findtext("string"))
    assert bound
    for widgetName, (cls, parameter) in bound.items():
        head, _, rest = parameter.partition(".")
        assert head in fields, f"{widgetName}: no parameter '{head}' in ScarNetParameterNode"
        if rest:
            assert fields[head] == "ScarNetSettings" and rest in packFields, f"{widgetName}: no '{parameter}'"
            kind = _kind(str(packFields[rest]))
        else:
            kind = _kind(fields[head])
        assert cls in CONNECTABLE[kind], f"{widgetName} ({cls}) cannot be bound to a {kind} parameter"
    assert {"inputVolume", "outputSegmentation", "settings.device", "settings.useBundledModel",
            "settings.modelPath"} <= {p for _, p in bound.values()}


def test_device_choices_match_parameter_pack():
    from ScarNetLib.Parameter import DEVICE_CHOICES
    assert DEVICE_CHOICES[0] == "auto" and "cpu" in DEVICE_CHOICES and "cuda" in DEVICE_CHOICES


def test_module_script_parses_and_names_its_classes():
    tree = ast.parse(MODULE_SOURCE)
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    assert {"ScarNet", "ScarNetWidget", "ScarNetTest", "ScarNetParameterNode"} <= classes
    assert "slicer.util.loadUI" in MODULE_SOURCE and "connectGui" in MODULE_SOURCE
    # the widget asks for consent; the logic's package (ScarNetLib/Dependencies.py) installs
    assert "pip_install" in (MODULE_DIR / "ScarNetLib" / "Dependencies.py").read_text()
    assert "pip_install" not in MODULE_SOURCE and "confirmOkCancelDisplay" in MODULE_SOURCE


def test_panel_picture_renders(tmp_path):
    import RenderPanel
    path = RenderPanel.render(tmp_path / "panel.png")
    from PySide6 import QtGui
    image = QtGui.QImage(str(path))
    assert image.width() >= 400 and image.height() >= 500
