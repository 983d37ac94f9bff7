"""Developer Reload: make the next import read ScarNet's packages from disk again.

Slicer's Reload re-runs ScarNet.py only; the packages it imports stay cached in sys.modules, so edits
to them would not take effect until Slicer restarts.
"""
from __future__ import annotations

import sys

PACKAGES = ("ScarNetLib", "ScarNetCore")


def forgetPackages(packages=PACKAGES) -> list:
    """Drop `packages` and their submodules from sys.modules; returns the names dropped."""
    names = [name for name in sys.modules if name.split(".")[0] in packages]
    for name in names:
        del sys.modules[name]
    return names
