"""Writing a QuantResult: global/per-slice/per-segment CSVs, the bullseye PNG, classical label volumes.

Every file is written through io.atomic_path, so an interrupted run never leaves a half file.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from ..errors import InputError
from ..io import atomic_path, write_image_atomic
from .bullseye import save_bullseye
from .result import QuantResult


def write_reports(result: QuantResult, out_dir: str | os.PathLike, name: str) -> dict[str, Path]:
    """Write out_dir/{name}_scar.csv (global, one row), {name}_scar_slices.csv, {name}_scar_segments.csv,
    {name}_bullseye.png and, when classical methods ran, {name}_{method}.nii.gz label volumes.

    Returns {"global", "slices", "segments", "bullseye", "labels_<method>"...} -> path.
    """
    if not name or os.sep in name or (os.altsep and os.altsep in name):
        raise InputError(f"report name {name!r} must be a plain file-name stem (no folders)")
    out = Path(out_dir)
    paths = {"global": out / f"{name}_scar.csv", "slices": out / f"{name}_scar_slices.csv",
             "segments": out / f"{name}_scar_segments.csv", "bullseye": out / f"{name}_bullseye.png"}
    for method in result.classical_labels:
        paths[f"labels_{method}"] = out / f"{name}_{method}.nii.gz"
    write_report_files(result, paths, title=name)
    return paths


def paths_beside_table(table: str | os.PathLike, result: QuantResult) -> dict[str, Path]:
    """CLI naming: OUT.csv plus OUT_slices.csv, OUT_segments.csv, OUT_bullseye.png, OUT_<method>.nii.gz."""
    table = Path(table)
    if table.suffix.lower() != ".csv":
        raise InputError(f"--table {table}: give a .csv file name")
    stem = table.with_suffix("")
    paths = {"global": table, "slices": Path(f"{stem}_slices.csv"), "segments": Path(f"{stem}_segments.csv"),
             "bullseye": Path(f"{stem}_bullseye.png")}
    for method in result.classical_labels:
        paths[f"labels_{method}"] = Path(f"{stem}_{method}.nii.gz")
    return paths


def write_report_files(result: QuantResult, paths: dict[str, Path], title: str = "") -> None:
    write_csv([result.global_metrics], paths["global"])
    write_csv(result.per_slice, paths["slices"])
    write_csv(result.per_segment, paths["segments"])
    with atomic_path(paths["bullseye"]) as tmp:
        save_bullseye(result.per_segment, tmp, bullseye_title(result, title), bullseye_notes(result))
    for method, image in result.classical_labels.items():
        write_image_atomic(image, paths[f"labels_{method}"])


def bullseye_title(result: QuantResult, name: str = "") -> str:
    g = result.global_metrics
    head = f"{name}: " if name else ""
    if g.get("scar_percent_lv") is None:
        return f"{head}no LV myocardium labelled"
    return (f"{head}scar {g['scar_percent_lv']:.1f} % of LV myocardium "
            f"({g['scar_ml']:.1f} mL, {g['scar_g']:.1f} g; MVO {g['mvo_ml']:.1f} mL)")


def bullseye_notes(result: QuantResult) -> list[str]:
    if result.global_metrics.get("insertion_point_estimated"):
        return ["RV insertion point ESTIMATED from image orientation: segment positions approximate"]
    return ["RV insertion point given by the user"]


def write_csv(rows: list[dict], path: str | os.PathLike) -> Path:
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            for row in rows:
                writer.writerow({key: _cell(row.get(key)) for key in columns})
    return Path(path)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "" if math.isnan(value) else format(value, ".10g")
    return str(value)
