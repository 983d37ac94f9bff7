"""Every file ScarNet writes for a study: names, the overwrite guard, atomic writing, the run record.

`scarnet segment`, `scarnet quantify`, `scarnet demo` and the Slicer module's Export all write through
`write_study`, so one study's files are named the same way whoever made them (OUT/<name><suffix>, see
SUFFIXES). A study is written whole or not at all: every file is first written into a hidden staging
folder inside OUT (OUT/.scarnet-staging-<name>-XXXX, same file system) and only when all of them are
there are they moved into place, one os.replace each, the run record last. Any failure before that
leaves nothing of the study in OUT. A study whose run record lists files that all exist is complete
(`scarnet segment --resume` relies on that); a crash in the middle of the move leaves no run record,
so --resume redoes the study. The earlier files of a study that --overwrite replaces wait in the
staging folder (.earlier) until the new run record is placed; a run that fails or is killed before
then puts them back (itself, or the next run when it finds the staging folder), so an earlier result
is never lost to an unfinished run. Other staging folders a killed run left behind are removed.
A cohort run also keeps one table, OUT/cohort.csv (CohortTable). Processes writing into one folder
take turns (folder_lock), so two runs never mix their files or lose each other's cohort rows.
"""
from __future__ import annotations

import contextlib
import csv
import datetime
import functools
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from filelock import FileLock, Timeout

from .. import __version__
from ..errors import InputError, OutputError, ScarNetError
from ..pipeline.stack import LabelStack
from ..quantify.bullseye import bullseye_figure
from ..quantify.classical import METHOD_NAMES
from ..quantify.result import QuantResult
from .files import atomic_path, read_csv, sha256_of, write_csv, write_image_atomic, write_json_atomic

# Output kind -> file name after the study's name. The label volume and summary keep their first
# names (_seg.nii.gz, _scar.csv): users' scripts read them.
SUFFIXES = {
    "labels": "_seg.nii.gz",            # label volume on the input grid (0..4)
    "summary": "_scar.csv",             # global numbers, one row, and qc_flags
    "slices": "_scar_slices.csv",       # one row per slice along the acquisition axis
    "segments": "_scar_segments.csv",   # one row per AHA segment 1..17
    "bullseye": "_bullseye.png",
    "overlay": "_overlay.png",
    "dicom_seg": "_seg.dcm",            # DICOM Segmentation of the source series
    **{f"labels_{method}": f"_{method}.nii.gz" for method in METHOD_NAMES},  # classical thresholds
    "run": "_run.json",                 # how the files were made
}
COHORT = "cohort.csv"
COHORT_COLUMNS = ("input", "status", "error")
LOCK = ".scarnet.lock"          # hidden; filelock leaves the (empty) file in place on POSIX
LOCK_WAIT_S = 600.0             # writing one study takes seconds: a longer hold means a stuck process
STAGING = ".scarnet-staging-"   # hidden per-study folder in OUT where a study's files are written first
EARLIER = ".earlier"            # in a staging folder: the earlier files of the study, until the new ones are all placed
DICOM_SEG_SKIPPED = "dicom_seg_skipped"  # flag of a study whose DICOM SEG could not be made (reason in the run record)
NO_DICOM_SEG = "no DICOM SEG written: {}"  # the warning, with the reason


def study_paths(out_dir: str | os.PathLike, name: str) -> dict[str, Path]:
    if not name or name in (".", "..") or os.sep in name or (os.altsep and os.altsep in name):
        raise InputError(f"output name {name!r} must be a plain file-name stem (no folders)")
    return {kind: Path(out_dir) / f"{name}{suffix}" for kind, suffix in SUFFIXES.items()}


