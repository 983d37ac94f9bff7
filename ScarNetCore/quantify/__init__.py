"""Scar quantification and clinical reporting.

    result = quantify(labels, image=None, density_g_per_ml=1.05, insertion_point=None, classical=False)
    paths = write_reports(result, out_dir, name)

Modules: volumes (mL, g, %), aha (17-segment assignment and its documented rules),
transmurality (radial chords), classical (n-SD, FWHM), bullseye (plots), report (files), cli.
"""
from .aha import SEGMENT_NAMES
from .bullseye import bullseye_figure
from .classical import METHOD_NAMES
from .compute import quantify
from .report import write_reports
from .result import QuantResult

__all__ = ["quantify", "write_reports", "QuantResult", "bullseye_figure", "SEGMENT_NAMES", "METHOD_NAMES"]
