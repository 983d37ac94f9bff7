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
                "qMRMLTableView": "QTableView", "qMRMLWidget": "QWidget", "qSlicerMarkupsPlaceWidget": "QWidget"}

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
    "insertionPointPlaceWidget": "qSlicerMarkupsPlaceWidget",
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


def _connections(uiTree) -> set:
    return {tuple(c.findtext(k) for k in ("sender", "signal", "receiver", "slot"))
            for c in uiTree.getroot().iter("connection")}


def test_every_mrml_widget_gets_the_scene(uiTree):
    """Slicer's loadUI + setMRMLScene on the root reach a node selector only through a .ui connection;
    without one every combo box stays empty in the real application."""
    root = uiTree.getroot().find("widget")
    mrmlWidgets = [w.get("name") for w in root.iter("widget")
                   if w is not root and w.get("class").startswith(("qMRML", "qSlicer"))]
    assert len(mrmlWidgets) >= 7  # five node selectors, the table view, the place widget
    connections = _connections(uiTree)
    for name in mrmlWidgets:
        assert (root.get("name"), "mrmlSceneChanged(vtkMRMLScene*)", name, "setMRMLScene(vtkMRMLScene*)") \
            in connections, f"{name} never gets the scene: connect mrmlSceneChanged to its setMRMLScene in ScarNet.ui"


def test_insertion_point_can_be_placed_by_clicking(uiTree, panel):
    """The place widget follows the selected point list, so one click on 'Place' then one in a view sets it."""
    assert ("insertionPointSelector", "currentNodeChanged(vtkMRMLNode*)", "insertionPointPlaceWidget",
            "setCurrentNode(vtkMRMLNode*)") in _connections(uiTree)
    assert panel.findChild(QtCore.QObject, "insertionPointPlaceWidget") is not None


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


def test_every_device_choice_is_one_the_engine_takes():
    """The device parameter offers what the engine accepts: each choice passes the settings' check and
    is a device ScarNetCore knows (on this machine it resolves, or says the hardware is missing, not
    that the name is unknown); every device the engine can find is a choice; the default is automatic;
    anything else is refused."""
    from ScarNetCore.pipeline.device import available_devices, resolve_device
    from ScarNetLib.Parameter import DEVICE_CHOICES, ScarNetSettings, validate
    assert ScarNetSettings().device == "auto"
    for choice in DEVICE_CHOICES:
        validate(ScarNetSettings(device=choice))
        try:
            resolve_device(choice)
        except ValueError as exc:
            assert choice not in available_devices() and "choose" not in str(exc), exc
    assert set(available_devices()) <= set(DEVICE_CHOICES)
    with pytest.raises(ValueError, match="device must be one of"):
        validate(ScarNetSettings(device="tpu"))


def test_panel_picture_renders(tmp_path):
    import RenderPanel
    path = RenderPanel.render(tmp_path / "panel.png")
    from PySide6 import QtGui
    image = QtGui.QImage(str(path))
    assert image.width() >= 400 and image.height() >= 500


# ------------------------------------------------------------------- what the real Slicer app needs
# Runs ScarNet.py as Slicer would load it, in a Python that reports the version given in argv[2].
VERSION_SCRIPT = r"""
import runpy, sys
version = tuple(int(part) for part in sys.argv[2].split("."))
sys.version_info, sys.version = version + ("final", 0), sys.argv[2] + " (main)"
try:
    runpy.run_path(sys.argv[1], run_name="ScarNet")
except BaseException as exc:
    print(f"{type(exc).__name__}: {exc}")
print("loaded", sorted({name.split(".")[0] for name in sys.modules if name.startswith("ScarNet")}))
"""


