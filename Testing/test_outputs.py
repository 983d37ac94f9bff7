"""The output layer through `scarnet segment`: the cohort table, --resume after a kill, --part/--parts,
the run record's checksums and the DICOM SEG round trip.

The tiny seeded cascade (conftest model_path) segments two-slice extracts: these tests check how
results are recorded and written, not what the labels are.
"""
from __future__ import annotations

import datetime
import functools
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ScarNetCore import __version__
from ScarNetCore.cli import main
from ScarNetCore.io.files import sha256_of
from ScarNetCore.labels import TERMINOLOGY
from ScarNetCore.io.outputs import LOCK, SUFFIXES
from ScarNetCore.io.files import read_csv

COMMON = ["--device", "cpu", "--precision", "fp32"]


def segment(*args) -> int:
    return main(["segment", *[str(a) for a in args], *COMMON])


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, model_path, positive_slab, negative_slab):
    """One cohort run over a good, a broken and a good study; returns (inputs, out folder, exit status)."""
    folder = tmp_path_factory.mktemp("cohort")
    sitk.WriteImage(positive_slab, str(folder / "pos.nii.gz"))
    sitk.WriteImage(negative_slab, str(folder / "neg.nii.gz"))
    (folder / "broken.nii.gz").write_bytes(os.urandom(2048))
    inputs = [folder / "pos.nii.gz", folder / "broken.nii.gz", folder / "neg.nii.gz"]
    out = folder / "out"
    return inputs, out, segment(*inputs, "-o", out, "--model", model_path)


def test_cohort_table_records_every_study_and_the_failed_one(cohort):
    inputs, out, rc = cohort
    assert rc == 1
    rows = read_csv(out / "cohort.csv")
    assert [r["input"] for r in rows] == [str(p) for p in inputs]
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    assert "not a readable image" in rows[1]["error"] and rows[1]["scar_ml"] == ""
    columns = list(rows[0])
    assert columns[:3] == ["input", "status", "error"] and columns[-1] == "qc_flags"
    for row, name in ((rows[0], "pos"), (rows[2], "neg")):
        (summary,) = read_csv(out / f"{name}_scar.csv")
        assert row["error"] == "" and {k: row[k] for k in summary} == summary  # the same numbers, as written
        assert "qc_flags" in summary
    assert not list(out.glob("broken*"))


def test_run_record_holds_the_checksums(cohort, model_path):
    inputs, out, _ = cohort
    record = json.loads((out / "pos_run.json").read_text())
    assert record["scarnet_version"] == __version__
    assert record["model"]["sha256"] == sha256_of(model_path) and record["model"]["name"] == "test-random"
    assert record["model"]["architecture"] == "ScarNetCascade"
    assert record["inputs"] == [{"path": str(inputs[0]), "sha256": sha256_of(inputs[0])}]
    assert record["device"] == "cpu" and record["precision"] == "fp32"
    assert record["options"]["batch_size"] == 8 and record["options"]["dicom_seg"] is False
    started, finished = (datetime.datetime.fromisoformat(record[k]) for k in ("started", "finished"))
    assert started.tzinfo is not None and started <= finished
    assert isinstance(record["qc_flags"], list) and isinstance(record["warnings"], list)
    assert record["confidence"] is None or 0.0 <= record["confidence"] <= 1.0
    names = [f"pos{SUFFIXES[k]}" for k in ("labels", "summary", "slices", "segments", "bullseye")]
    assert sorted(record["outputs"]) == sorted(names)


