"""The result object handed to the CLI, the Slicer module and the report writers."""
from __future__ import annotations

from dataclasses import dataclass, field

import SimpleITK as sitk


@dataclass
class QuantResult:
    """Numbers from one label volume.

    global_metrics: one flat dict (one CSV row). Percentages are None where the whole is empty.
    per_slice: one dict per slice along the acquisition axis (slice_index, level, position …).
    per_segment: one dict per AHA segment 1..17, in order.
    classical_labels: method name ("2SD", "3SD", "5SD", "6SD", "FWHM") -> label image on the
        input grid; empty unless classical methods were run.
    segment_labels: AHA segment number (1..17) of each myocardial voxel, 0 elsewhere, on the
        input grid, so viewers can show which voxels fed which segment.
    warnings: things the reader of the numbers should know (estimated insertion point, …).
    """
    global_metrics: dict
    per_slice: list[dict]
    per_segment: list[dict]
    classical_labels: dict[str, sitk.Image] = field(default_factory=dict)
    segment_labels: sitk.Image | None = None
    warnings: list[str] = field(default_factory=list)
