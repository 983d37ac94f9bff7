"""DICOM as it comes from scanners and anonymisers (issue 32), and a study written whole or not at all.

Series are written here with pydicom (single-frame MR, oblique), converted to one multi-frame image
with highdicom, compressed with pydicom's encoders, or taken from pydicom's own test files. Each case
gives a result on the right grid or one line saying what to do. The tiny seeded cascade (conftest
model_path) segments them: these tests check geometry and files, not what the labels are.
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from ScarNetCore.io import outputs
from ScarNetCore.cli import main
from ScarNetCore.errors import InputError
from ScarNetCore.io.reading import dicom_series_files, image_from_affine, read_image
from ScarNetCore.io.outputs import EARLIER, LOCK, STAGING
from ScarNetCore.io.files import read_csv
from ScarNetCore.pipeline.stack import LabelStack

from dicom_series import COLUMN, ROW, write_series

COMMON = ["--device", "cpu", "--precision", "fp32", "--batch-size", "4"]
STUDY_FILES = ["lge_bullseye.png", "lge_run.json", "lge_scar.csv", "lge_scar_segments.csv", "lge_scar_slices.csv",
               "lge_seg.nii.gz"]
NORMAL = np.cross(ROW, COLUMN)


def segment(*args) -> int:
    return main(["segment", *[str(a) for a in args], *COMMON])


def folder_content(out: Path) -> list[str]:
    """Everything in the output folder but the lock file (hidden staging folders included)."""
    return sorted(p.name for p in out.iterdir() if p.name != LOCK)


def pixels(seed: int, slices: int = 3, shape=(48, 56)) -> np.ndarray:
    """A smooth bright ring on noise: an image, not a label map."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: shape[0], : shape[1]]
    ring = 1500 * np.exp(-((np.hypot(y - shape[0] / 2, x - shape[1] / 2) - 12) ** 2) / 20)
    return (ring + rng.integers(0, 600, (slices, *shape))).astype(np.uint16)


def physical_grid(image: sitk.Image) -> np.ndarray:
    """Patient position (mm) of every voxel centre, [z, y, x, 3]."""
    size = image.GetSize()
    index = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), -1).reshape(-1, 3)
    direction = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    points = np.array(image.GetOrigin()) + index @ direction.T
    return points.reshape(*size, 3).transpose(2, 1, 0, 3)


def same_voxels_in_space(a: sitk.Image, b: sitk.Image) -> None:
    """a and b hold the same voxels at the same patient positions (in whatever index order)."""
    pa, pb = physical_grid(a).reshape(-1, 3), physical_grid(b).reshape(-1, 3)
    va, vb = sitk.GetArrayFromImage(a).ravel(), sitk.GetArrayFromImage(b).ravel()
    order_a, order_b = np.lexsort(np.round(pa, 2).T), np.lexsort(np.round(pb, 2).T)
    np.testing.assert_allclose(pa[order_a], pb[order_b], atol=1e-3)
    np.testing.assert_array_equal(va[order_a], vb[order_b])


