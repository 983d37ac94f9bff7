"""`quantify`: every number of the report from one label volume (and optionally its image)."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..labels import myocardium_mask
from ..pipeline.stack import LabelStack
from . import aha
from .classical import classical_methods
from .geometry import StackGeometry
from .inputs import check_density, check_point, on_grid, stack_inputs
from .measures import ML_PER_MM3, classical_global, global_metrics, per_segment_rows, per_slice_rows
from .result import QuantResult
from .transmurality import chords as measure_chords


def quantify(labels: sitk.Image | LabelStack, image: sitk.Image | None = None, density_g_per_ml: float = 1.05,
             insertion_point: tuple[float, float, float] | None = None, classical: bool = False,
             remote_mask: sitk.Image | None = None) -> QuantResult:
    """Quantify scar in a label volume (0 background, 1 blood pool, 2 myocardium, 3 scar, 4 MVO).

    labels: 2-D or 3-D integer-valued label image, any spacing and direction matrix; or a LabelStack
        (Segmenter.segment's `label_stack`), read in the layout it was segmented in, with no image
        between: its stack's slices (float32) are then the LGE image, and `image` is not given.
    image: the LGE image on the same grid (needed for `classical`).
    insertion_point: anterior RV insertion point, physical LPS mm (SimpleITK convention; Slicer's
        RAS needs X and Y negated). None: estimated from the image orientation and flagged.
    classical: also run n-SD (2, 3, 5, 6) and FWHM inside the labelled myocardium.
    remote_mask: optional healthy-myocardium reference for n-SD (non-zero voxels, same grid);
        without it the rule in classical.py picks one.
    Raises InputError for anything the caller must fix.
    """
    density = check_density(density_g_per_ml)
    base, stack, image_stack = stack_inputs(labels, image)  # base: the Stack the labels lie on
    if classical and image_stack is None:
        raise InputError("classical methods (n-SD, FWHM) need the LGE image: give the image the labels were drawn on")
    remote_stack = None
    if remote_mask is not None:
        if not classical:
            raise InputError("a remote-myocardium mask is only used by the classical methods: ask for them too")
        remote_stack = on_grid(base, remote_mask, "remote mask") != 0

    geom = StackGeometry.of(base)
    was_2d = base.axis is None

    def to_image(stack_array):
        return base.to_image(stack_array.astype(np.uint8))

    frame = aha.LVFrame.of(stack, geom)
    axis = frame.axis
    point = check_point(insertion_point, was_2d)
    insertion = aha.insertion_from_point(point, frame) if point is not None else aha.estimate_insertion(frame)
    frame = frame.with_insertion(insertion.angle_deg)
    segments = aha.segment_map(frame)
    chord_set = measure_chords(frame, segments)

    voxel_ml = geom.voxel_volume_mm3 * ML_PER_MM3
    warnings = list(insertion.warnings)
    metrics = global_metrics(stack, voxel_ml, density)
    if not metrics["myocardium_voxels"]:
        warnings.append("the labels hold no myocardium (2, 3 or 4): every volume and percentage is empty")
    metrics.update({
        "insertion_point_estimated": insertion.estimated,
        "insertion_point_x": float(insertion.point[0]), "insertion_point_y": float(insertion.point[1]),
        "insertion_point_z": float(insertion.point[2]),
        "apex_end": "high slice index" if axis.apex_at_high_index else "low slice index",
        "apex_rule": axis.apex_rule,
        "slice_axis": geom.slice_axis, "slice_count": geom.n_slices,
        "slice_thickness_mm": geom.slice_thickness_mm, "input_2d": was_2d,
        "segments_covered": int(len(np.unique(segments[segments > 0]))),
    })

    classical_stacks: dict[str, np.ndarray] = {}
    classical_images: dict[str, sitk.Image] = {}
    if classical:
        found = classical_methods(image_stack.astype(np.float64), stack, segments, remote_stack, inplane_axes=(1, 2))
        warnings.extend(found.warnings)
        classical_stacks = found.labels
        metrics.update({"remote_rule": found.remote.rule, "remote_segment": found.remote.segment,
                        "remote_voxels": found.remote.voxels, "remote_mean": found.remote.mean,
                        "remote_sd": found.remote.sd, "fwhm_peak": found.fwhm_peak})
        for name, arr in classical_stacks.items():
            metrics[f"threshold_{name}"] = found.thresholds[name]
            metrics.update(classical_global(name, arr, metrics["myocardium_voxels"], voxel_ml, density))
            classical_images[name] = to_image(arr)

    rows_slice = per_slice_rows(stack, geom, axis.levels, voxel_ml, density, classical_stacks)
    rows_segment = per_segment_rows(stack, segments, chord_set, voxel_ml, density, classical_stacks)
    if myocardium_mask(stack).any() and not metrics["segments_covered"]:
        warnings.append("no myocardial voxel could be assigned to an AHA segment")
    return QuantResult(global_metrics=metrics, per_slice=rows_slice, per_segment=rows_segment,
                       classical_labels=classical_images,
                       segment_labels=to_image(segments),
                       warnings=warnings)