def test_resume_redoes_only_what_a_kill_left_incomplete(cohort, model_path, tmp_path):
    inputs, done, _ = cohort
    out = tmp_path / "out"
    shutil.copytree(done, out)
    # killed while writing neg: its labels and tables are there, its run record is not; the cohort
    # table holds only the rows written before
    (out / "neg_run.json").unlink()
    rows = read_csv(out / "cohort.csv")
    (out / "cohort.csv").unlink()
    for path in out.iterdir():
        os.utime(path, ns=(0, 0))
    assert segment(*inputs, "-o", out, "--model", model_path, "--resume") == 1  # broken fails again
    assert all(p.stat().st_mtime_ns == 0 for p in out.glob("pos*"))              # complete: skipped
    assert (out / "neg_run.json").is_file() and (out / "neg_seg.nii.gz").stat().st_mtime_ns != 0
    again = read_csv(out / "cohort.csv")
    assert [r["status"] for r in again] == ["ok", "failed", "ok"]
    assert again[0] == rows[0]  # the skipped study's row is rebuilt from its files
    # without --resume or --overwrite, nothing is replaced
    assert segment(inputs[0], "-o", out, "--model", model_path) == 1
    assert "already exists" in read_csv(out / "cohort.csv")[0]["error"]


def test_parts_write_their_own_tables(cohort, model_path, tmp_path, capsys):
    inputs, done, _ = cohort
    out = tmp_path / "out"
    shutil.copytree(done, out)
    before = (out / "cohort.csv").read_bytes()
    # part 0 of 2 takes inputs 0 and 2 (both complete, so --resume skips them), part 1 the broken one
    assert segment(*inputs, "-o", out, "--model", model_path, "--resume", "--part", "0", "--parts", "2") == 0
    assert segment(*inputs, "-o", out, "--model", model_path, "--part", "1", "--parts", "2") == 1
    assert [r["input"] for r in read_csv(out / "cohort.part-0-of-2.csv")] == [str(inputs[0]), str(inputs[2])]
    assert [r["status"] for r in read_csv(out / "cohort.part-1-of-2.csv")] == ["failed"]
    assert (out / "cohort.csv").read_bytes() == before
    capsys.readouterr()
    assert segment(*inputs, "-o", out, "--model", model_path, "--part", "2", "--parts", "2") == 2
    assert "--part K and --parts N" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- DICOM SEG
def write_dicom_series(folder: Path, image: sitk.Image) -> list[Path]:
    """An oblique MR series of single-frame files with the image's voxels (dicom_series.write_series).

    Files are named against the slice order, so a reader that went by name would stack them wrongly."""
    from dicom_series import write_series
    pixels = np.clip(sitk.GetArrayFromImage(image), 0, 4095).astype(np.uint16)
    return write_series(folder, pixels, spacing=image.GetSpacing())