# ============================================================ 1. a study is written whole, or not at all
def test_series_without_frame_of_reference_gets_every_file_but_the_seg(tmp_path, model_path, capsys):
    """An anonymiser removed (0020,0052): the study is segmented and written; no DICOM SEG (we do not
    invent a Frame of Reference), a warning line, the reason in the run record, the flag in the tables."""
    write_series(tmp_path / "lge", pixels(0), drop=("FrameOfReferenceUID",))
    out = tmp_path / "out"
    assert segment(tmp_path / "lge", "-o", out, "--model", model_path, "--dicom-seg") == 0
    captured = capsys.readouterr()
    assert folder_content(out) == sorted(["cohort.csv", *STUDY_FILES])
    [line] = [l for l in captured.err.splitlines() if "dicom_seg_skipped" in l]
    assert line.startswith("warning: ") and "Frame of Reference UID (0020,0052)" in line
    record = json.loads((out / "lge_run.json").read_text())
    assert "Frame of Reference UID" in record["dicom_seg_skipped"] and "dicom_seg_skipped" in record["qc_flags"]
    assert outputs.NO_DICOM_SEG.format(record["dicom_seg_skipped"]) in record["warnings"]
    assert "no DICOM SEG written" not in captured.out  # said once, in the warning line, not again as a note
    assert sorted(record["outputs"]) == sorted(f for f in STUDY_FILES if f != "lge_run.json")
    [row] = read_csv(out / "cohort.csv")
    assert row["status"] == "ok" and "dicom_seg_skipped" in row["qc_flags"].split(";")
    assert "dicom_seg_skipped" in read_csv(out / "lge_scar.csv")[0]["qc_flags"].split(";")
    # --resume counts it complete: the SEG cannot be made from this series, redoing would not change that
    for path in out.iterdir():
        os.utime(path, ns=(0, 0))
    assert segment(tmp_path / "lge", "-o", out, "--model", model_path, "--dicom-seg", "--resume") == 0
    assert "skipped (--resume)" in capsys.readouterr().out
    assert all(p.stat().st_mtime_ns == 0 for p in out.glob("lge*"))


def _sources(tmp_path, **kwargs) -> tuple[LabelStack, list[Path]]:
    write_series(tmp_path / "src", pixels(1), **kwargs)
    files = dicom_series_files(tmp_path / "src")
    image = read_image(tmp_path / "src")
    return LabelStack.on(image, (sitk.GetArrayFromImage(image) > 1000).astype(np.uint8) * 2), files


@pytest.mark.parametrize("drop, edit, phrase", [
    (("FrameOfReferenceUID",), None, "no Frame of Reference UID (0020,0052)"),
    (("StudyInstanceUID",), None, "no Study Instance UID"),
    (("PixelSpacing",), None, "no image plane"),
    ((), "other_grid", "highdicom cannot make it"),      # labels that do not match the source images
])
def test_every_reason_a_seg_cannot_be_made_is_said(tmp_path, drop, edit, phrase):
    from ScarNetCore.io.dicom_seg import DicomSegSkipped, write_dicom_seg
    labels, files = _sources(tmp_path, drop=drop)
    if edit == "other_grid":
        labels = LabelStack.on(sitk.Image(17, 19, 3, sitk.sitkUInt8), np.zeros((3, 19, 17), np.uint8))
    with pytest.raises(DicomSegSkipped, match=phrase.replace("(", r"\(").replace(")", r"\)")):
        write_dicom_seg(labels, files, tmp_path / "x_seg.dcm")
    assert not list(tmp_path.glob("*.dcm")) and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_our_own_mistakes_fail_rather_than_skip_the_seg(tmp_path, monkeypatch):
    """Labels with fewer slices than the source series they were read from, or a bug inside the SEG
    writer (here: highdicom raising TypeError), are errors, not a series that cannot carry a SEG."""
    import highdicom as hd
    from ScarNetCore.io.dicom_seg import DicomSegSkipped, write_dicom_seg
    labels, files = _sources(tmp_path)
    with pytest.raises(RuntimeError, match="internal error: 3 source images for 2 label slices"):
        fewer = labels.stack.grid[:, :, :2]
        write_dicom_seg(LabelStack.on(fewer, sitk.GetArrayFromImage(fewer)), files, tmp_path / "x_seg.dcm")

    def bug(*args, **kwargs):
        raise TypeError("a bug")
    monkeypatch.setattr(hd.seg, "Segmentation", bug)
    with pytest.raises(TypeError, match="a bug") as raised:
        write_dicom_seg(labels, files, tmp_path / "x_seg.dcm")
    assert not isinstance(raised.value, DicomSegSkipped)