def refuse_overwrite(out_dir: str | os.PathLike, name: str, overwrite: bool) -> None:
    """Stop if any file of the study is already there: files from two runs must not mix, as the run
    record describes one run; earlier results are replaced only when the user says so."""
    existing = [p for p in study_paths(out_dir, name).values() if p.exists()]
    if existing and not overwrite:
        raise ScarNetError(f"{existing[0]} already exists; choose another output folder or pass --overwrite "
                           "(earlier results are never replaced silently)")


# ---------------------------------------------------------------------------------- writing
def write_study(out_dir: str | os.PathLike, name: str, report: QuantResult, record: dict,
                labels: LabelStack | None = None, qc_flags=(), overlay: bool = False,
                dicom_files: list[Path] | None = None, overwrite: bool = False) -> dict[str, Path]:
    """Write one study's files; returns {kind: path}. `labels`: the segmentation on the LGE image's stack
    (Segmenter.segment's `label_stack`, or LabelStack.on(image, labels)), written as NIfTI, as a DICOM SEG of
    `dicom_files` and, with `overlay`, drawn over its image. All files are written into a staging folder
    first and moved into place only when every one of them is there, the run record last: a failure
    of any kind (full disk, read-only folder, an exception while making a file) leaves none of this
    study's files in OUT, and earlier results of the study stay as they were.

    A DICOM SEG that cannot be made from the source series (dicom_seg.DicomSegSkipped: e.g. no Frame
    of Reference UID) does not fail the study: the other files are written, the run record says why
    (`dicom_seg_skipped`, and in `warnings`) and the flag `dicom_seg_skipped` joins the qc_flags of the
    summary and of the run record. `record` is completed in place (finished, outputs, qc_flags,
    dicom_seg_skipped): callers read the study's flags from record["qc_flags"].

    With `overwrite`, every earlier file of the study is replaced (all kinds in SUFFIXES, not only
    those this run writes: an old DICOM SEG or overlay must not lie beside labels it does not match),
    except a file that is one of this run's inputs (record["inputs"]; `scarnet quantify
    OUT/<name>_seg.nii.gz --name <name>`): that one stays, and a run that would write onto it is refused.

    The overwrite guard is checked again under the folder lock: another process may have written
    this study since the caller's early check."""
    paths = study_paths(out_dir, name)
    try:
        with folder_lock(out_dir):
            refuse_overwrite(out_dir, name, overwrite)
            remove_stale_staging(out_dir)
            keep = _inputs_among(paths, record)
            staging = Path(tempfile.mkdtemp(prefix=f"{STAGING}{name}-", dir=out_dir))
            try:
                staged = _write_study(staging, name, report, record, labels, qc_flags, overlay, dicom_files)
                return _move_into_place(staged, paths, staging, keep)
            finally:
                # what cannot be put back now stays in the staging folder, where the next run finds it
                with contextlib.suppress(OSError):
                    _clean_staging(staging)
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot write the results of {name} ({exc.strerror or exc}); free disk "
                          "space or choose a writable -o folder, then run again (nothing of this study was kept)") from exc


def remove_stale_staging(out_dir: str | os.PathLike) -> None:
    """Clean up the staging folders left by a run that was killed while writing a study: earlier files
    it had moved aside are put back first (_clean_staging). Call under the folder lock: every run
    writes its study's files while holding it, so any staging folder there is stale."""
    for path in Path(out_dir).glob(f"{STAGING}*"):
        if path.is_dir() and not path.is_symlink():
            _clean_staging(path)
        else:
            path.unlink(missing_ok=True)