def test_dicom_seg_round_trip(tmp_path, model_path, positive_slab):
    import pydicom

    files = write_dicom_series(tmp_path / "lge", positive_slab)
    out = tmp_path / "out"
    assert segment(tmp_path / "lge", "-o", out, "--model", model_path, "--dicom-seg") == 0
    labels = sitk.ReadImage(str(out / "lge_seg.nii.gz"))
    array = sitk.GetArrayFromImage(labels)
    seg = pydicom.dcmread(out / "lge_seg.dcm")
    sources = [pydicom.dcmread(f) for f in files]

    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} == \
        {s.SOPInstanceUID for s in sources}
    # the four segments with the Slicer module's codes (labels.TERMINOLOGY), numbered as the labels
    for item in seg.SegmentSequence:
        name, category, type_ = TERMINOLOGY[item.SegmentNumber]
        assert item.SegmentLabel == name
        got_category, got_type = item.SegmentedPropertyCategoryCodeSequence[0], item.SegmentedPropertyTypeCodeSequence[0]
        assert (got_category.CodingSchemeDesignator, got_category.CodeValue, got_category.CodeMeaning) == category
        assert (got_type.CodingSchemeDesignator, got_type.CodeValue, got_type.CodeMeaning) == type_
    assert sorted(item.SegmentNumber for item in seg.SegmentSequence) == sorted(TERMINOLOGY)

    # geometry: the SEG's plane and frames coincide with the NIfTI labels, voxel for voxel
    shared = seg.SharedFunctionalGroupsSequence[0]
    orientation = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    direction = np.array(labels.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(orientation, [*direction[:, 0], *direction[:, 1]], atol=1e-5)
    np.testing.assert_allclose(np.array(shared.PixelMeasuresSequence[0].PixelSpacing, float),
                               labels.GetSpacing()[1::-1], rtol=1e-6)
    frames = seg.pixel_array.reshape(-1, *array.shape[1:])
    assert len(frames) == len(TERMINOLOGY) * len(array)  # every slice of every segment, empty ones too
    positions = [labels.TransformIndexToPhysicalPoint((0, 0, k)) for k in range(len(array))]
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        number = group.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        position = np.array(group.PlanePositionSequence[0].ImagePositionPatient, float)
        k = int(np.argmin([np.linalg.norm(position - p) for p in positions]))
        np.testing.assert_allclose(position, positions[k], atol=1e-3)
        np.testing.assert_array_equal(frame.astype(bool), array[k] == number)

    # the run record names every file of the series with its checksum, and the SEG among the outputs
    record = json.loads((out / "lge_run.json").read_text())
    assert sorted((e["path"], e["sha256"]) for e in record["inputs"]) == sorted((str(f), sha256_of(f)) for f in files)
    assert "lge_seg.dcm" in record["outputs"]


def test_dicom_seg_needs_a_dicom_input(tmp_path, model_path, positive_slab, capsys):
    sitk.WriteImage(positive_slab, str(tmp_path / "case.nii.gz"))
    assert segment(tmp_path / "case.nii.gz", "-o", tmp_path / "out", "--model", model_path, "--dicom-seg") == 0
    assert not list((tmp_path / "out").glob("*.dcm"))
    assert "--dicom-seg needs a DICOM series folder" in capsys.readouterr().out


def test_a_failed_write_leaves_no_partial_study_and_links_are_not_followed(tmp_path, model_path, positive_slab,
                                                                           monkeypatch, capsys):
    """A full disk while a study is written: one-line error, none of that study's files kept, and a
    rerun then succeeds. A link planted in the output folder is replaced, never written through."""
    import errno

    from ScarNetCore.io import outputs
    source = tmp_path / "lge.nii.gz"
    sitk.WriteImage(positive_slab, str(source))
    out = tmp_path / "out"

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(outputs, "bullseye_figure", disk_full)  # after the labels and three CSVs are written
    assert main(["segment", str(source), "-o", str(out), "--model", str(model_path), *COMMON]) == 1
    err = capsys.readouterr().err
    line = next(l for l in err.splitlines() if "No space left on device" in l)
    assert "free disk space" in line and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir() if p.name != LOCK) == ["cohort.csv"]
    monkeypatch.undo()

    outside = tmp_path / "outside.txt"
    outside.write_text("user's file\n", encoding="utf-8")
    (out / "lge_scar.csv").symlink_to(outside)
    assert main(["segment", str(source), "-o", str(out), "--model", str(model_path), "--overwrite", *COMMON]) == 0
    assert outside.read_text(encoding="utf-8") == "user's file\n"
    assert not (out / "lge_scar.csv").is_symlink() and read_csv(out / "lge_scar.csv")


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "ScarNetCore.cli", "segment", *[str(a) for a in args], *COMMON]


def test_two_processes_on_one_folder_take_turns(tmp_path, model_path, positive_slab, negative_slab):
    """Two `scarnet segment` runs started together into one folder, both writing a study named lge:
    both pass the early overwrite check, so only the check under the folder lock keeps the study's
    files from mixing two runs. Exactly one run writes it, the other is refused, and the cohort table
    keeps both rows (no last-writer-wins)."""
    sources = []
    for folder, image in (("a", positive_slab), ("b", negative_slab)):
        (tmp_path / folder).mkdir()
        sitk.WriteImage(image, str(tmp_path / folder / "lge.nii.gz"))
        sources.append(tmp_path / folder / "lge.nii.gz")
    out = tmp_path / "out"
    runs = [subprocess.Popen(_cli(source, "-o", out, "--model", model_path), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for source in sources]
    errors = [run.communicate(timeout=300)[1] for run in runs]
    codes = [run.returncode for run in runs]
    assert sorted(codes) == [0, 1], errors
    loser = errors[codes.index(1)]
    assert "already exists" in loser and "Traceback" not in loser
    winner = sources[codes.index(0)]
    record = json.loads((out / "lge_run.json").read_text(encoding="utf-8"))
    assert record["inputs"] == [{"path": str(winner), "sha256": sha256_of(winner)}]
    assert all((out / name).is_file() for name in record["outputs"])
    rows = {r["input"]: r["status"] for r in read_csv(out / "cohort.csv")}
    assert rows == {str(winner): "ok", str(sources[codes.index(1)]): "failed"}


@functools.cache
def _namespace_available() -> bool:
    """Asked once, when a test needs it, not at every collection."""
    if not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs none /mnt"],
                          capture_output=True).returncode == 0


