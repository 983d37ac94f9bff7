"""`quantify`: every number of the report from one label volume (and optionally its image)."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..io.validation import checked_voxels, label_voxels
from ..labels import myocardium_mask
from ..pipeline.stack import join_slices, split_slices
from . import aha
from .classical import classical_methods
from .geometry import StackGeometry
from .inputs import as_volume, check_density, check_point, check_same_grid
from .measures import ML_PER_MM3, classical_global, global_metrics, per_segment_rows, per_slice_rows
from .result import QuantResult
from .transmurality import chords as measure_chords


def quantify(labels: sitk.Image, image: sitk.Image | None = None, density_g_per_ml: float = 1.05,
             insertion_point: tuple[float, float, float] | None = None, classical: bool = False,
             remote_mask: sitk.Image | None = None) -> QuantResult:
    """Quantify scar in a label volume (0 background, 1 blood pool, 2 myocardium, 3 scar, 4 MVO).

    labels: 2-D or 3-D integer-valued label image, any spacing and direction matrix.
    image: the LGE image on the same grid (needed for `classical`).
    insertion_point: anterior RV insertion point, physical LPS mm (SimpleITK convention; Slicer's
        RAS needs X and Y negated). None: estimated from the image orientation and flagged.
    classical: also run n-SD (2, 3, 5, 6) and FWHM inside the labelled myocardium.
    remote_mask: optional healthy-myocardium reference for n-SD (non-zero voxels, same grid);
        without it the rule in classical.py picks one.
    Raises InputError for anything the caller must fix.
    """
    if not isinstance(labels, sitk.Image):
        raise InputError(f"labels must be a SimpleITK image, got {type(labels).__name__}")
    density = check_density(density_g_per_ml)
    labels3, was_2d = as_volume(labels, "labels")
    label_zyx = label_voxels(labels3, "labels")
    image_zyx = remote_zyx = None
    if image is not None:
        image3, _ = as_volume(image, "image")
        check_same_grid(labels3, image3, "the labels", "the image")
        image_zyx = checked_voxels(image3, "image").astype(np.float64)
    if classical and image_zyx is None:
        raise InputError("classical methods (n-SD, FWHM) need the LGE image: give the image the labels were drawn on")
    if remote_mask is not None:
        if not classical:
            raise InputError("a remote-myocardium mask is only used by the classical methods: ask for them too")
        remote3, _ = as_volume(remote_mask, "remote mask")
        check_same_grid(labels3, remote3, "the labels", "the remote mask")
        remote_zyx = sitk.GetArrayFromImage(remote3) != 0

    geom = StackGeometry.from_image(labels3, slice_axis=2 if was_2d else None)

    def to_stack(array_zyx):
        return split_slices(array_zyx, labels3, geom.array_axis)[0]

    def to_image(stack_array):
        return _to_image(join_slices(stack_array, geom.array_axis), labels, labels3, was_2d)

    stack = to_stack(label_zyx)
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
        remote_stack = to_stack(remote_zyx) if remote_zyx is not None else None
        found = classical_methods(to_stack(image_zyx), stack, segments, remote_stack, inplane_axes=(1, 2))
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


def _to_image(array_zyx: np.ndarray, original: sitk.Image, volume: sitk.Image, was_2d: bool) -> sitk.Image:
    out = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx[0] if was_2d else array_zyx).astype(np.uint8))
    out.CopyInformation(original if was_2d else volume)
    return out