def test_module_refuses_an_old_slicer_in_one_line_before_anything_newer_runs():
    """ScarNet.py must parse on Slicer 5.6-5.8's Python 3.9 and, there, stop with the version message before it
    imports ScarNetLib/ScarNetCore (which need 3.10+); the minimum is pyproject's requires-python."""
    import subprocess
    import tomllib
    ast.parse(MODULE_SOURCE, feature_version=(3, 9))
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires.startswith(">=")
    major, minor = (int(part) for part in requires[2:].split("."))

    def load(version: str) -> list:
        out = subprocess.run([sys.executable, "-c", VERSION_SCRIPT, str(MODULE_DIR / "ScarNet.py"), version],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.splitlines()

    old = load(f"{major}.{minor - 1}.18")
    assert old == [f"ImportError: ScarNet needs 3D Slicer 5.10 or later (Python {major}.{minor}+); "
                   f"this Slicer runs Python {major}.{minor - 1}.18.", "loaded []"], old
    supported = load(f"{major}.{minor}.0")  # passes the check (and stops later here, where Slicer's qt is absent)
    assert not any("needs 3D Slicer" in line for line in supported), supported


def test_forgetting_packages_makes_the_next_import_read_them_again(tmp_path):
    import subprocess
    code = f"""
import sys
sys.path[:0] = [{str(ROOT)!r}, {str(MODULE_DIR)!r}]
import ScarNetLib.Dependencies, ScarNetCore.labels
old = ScarNetLib.Dependencies, ScarNetCore.labels
from ScarNetLib.Reload import forgetPackages
dropped = forgetPackages()
assert "ScarNetLib.Dependencies" in dropped and "ScarNetCore.labels" in dropped, dropped
assert not [n for n in sys.modules if n.split(".")[0] in ("ScarNetLib", "ScarNetCore")]
import ScarNetLib.Dependencies, ScarNetCore.labels
assert (ScarNetLib.Dependencies, ScarNetCore.labels) != old and ScarNetLib.Dependencies is not old[0]
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


def test_every_module_file_is_installed_by_cmake():
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text()
    for path in sorted((MODULE_DIR / "ScarNetLib").glob("*.py")):
        assert f"ScarNetLib/{path.name}" in cmake, f"{path.name} is not in MODULE_PYTHON_SCRIPTS"


def _cmakeSet(text: str, name: str) -> str:
    match = re.search(rf'set\({name}\s+"([^"]*)"\)', text)
    assert match, f"{name} is not set in CMakeLists.txt"
    return match.group(1)


def test_extension_is_ready_for_the_extensions_index():
    """The checks Slicer's ExtensionsIndex runs on a new entry (scripts/check_description_files.py), and
    what the catalogue shows: every URL names a file this repository has at that path."""
    import json
    from urllib.parse import urlsplit
    entryPath = ROOT / "Resources" / "ExtensionIndex" / "ScarNet.json"
    entry = json.loads(entryPath.read_text())
    cmake = (ROOT / "CMakeLists.txt").read_text()
    project = re.findall(r"project\s*\(\s*([^\s\)]+)", cmake, re.IGNORECASE)[0]
    assert project == entryPath.stem == "ScarNet"  # project() name = extension name
    url = urlsplit(entry["scm_url"])
    assert url.scheme == "https" and url.netloc == "github.com" and url.path.endswith(".git")
    owner, repository = url.path[1:-len(".git")].split("/")
    assert repository.startswith("Slicer"), "the ExtensionsIndex wants a Slicer-prefixed repository name"
    assert entry["category"] == _cmakeSet(cmake, "EXTENSION_CATEGORY") == "Cardiac"  # an accepted category
    assert set(entry) <= {"$schema", "build_dependencies", "build_subdirectory", "category", "scm_revision",
                          "scm_type", "scm_url", "tier", "enabled"}
    assert entry["build_dependencies"] == [_cmakeSet(cmake, "EXTENSION_DEPENDS")] == ["PyTorch"]
    assert (ROOT / "LICENSE").is_file()
    description = _cmakeSet(cmake, "EXTENSION_DESCRIPTION")
    assert 50 < len(description) < 500 and ";" not in description and "\n" not in description  # ';' splits a CMake list
    assert _cmakeSet(cmake, "EXTENSION_HOMEPAGE").startswith(f"https://github.com/{owner}/{repository}")
    for name in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        prefix = f"https://raw.githubusercontent.com/{owner}/{repository}/{entry['scm_revision']}/"
        for address in _cmakeSet(cmake, name).split():
            assert address.startswith(prefix), address
            assert (ROOT / address[len(prefix):]).is_file(), f"{name}: no file at {address[len(prefix):]}"
    from PySide6 import QtGui
    icon = QtGui.QImage(str(MODULE_DIR / "Resources" / "Icons" / "ScarNet.png"))
    assert (icon.width(), icon.height()) == (128, 128)  # the catalogue's icon size