def _write(out: Path, overwrite: bool = False, overlay: bool = True, scar: int = 0, **kwargs) -> dict:
    """One study through the output layer (what `segment`, `quantify` and Slicer Export call), no model;
    `scar` voxels of scar make a different result."""
    from ScarNetCore.quantify import quantify
    array = np.pad(np.full((2, 6, 6), 2, np.uint8), ((0, 0), (5, 5), (5, 5)))
    array.reshape(-1)[np.flatnonzero(array)[:scar]] = 3
    labels = sitk.GetImageFromArray(array)
    labels.SetSpacing((1.4, 1.5, 8.0))
    record = outputs.run_record([], {}, outputs.now())
    return outputs.write_study(out, "lge", quantify(labels), record, labels=LabelStack.on(labels, array),
                               overlay=overlay, overwrite=overwrite, **kwargs)


def _fail_on_move(monkeypatch, number: int):
    """os.replace fails (disk full) on the `number`-th move from the staging folder into OUT."""
    real, moves = os.replace, []

    def replace(source, target):
        if STAGING in str(source) and STAGING not in str(target):
            moves.append(target)
            if len(moves) == number:
                raise OSError(28, "No space left on device")
        return real(source, target)
    monkeypatch.setattr(outputs.os, "replace", replace)


def _broken_overlay(monkeypatch):
    import ScarNetCore.io.overlay as overlay

    def broken(*args, **kwargs):
        raise RuntimeError("the overlay could not be drawn")
    monkeypatch.setattr(overlay, "write_overlay", broken)


STUDY_WITH_OVERLAY = sorted([*STUDY_FILES, "lge_overlay.png"])


@pytest.mark.parametrize("fail", ["making a file", "moving into place"])
def test_any_failure_leaves_none_of_the_study(tmp_path, monkeypatch, fail):
    """Not only a full disk: any exception while the study's files are made (here: the overlay, after
    the labels and tables), or while they are moved into place (the 3rd of 7 moves), leaves none of
    them in OUT and no staging folder; an earlier complete result of the study stays as it was."""
    out = tmp_path / "out"
    for earlier in (False, True):
        if earlier:
            monkeypatch.undo()
            _write(out)
            assert folder_content(out) == STUDY_WITH_OVERLAY
            before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != LOCK}
        if fail == "making a file":
            _broken_overlay(monkeypatch)
        else:
            _fail_on_move(monkeypatch, 3)
        with pytest.raises(Exception, match="overlay could not be drawn|No space left on device"):
            _write(out, overwrite=True)
        if earlier:
            assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != LOCK} == before
        else:
            assert folder_content(out) == []


def test_a_killed_run_is_cleaned_up_and_redone(tmp_path, monkeypatch):
    """A run killed while staging leaves a hidden staging folder; one killed while moving leaves some
    files and no run record, so --resume does not count the study complete. The next write removes
    the staging folder and writes the study whole."""
    out = tmp_path / "out"
    _write(out)
    kinds = ("labels", "summary", "slices", "segments", "bullseye", "overlay")
    assert outputs.completed_summary(out, "lge", kinds) is not None
    stale = out / f"{STAGING}lge-dead"
    stale.mkdir()
    (stale / "lge_scar.csv").write_text("half\n")
    (stale / EARLIER).mkdir()                 # killed before anything was moved aside: nothing to put back
    (out / "lge_run.json").unlink()          # killed after moving the tables, before the run record
    (out / "lge_bullseye.png").unlink()
    assert outputs.completed_summary(out, "lge", kinds) is None
    _write(out, overwrite=True)              # what --resume does with an incomplete study
    assert folder_content(out) == STUDY_WITH_OVERLAY
    assert outputs.completed_summary(out, "lge", kinds) is not None


class Killed(BaseException):
    """SIGKILL as far as the code under test can tell (no `except Exception` stops it)."""