def _clean_staging(staging: Path) -> None:
    """Remove a staging folder; first, if its study's move into place did not finish (the new run
    record is still here), undo it: the new files placed so far are taken out of OUT and the earlier
    files of the study put back, the earlier run record last (complete again only when all is back).
    Raises OSError if they cannot be put back: the folder then stays, with them, for the next run."""
    aside = staging / EARLIER
    name = staging.name[len(STAGING):].rpartition("-")[0]  # mkdtemp's random part holds no '-'
    new_record = staging / f"{name}{SUFFIXES['run']}"
    if aside.is_dir() and new_record.is_file():
        out = staging.parent
        try:
            placed = json.loads(new_record.read_text(encoding="utf-8"))["outputs"]
        except (OSError, ValueError, KeyError, TypeError):
            placed = []
        for file in placed:
            if not (staging / file).exists():  # moved into OUT already (an earlier file of that name comes back below)
                (out / file).unlink(missing_ok=True)
        for path in sorted(aside.iterdir(), key=lambda p: p.name == new_record.name):
            os.replace(path, out / path.name)
    shutil.rmtree(staging, ignore_errors=True)


def _inputs_among(paths: dict[str, Path], record: dict) -> set[Path]:
    """The study's file names that are this run's own inputs (record["inputs"]): never moved or replaced."""
    inputs = [entry["path"] for entry in record.get("inputs") or () if isinstance(entry, dict) and entry.get("path")]
    return {path for path in paths.values() if any(_same_file(path, source) for source in inputs)}