@pytest.mark.parametrize("mount_options, status, message", [
    ("ro", 2, "cannot write into this folder (Read-only file system); choose a writable -o folder"),
    ("size=24k", 1, "No space left on device"),   # room for the lock and cohort table, not the whole study
])
def test_read_only_and_full_folders_are_real_errors(tmp_path, model_path, positive_slab, mount_options, status,
                                                     message):
    """A real read-only folder and a real full disk (a tmpfs mounted in a private mount namespace; the
    tests run as root, for whom chmod makes nothing read-only): one-line error, no study file left."""
    if not _namespace_available():
        pytest.skip("needs user and mount namespaces (unshare -rm) to mount a real read-only or full folder")
    source = tmp_path / "lge.nii.gz"
    sitk.WriteImage(positive_slab, str(source))
    out = tmp_path / "out"
    out.mkdir()
    command = " ".join(shlex.quote(a) for a in _cli(source, "-o", out, "--model", model_path))
    script = (f"mount -t tmpfs -o {mount_options} none {shlex.quote(str(out))} && "
              f"{{ {command}; echo status=$?; ls -A {shlex.quote(str(out))}; }}")
    run = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    lines = run.stdout.splitlines()
    assert any(l.startswith("status=") for l in lines), run.stderr  # the mount worked and the command ran
    code = next(int(l.split("=")[1]) for l in lines if l.startswith("status="))
    left = lines[[l.startswith("status=") for l in lines].index(True) + 1:]
    assert code == status, run.stderr
    assert message in run.stderr and "Traceback" not in run.stderr
    assert not [name for name in left if name.startswith("lge")], left


def test_cohort_rows_of_two_writers_are_merged_and_the_guard_is_rechecked(tmp_path):
    """Deterministic half of the two-process test: two tables on one folder add rows in turn and both
    survive; a study written between a caller's early check and its write is not overwritten."""
    from ScarNetCore.io import outputs
    from ScarNetCore.errors import ScarNetError
    from ScarNetCore.quantify import quantify

    first, second = outputs.CohortTable(tmp_path), outputs.CohortTable(tmp_path)
    first.add("a.nii.gz", "ok", summary={"scar_ml": 1.0})
    second.add("b.nii.gz", "failed", "reason")
    first.add("c.nii.gz", "ok", summary={"scar_ml": 2.0})
    assert [r["input"] for r in read_csv(tmp_path / "cohort.csv")] == ["a.nii.gz", "b.nii.gz", "c.nii.gz"]
    (tmp_path / "cohort.csv").write_text("name,value\nx,1\n", encoding="utf-8")  # some other table
    with pytest.raises(ScarNetError, match="not a ScarNet cohort table"):
        first.add("d.nii.gz", "ok")

    labels = sitk.Image(8, 8, 2, sitk.sitkUInt8)
    report = quantify(labels)
    outputs.refuse_overwrite(tmp_path, "case", overwrite=False)       # the early check passes ...
    outputs.write_study(tmp_path, "case", report, outputs.run_record([], {}, outputs.now()))  # ... another run writes
    before = (tmp_path / "case_scar.csv").read_bytes()
    with pytest.raises(ScarNetError, match="already exists"):
        outputs.write_study(tmp_path, "case", report, outputs.run_record([], {}, outputs.now()))
    assert (tmp_path / "case_scar.csv").read_bytes() == before