def _kill_on_move(monkeypatch, number: int, exception=Killed):
    """os.replace raises `exception` at the `number`-th move of _move_into_place: an earlier file moved
    aside (into .earlier) or a new one moved from the staging folder into OUT."""
    real, moves = os.replace, []

    def replace(source, target):
        if EARLIER in str(target) or (STAGING in str(source) and STAGING not in str(target)):
            moves.append(target)
            if len(moves) == number:
                raise exception
        return real(source, target)
    monkeypatch.setattr(outputs.os, "replace", replace)


def _content(out: Path) -> dict[str, bytes | None]:
    """Every file in OUT with its bytes (a folder, e.g. a staging folder: None)."""
    return {p.name: p.read_bytes() if p.is_file() else None for p in out.iterdir() if p.name != LOCK}


@pytest.mark.parametrize("kill_at", [2, 6, 7, 10, 13, None])
def test_earlier_results_survive_a_run_killed_while_replacing_them(tmp_path, monkeypatch, kill_at):
    """--overwrite of a complete study (6 files, no overlay) with another result (7 files): the 6 earlier
    files are moved aside (moves 1-6), the new ones placed (7-12), the new run record last (13). A run
    killed at any of these leaves the earlier files in its staging folder; the next run into the folder
    puts them back, byte for byte, and takes out the new files placed so far (the overlay too, which
    has no earlier file). Killed after the new run record (None): the new study stays, complete."""
    out = tmp_path / "out"
    _write(out, overlay=False)
    before = _content(out)
    monkeypatch.setattr(outputs, "_clean_staging", lambda staging: None)  # a killed process cleans nothing up
    if kill_at is not None:
        _kill_on_move(monkeypatch, kill_at)
        with pytest.raises(Killed):
            _write(out, overwrite=True, scar=5)
    else:
        _write(out, overwrite=True, scar=5)
        after = {name: data for name, data in _content(out).items() if not name.startswith(STAGING)}
        assert after != before
    monkeypatch.undo()
    [staging] = out.glob(f"{STAGING}*")
    assert (staging / EARLIER / "lge_run.json").is_file()   # the earlier run record is moved aside first
    outputs.check_writable(out)                              # what the next run does first (write_study too)
    assert _content(out) == (before if kill_at is not None else after)


@pytest.mark.parametrize("stop", ["Ctrl-C", "put back fails"])
def test_earlier_results_are_put_back_at_once_or_by_the_next_run(tmp_path, monkeypatch, stop):
    """Ctrl-C while the new files move in: the earlier files are back when the exception leaves
    write_study. If putting them back fails too, the staging folder keeps them (never removed while
    it holds them) and the next run puts them back."""
    out = tmp_path / "out"
    _write(out)
    before = _content(out)
    if stop == "Ctrl-C":
        _kill_on_move(monkeypatch, 10, KeyboardInterrupt)
        with pytest.raises(KeyboardInterrupt):
            _write(out, overwrite=True, scar=5)
        assert _content(out) == before
        return
    real = os.replace

    def replace(source, target):
        if EARLIER in str(source) or (STAGING in str(source) and STAGING not in str(target)
                                      and Path(target).name == "lge_scar_slices.csv"):
            raise OSError(28, "No space left on device")
        return real(source, target)
    monkeypatch.setattr(outputs.os, "replace", replace)
    with pytest.raises(outputs.OutputError, match="No space left on device"):
        _write(out, overwrite=True, scar=5)
    monkeypatch.undo()
    [staging] = out.glob(f"{STAGING}*")
    assert sorted(p.name for p in (staging / EARLIER).iterdir()) == sorted(before)
    outputs.check_writable(out)
    assert _content(out) == before