def _same_file(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _move_into_place(staged: dict[str, Path], paths: dict[str, Path], staging: Path,
                     keep: set[Path] = frozenset()) -> dict[str, Path]:
    """Move the staged files onto their names in OUT (os.replace: atomic per file; a link planted
    there is replaced, never followed). Every earlier file of the study but those in `keep` (this
    run's inputs) is moved aside into the staging folder first, the earlier run record first of all,
    and the new run record comes last: while files move there is no run record, so a crash here is
    redone by --resume. If a move fails, or the run is killed, _clean_staging puts the earlier files back."""
    clash = [paths[kind] for kind in staged if paths[kind] in keep]
    if clash:
        raise OutputError(f"{clash[0]} is an input of this run and would be replaced by its result; choose "
                          "another -o folder (or --name)")
    aside = staging / EARLIER
    aside.mkdir()
    for kind in ("run", *(k for k in paths if k != "run")):
        if paths[kind] not in keep and (paths[kind].exists() or paths[kind].is_symlink()):
            os.replace(paths[kind], aside / paths[kind].name)
    for kind, source in staged.items():
        if kind != "run":
            os.replace(source, paths[kind])
    os.replace(staged["run"], paths["run"])
    return {kind: paths[kind] for kind in staged}


@contextlib.contextmanager
def folder_lock(out_dir: str | os.PathLike, wait_s: float = LOCK_WAIT_S):
    """Hold the output folder while files in it are checked and written. Two `scarnet segment` runs, or
    the Slicer module and a command line, writing into one folder take turns: a study's files never
    mix two runs and no cohort row is lost. Raises OSError where the folder cannot be written."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    # a plain write first: some filelock versions take "cannot open the lock file" for "someone holds it"
    fd, probe = tempfile.mkstemp(prefix=".scarnet-probe-", dir=folder)
    os.close(fd)
    os.unlink(probe)
    path = folder / LOCK
    if path.is_symlink():  # a planted link: our file name, replaced, never followed
        path.unlink()
    lock = FileLock(path, timeout=wait_s, mode=0o666)  # empty file; others sharing the folder must open it too
    try:
        try:
            lock.acquire(timeout=2.0)
        except Timeout:
            print(f"scarnet: {folder}: waiting for another ScarNet process writing here …", file=sys.stderr)
            lock.acquire()
    except Timeout:
        raise OutputError(f"{folder}: another ScarNet process has been writing here for {wait_s:.0f} s; wait for "
                          "it to finish or choose another -o folder") from None
    except NotImplementedError as exc:  # a file system without file locks
        raise OutputError(f"{folder}: this file system cannot lock files ({exc}); choose an -o folder on a local "
                          "disk") from None
    try:
        yield
    finally:
        lock.release()


def check_writable(out_dir: str | os.PathLike) -> None:
    """Stop before any work when the output folder cannot be written (read-only, no permission);
    remove what a killed run left in its staging folders."""
    try:
        with folder_lock(out_dir):
            remove_stale_staging(out_dir)
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot write into this folder ({exc.strerror or exc}); choose a writable "
                          "-o folder") from exc


def _write_study(folder, name, report, record, labels, qc_flags, overlay, dicom_files) -> dict:
    """Write the study's files into `folder` (the staging folder); returns {kind: path}, run record last."""
    paths = study_paths(folder, name)
    written = {}
    if labels is not None:
        written["labels"] = write_image_atomic(labels.to_image(), paths["labels"])
    if dicom_files:  # before the tables: a SEG that cannot be made adds a flag to the summary
        from .dicom_seg import DicomSegSkipped, write_dicom_seg
        model = record.get("model") or {}
        try:
            written["dicom_seg"] = write_dicom_seg(labels, dicom_files, paths["dicom_seg"], model.get("name") or "")
        except DicomSegSkipped as exc:
            record["dicom_seg_skipped"] = str(exc)
            record.setdefault("warnings", []).append(NO_DICOM_SEG.format(exc))
            qc_flags = (*qc_flags, DICOM_SEG_SKIPPED)
    record["qc_flags"] = list(qc_flags)  # the summary's flags: one list, read back by the callers
    written.update(write_reports(report, folder, name, qc_flags))
    if overlay and labels is not None:
        from .overlay import write_overlay
        g = report.global_metrics
        title = f"{name}: scar {g['scar_ml']:.1f} mL" + (
            f" ({g['scar_percent_lv']:.1f} % of LV myocardium)" if g.get("scar_percent_lv") is not None else "")
        written["overlay"] = write_overlay(labels, paths["overlay"], title)
    record.update(finished=record.get("finished") or now(), outputs=sorted(p.name for p in written.values()))
    written["run"] = write_json_atomic(record, paths["run"])
    return written


def write_reports(report: QuantResult, out_dir: str | os.PathLike, name: str, qc_flags=()) -> dict[str, Path]:
    """The numbers and the bullseye: summary, per-slice and AHA CSVs, bullseye PNG, classical label volumes."""
    paths = study_paths(out_dir, name)
    write_csv([summary_row(report, qc_flags)], paths["summary"])
    write_csv(report.per_slice, paths["slices"])
    write_csv(report.per_segment, paths["segments"])
    with atomic_path(paths["bullseye"]) as tmp:
        bullseye_figure(report.per_segment, bullseye_title(report, name), bullseye_notes(report)).savefig(
            str(tmp), format="png")
    written = {kind: paths[kind] for kind in ("summary", "slices", "segments", "bullseye")}
    for method, image in report.classical_labels.items():
        written[f"labels_{method}"] = write_image_atomic(image, paths[f"labels_{method}"])
    return written


def summary_row(report: QuantResult, qc_flags=()) -> dict:
    """The summary CSV's one row, also the numbers of a cohort row: global metrics, then the model's
    QC flags (';'-joined, empty when all is well or no model made the labels)."""
    return {**report.global_metrics, "qc_flags": ";".join(qc_flags)}


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


# ------------------------------------------------------------------------------ run record
def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def run_record(inputs, options: dict, started: str, segmenter=None, result=None, warnings=(),
               finished: str | None = None) -> dict:
    """How a study's files were made, so a CSV can be traced years later: ScarNet version, model and
    the SHA-256 of its weights, device, precision, options, each input file with its SHA-256 (every
    file of a DICOM series), start and end time, QC flags, the model's confidence and warnings. The
    one place a run record is assembled: callers add only what they alone know (write_study its
    outputs, the Slicer module the volume's files and whether the labels were edited).

    `segmenter`/`result` are a pipeline.segmenter.Segmenter and its SegmentationResult; None when the
    labels did not come from the model (scarnet quantify, a segmentation drawn in Slicer).
    `finished`: when the run ended, for a record that is not written with a study (write_study
    stamps it otherwise).
    """
    record = {"scarnet_version": __version__, "model": None, "device": None, "precision": None,
              "options": dict(options), "inputs": file_entries(inputs),
              "started": started, "finished": finished, "qc_flags": [], "confidence": None,
              "warnings": list(warnings)}
    if segmenter is not None:
        info = segmenter.model_info
        record.update(model={"name": info.get("name"), "version": info.get("version"),
                             "architecture": info.get("architecture"), "path": str(segmenter.model_path),
                             "sha256": _weights_sha256(str(segmenter.model_path), os.stat(segmenter.model_path).st_mtime_ns)},
                      device=str(segmenter.device), precision=segmenter.precision)
    if result is not None:
        record.update(qc_flags=list(result.qc_flags), confidence=result.confidence)
    return record


def file_entries(files) -> list[dict]:
    return [{"path": str(f), "sha256": sha256_of(f)} for f in files]


@functools.lru_cache(maxsize=4)
def _weights_sha256(path: str, mtime_ns: int) -> str:
    return sha256_of(path)  # once per weights file (and modification) in a cohort, not once per study


def completed_summary(out_dir: str | os.PathLike, name: str, kinds) -> dict | None:
    """The summary row of a study whose run record, every file it lists and every output kind in
    `kinds` are there (what --resume skips); None when the study must be (re)done."""
    paths = study_paths(out_dir, name)
    try:
        record = json.loads(paths["run"].read_text(encoding="utf-8"))
        listed = record["outputs"]
        missing = {paths[kind].name for kind in kinds} - set(listed)
        if record.get("dicom_seg_skipped"):  # the SEG could not be made from this series: redoing will not change that
            missing.discard(paths["dicom_seg"].name)
        if missing:
            return None
        if all((Path(out_dir) / file).is_file() for file in listed):
            return read_csv(paths["summary"])[0]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        pass
    return None


# ---------------------------------------------------------------------------------- cohorts
def cohort_name(part: tuple[int, int] | None = None) -> str:
    """cohort.csv; one part of a cohort split over machines (--part K --parts N) has its own file,
    cohort.part-K-of-N.csv, so parts never write to the same file."""
    return COHORT if part is None else f"cohort.part-{part[0]}-of-{part[1]}.csv"


class CohortTable:
    """One row per input: input, status (ok/failed), error, the summary numbers, qc_flags.

    The whole table is rewritten atomically after each study, so a killed run leaves a complete table
    of the studies finished so far. Rows of inputs from earlier runs into the folder, or from another
    process writing into it at the same time, are kept; a study run again replaces its row.
    """

    def __init__(self, out_dir: str | os.PathLike, part: tuple[int, int] | None = None):
        self.path = Path(out_dir) / cohort_name(part)
        self.rows: dict[str, dict] = {}   # the table as last written by add()

    def add(self, input_path, status: str, error: str = "", summary: dict | None = None) -> None:
        row = {"input": str(input_path), "status": status, "error": error, **(summary or {})}
        try:
            with folder_lock(self.path.parent):
                self.rows = self._read()  # again under the lock: another process may have added rows since
                self.rows[row["input"]] = row
                numbers = [k for k in dict.fromkeys(k for r in self.rows.values() for k in r)
                           if k not in COHORT_COLUMNS and k != "qc_flags"]
                write_csv(list(self.rows.values()), self.path, [*COHORT_COLUMNS, *numbers, "qc_flags"])
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot update the cohort table ({exc.strerror or exc}); free disk "
                              "space or choose a writable -o folder") from exc

    def _read(self) -> dict[str, dict]:
        if not self.path.is_file():
            return {}
        try:
            return {row["input"]: row for row in read_csv(self.path)}
        except (csv.Error, KeyError, UnicodeDecodeError) as exc:
            raise OutputError(f"{self.path}: not a ScarNet cohort table ({type(exc).__name__}: {exc}); move it "
                              "away or choose another -o folder") from None
