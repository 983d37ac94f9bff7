"""Scar quantification: pure computation, no files and no command line (those live in io/outputs.py, cli.py).

    result = quantify(labels, image=None, density_g_per_ml=1.05, insertion_point=None, classical=False)

Modules: measures (mL, g, %), aha (17-segment assignment and its documented rules),
transmurality (radial chords), classical (n-SD, FWHM), bullseye (plots).
"""
from .aha import SEGMENT_NAMES
from .bullseye import bullseye_figure
from .classical import METHOD_NAMES
from .compute import quantify
from .result import QuantResult

__all__ = ["quantify", "QuantResult", "bullseye_figure", "SEGMENT_NAMES", "METHOD_NAMES"]