def test_overwrite_replaces_every_file_of_the_study_but_its_own_input(tmp_path):
    """--overwrite replaces the whole study: an earlier overlay or DICOM SEG does not stay beside new
    labels it does not match. A file of the study that is this run's input (`scarnet quantify
    OUT/lge_seg.nii.gz --name lge`: labels corrected by hand) stays; a run that would write onto its
    own input is refused and changes nothing."""
    out = tmp_path / "out"
    _write(out)
    (out / "lge_seg.dcm").write_bytes(b"an earlier DICOM SEG")
    _write(out, overwrite=True, overlay=False, scar=5)
    assert folder_content(out) == STUDY_FILES

    labels = out / "lge_seg.nii.gz"
    corrected = labels.read_bytes()
    assert main(["quantify", str(labels), "-o", str(out), "--name", "lge", "--overwrite"]) == 0
    assert labels.read_bytes() == corrected and folder_content(out) == STUDY_FILES
    record = json.loads((out / "lge_run.json").read_text())
    assert [e["path"] for e in record["inputs"]] == [str(labels)] and "lge_seg.nii.gz" not in record["outputs"]

    before = _content(out)
    image = sitk.ReadImage(str(labels))
    from ScarNetCore.quantify import quantify
    with pytest.raises(outputs.OutputError, match="is an input of this run"):
        outputs.write_study(out, "lge", quantify(image), outputs.run_record([labels], {}, outputs.now()),
                            labels=LabelStack.on(image, sitk.GetArrayFromImage(image)), overwrite=True)
    assert _content(out) == before


