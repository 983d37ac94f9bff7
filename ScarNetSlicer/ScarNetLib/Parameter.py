"""Every user setting of a ScarNet run, in one parameter pack.

In Slicer this is a real ``@parameterPack`` (typed, validated, saved in the scene, bound to the GUI
with ``connectGui``); without Slicer's GUI layer (headless, tests) the same class is a dataclass
with the same fields, defaults and range checks, so logic and widget share one definition.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Annotated, Optional

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
BATCH_SIZE_RANGE = (1, 64)
DENSITY_RANGE = (0.5, 2.0)  # g/mL; 1.05 is the conventional myocardial density

try:  # real Slicer
    from slicer.parameterNodeWrapper import Choice, WithinRange, parameterPack
except ImportError:  # slicer-core / plain Python: same declarations, checked by validate()
    class Choice:  # noqa: D401 - marker mirroring slicer.parameterNodeWrapper.Choice
        def __init__(self, choices):
            self.choices = tuple(choices)

    class WithinRange:
        def __init__(self, minimum, maximum):
            self.minimum, self.maximum = minimum, maximum

    def parameterPack(cls):
        return dataclasses.dataclass(cls)


@parameterPack
class ScarNetSettings:
    # Model: the bundled default unless the user points at a checkpoint file.
    useBundledModel: bool = True
    modelPath: pathlib.Path = pathlib.Path()
    device: Annotated[str, Choice(DEVICE_CHOICES)] = "auto"
    batchSize: Annotated[int, WithinRange(*BATCH_SIZE_RANGE)] = 8
    densityGPerMl: Annotated[float, WithinRange(*DENSITY_RANGE)] = 1.05
    # Headless only: allow writing into a segmentation the user edited (the GUI asks instead).
    overwriteEdited: bool = False


def modelPathOrNone(settings: ScarNetSettings) -> Optional[str]:
    """None selects the bundled default model (ScarNetCore resolves it)."""
    if settings.useBundledModel:
        return None
    path = str(settings.modelPath or "")
    if path in ("", "."):
        raise ValueError("No model file chosen: pick a ScarNet checkpoint file or tick 'Use bundled model'.")
    return path


def validate(settings: ScarNetSettings) -> None:
    """Range/choice checks (Slicer's parameterPack does these on assignment; here they run explicitly)."""
    if settings.device not in DEVICE_CHOICES:
        raise ValueError(f"device must be one of {', '.join(DEVICE_CHOICES)}, not {settings.device!r}")
    lo, hi = BATCH_SIZE_RANGE
    if not (lo <= int(settings.batchSize) <= hi):
        raise ValueError(f"batch size must be within {lo}..{hi}, not {settings.batchSize}")
    lo, hi = DENSITY_RANGE
    if not (lo <= float(settings.densityGPerMl) <= hi):
        raise ValueError(f"tissue density must be within {lo}..{hi} g/mL, not {settings.densityGPerMl}")