# ============================================================ 2. DICOM the way it comes from a scanner
def _enhanced(tmp_path, files, sop_class=None) -> Path:
    """One multi-frame MR file (highdicom's legacy-converted enhanced MR) from a single-frame series,
    frames stored top slice first (not in the order of the normal)."""
    import highdicom as hd
    datasets = sorted((pydicom.dcmread(f) for f in files), key=lambda d: -float(np.dot(d.ImagePositionPatient, NORMAL)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = hd.legacy.LegacyConvertedEnhancedMRImage(datasets, series_instance_uid=hd.UID(), series_number=8,
                                                         sop_instance_uid=hd.UID(), instance_number=1)
    folder = tmp_path / "enhanced"
    folder.mkdir(parents=True)
    image.save_as(folder / "enhanced.dcm")
    return folder


def test_enhanced_multiframe_mr_is_read_on_its_grid_and_gets_a_seg(tmp_path, model_path):
    import highdicom as hd
    files = write_series(tmp_path / "single", pixels(3))
    single = read_image(tmp_path / "single")
    folder = _enhanced(tmp_path, files)
    image = read_image(folder)
    assert image.GetDimension() == 3 and image.GetSize() == single.GetSize()
    same_voxels_in_space(image, single)  # every voxel where the single-frame series puts it

    out = tmp_path / "out"
    assert segment(folder, "-o", out, "--model", model_path, "--dicom-seg") == 0
    labels = sitk.ReadImage(str(out / "enhanced_seg.nii.gz"))
    assert labels.GetSize() == image.GetSize()
    np.testing.assert_allclose(labels.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(labels.GetDirection(), image.GetDirection(), atol=1e-5)
    seg = hd.seg.segread(out / "enhanced_seg.dcm")
    volume = seg.get_volume(combine_segments=True, relabel=False)
    as_image = sitk.Cast(image_from_affine(volume.array, volume.affine), sitk.sitkUInt8)
    same_voxels_in_space(as_image, labels)  # the SEG's frames lie on the labels' voxels, value for value
    referenced = {i.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence}
    assert referenced == {pydicom.dcmread(folder / "enhanced.dcm").SOPInstanceUID}


def test_a_multiframe_image_that_is_not_one_stack_is_one_line(tmp_path):
    """Magnitude and phase frames in one multi-frame file, or a frame missing: refused, saying what to do."""
    uids = (generate_uid(), generate_uid(), generate_uid())
    both = write_series(tmp_path / "psir", pixels(4), uids=uids, prefix="mag")
    both += write_series(tmp_path / "psir", pixels(5), uids=uids, prefix="pha", image_type=("ORIGINAL", "PRIMARY", "P", "IR"))
    gap = write_series(tmp_path / "gap", pixels(8, slices=4), positions=[0.0, 8.0, 24.0, 32.0])
    for files, reason in ((both, "Multiple frames found at one or more plane positions"),
                          (gap, "do not form a regularly-spaced volume")):
        folder = _enhanced(tmp_path / files[0].parent.name, files)
        with pytest.raises(InputError) as refused:
            read_image(folder)
        line = str(refused.value)
        assert reason in line and "export the LGE stack as single-frame images" in line and "\n" not in line


def test_several_stacks_in_one_series_are_named_and_one_can_be_picked(tmp_path, model_path, capsys):
    """PSIR: magnitude and phase images at the same positions in one series; and a stack repeated
    with another acquisition number. Refused with the stacks listed; --series UID:N picks one."""
    uids = (generate_uid(), generate_uid(), generate_uid())
    folder = tmp_path / "psir"
    magnitude = write_series(folder, pixels(4), uids=uids, prefix="mag", image_type=("ORIGINAL", "PRIMARY", "M", "IR"))
    write_series(folder, pixels(5), uids=uids, prefix="pha", image_type=("ORIGINAL", "PRIMARY", "P", "IR"))
    with pytest.raises(InputError) as refused:
        read_image(folder)
    line = str(refused.value)
    assert "2 stacks" in line and f"--series {uids[1]}:1: image type ORIGINAL\\PRIMARY\\M\\IR (3 images)" in line
    assert f"--series {uids[1]}:2: image type ORIGINAL\\PRIMARY\\P\\IR (3 images)" in line
    assert "\n" not in line
    write_series(tmp_path / "mag_only", pixels(4), uids=(generate_uid(),) * 3)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(folder, f"{uids[1]}:1")),
                                  sitk.GetArrayFromImage(read_image(tmp_path / "mag_only")))
    assert sorted(dicom_series_files(folder, f"{uids[1]}:1")) == sorted(magnitude)
    with pytest.raises(InputError, match="has no stack 3"):
        read_image(folder, f"{uids[1]}:3")

    repeated = tmp_path / "repeated"
    write_series(repeated, pixels(6), uids=uids, prefix="a", acquisition=1)
    write_series(repeated, pixels(7), uids=uids, prefix="b", acquisition=2)
    with pytest.raises(InputError, match=f"--series {uids[1]}:2: acquisition 2 \\(3 images\\)"):
        read_image(repeated)

    # end to end: the chosen stack is segmented, checksummed and referenced by the SEG, nothing else
    out = tmp_path / "out"
    assert segment(folder, "-o", out, "--model", model_path, "--dicom-seg", "--series", f"{uids[1]}:1") == 0
    record = json.loads((out / "psir_run.json").read_text())
    assert sorted(e["path"] for e in record["inputs"]) == sorted(map(str, magnitude))
    seg = pydicom.dcmread(out / "psir_seg.dcm")
    referenced = {i.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence}
    assert referenced == {pydicom.dcmread(f).SOPInstanceUID for f in magnitude}
    assert segment(folder, "-o", tmp_path / "out2", "--model", model_path) == 1
    assert "pick the LGE stack" in capsys.readouterr().err


def test_a_missing_slice_is_refused_and_uneven_spacing_is_said(tmp_path, model_path, capsys):
    write_series(tmp_path / "gap", pixels(8, slices=4), positions=[0.0, 8.0, 24.0, 32.0])
    with pytest.raises(InputError, match=r"a slice is missing .*16\.00 mm between slices 2 and 3 .*8\.00 mm"):
        read_image(tmp_path / "gap")

    write_series(tmp_path / "uneven", pixels(9, slices=4), positions=[0.0, 8.0, 16.4, 24.3])
    notes = []
    image = read_image(tmp_path / "uneven", notes=notes)
    assert image.GetSpacing()[2] == pytest.approx(8.1, abs=1e-3)  # the mean spacing: first to last / 3
    [note] = notes
    assert "uneven (7.90 to 8.40 mm)" in note and "mean 8.10 mm" in note and "0.20 mm" in note
    write_series(tmp_path / "even", pixels(9, slices=4), positions=[0.0, 8.0, 16.0, 24.004])  # rounding noise
    notes = []
    read_image(tmp_path / "even", notes=notes)
    assert notes == []

    out = tmp_path / "out"
    assert segment(tmp_path / "gap", tmp_path / "uneven", "-o", out, "--model", model_path, "--dicom-seg") == 1
    captured = capsys.readouterr()
    assert len([l for l in captured.err.splitlines() if "a slice is missing" in l]) == 1
    assert "slice spacing is uneven" in captured.out
    record = json.loads((out / "uneven_run.json").read_text())
    assert any("slice spacing is uneven" in w for w in record["warnings"])
    # the SEG keeps each slice at its own position, not on the mean grid
    seg = pydicom.dcmread(out / "uneven_seg.dcm")
    offsets = sorted({round(float(np.dot(g.PlanePositionSequence[0].ImagePositionPatient, NORMAL)
                                 - np.dot((10.0, -20.0, 30.0), NORMAL)), 2)
                      for g in seg.PerFrameFunctionalGroupsSequence})
    assert offsets == [0.0, 8.0, 16.4, 24.3]
    assert folder_content(out) == sorted(["cohort.csv", "uneven_bullseye.png", "uneven_run.json", "uneven_scar.csv",
                                          "uneven_scar_segments.csv", "uneven_scar_slices.csv", "uneven_seg.dcm",
                                          "uneven_seg.nii.gz"])


def test_mixed_orientations_are_refused(tmp_path):
    uids = (generate_uid(), generate_uid(), generate_uid())
    write_series(tmp_path / "mixed", pixels(10), uids=uids, prefix="sax")
    write_series(tmp_path / "mixed", pixels(11, slices=1), uids=uids, prefix="loc",
                 orientation=(np.array([1.0, 0, 0]), np.array([0, 0, -1.0])))
    with pytest.raises(InputError, match="mixes images of 2 orientations"):
        read_image(tmp_path / "mixed")


def test_stacks_are_not_cut_up_by_a_key_that_changes_from_slice_to_slice(tmp_path):
    """PSIR as scanners write it: every slice its own heartbeat (TriggerTime) and breath-hold
    (AcquisitionNumber), magnitude and phase told apart by ImageType: two stacks of 4, not 8 of 1.
    Likewise two stacks told apart by inversion time whose images each have their own acquisition number."""
    uids = (generate_uid(), generate_uid(), generate_uid())
    folder = tmp_path / "psir"
    beats = {"TriggerTime": [412.5, 398.0, 405.25, 420.0], "AcquisitionNumber": [3, 4, 5, 6]}
    magnitude = write_series(folder, pixels(4, slices=4), uids=uids, prefix="mag",
                             image_type=("ORIGINAL", "PRIMARY", "M", "IR"), per_slice=beats)
    write_series(folder, pixels(5, slices=4), uids=uids, prefix="pha",
                 image_type=("ORIGINAL", "PRIMARY", "P", "IR"), per_slice=beats)
    with pytest.raises(InputError) as refused:
        read_image(folder)
    line = str(refused.value)
    assert "holds 2 stacks" in line and f"--series {uids[1]}:1: image type ORIGINAL\\PRIMARY\\M\\IR (4 images)" in line
    assert f"--series {uids[1]}:2: image type ORIGINAL\\PRIMARY\\P\\IR (4 images)" in line
    assert sorted(dicom_series_files(folder, f"{uids[1]}:1")) == sorted(magnitude)
    assert read_image(folder, f"{uids[1]}:1").GetSize()[2] == 4

    folder = tmp_path / "ti"
    for prefix, ti, numbers in (("a", 300.0, [1, 2, 3, 4]), ("b", 350.0, [5, 6, 7, 8])):
        write_series(folder, pixels(6, slices=4), uids=uids, prefix=prefix,
                     per_slice={"AcquisitionNumber": numbers, "InversionTime": [ti] * 4})
    with pytest.raises(InputError, match=f"holds 2 stacks .*--series {uids[1]}:2: inversion time 350.0 \\(4 images\\)"):
        read_image(folder)


def test_a_series_without_preamble_gets_every_check(tmp_path):
    """Files without the 128-byte preamble (GDCM reads them; pydicom only with force=True) are checked
    like any others: a missing slice is still refused; a complete series is read and gets a SEG."""
    from pydicom.errors import InvalidDicomError
    from ScarNetCore.io.dicom_seg import write_dicom_seg
    [first, *_] = write_series(tmp_path / "gap", pixels(8, slices=4), positions=[0.0, 8.0, 24.0, 32.0], preamble=False)
    with pytest.raises(InvalidDicomError):
        pydicom.dcmread(first)
    with pytest.raises(InputError, match="a slice is missing"):
        read_image(tmp_path / "gap")
    labels, files = _sources(tmp_path, preamble=False)
    write_series(tmp_path / "with_preamble", pixels(1))
    same_voxels_in_space(read_image(tmp_path / "src"), read_image(tmp_path / "with_preamble"))
    assert write_dicom_seg(labels, files, tmp_path / "x_seg.dcm").is_file()


PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm",
                                  "MR_small_bigendian.dcm", "MR_small_implicit.dcm"])
def test_pydicom_test_files_in_other_transfer_syntaxes_read_as_the_uncompressed_one(tmp_path, name):
    """pydicom's own MR test image, stored RLE, JPEG-LS, JPEG 2000 lossless, big endian, implicit VR:
    the same voxels and grid as the uncompressed one."""
    if not (PYDICOM_FILES / name).is_file():
        pytest.skip(f"{name} is not shipped with this pydicom")
    for file in ("MR_small.dcm", name):
        (tmp_path / file).mkdir()
        shutil.copy(PYDICOM_FILES / file, tmp_path / file / file)
    reference, image = read_image(tmp_path / "MR_small.dcm"), read_image(tmp_path / name)
    assert image.GetSize() == reference.GetSize() and image.GetSpacing() == reference.GetSpacing()
    assert image.GetOrigin() == reference.GetOrigin() and image.GetDirection() == reference.GetDirection()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(reference))


@pytest.mark.parametrize("syntax", ["RLELossless", "JPEGLSLossless"])
def test_compressed_series_and_multiframe_read_as_the_uncompressed_one(tmp_path, syntax):
    """A series compressed slice by slice with pydicom's encoders (RLE: numpy; JPEG-LS: pyjpegls), and
    the same compression in one multi-frame file: the voxels of the uncompressed series."""
    import pydicom.uid
    uid = getattr(pydicom.uid, syntax)
    files = write_series(tmp_path / "plain", pixels(12))
    (tmp_path / "packed").mkdir()
    for file in files:
        ds = pydicom.dcmread(file)
        try:
            ds.compress(uid)
        except (RuntimeError, ImportError) as exc:  # no encoder for it in this environment
            pytest.skip(f"pydicom cannot encode {syntax} here: {exc}")
        ds.save_as(tmp_path / "packed" / file.name)
    reference = read_image(tmp_path / "plain")
    image = read_image(tmp_path / "packed")
    assert image.GetSize() == reference.GetSize() and image.GetOrigin() == reference.GetOrigin()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(reference))

    folder = _enhanced(tmp_path, files)
    ds = pydicom.dcmread(folder / "enhanced.dcm")
    ds.compress(uid)
    ds.save_as(folder / "enhanced.dcm")
    same_voxels_in_space(sitk.Cast(read_image(folder), sitk.sitkUInt16), reference)
