"""`scarnet segment` and the worker end to end: outputs, partial failures, refusal to overwrite, one-line errors."""
from __future__ import annotations

import csv
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from safetensors.torch import save_file

from ScarNetCore.cli import main
from ScarNetCore.io.outputs import LOCK

COMMON = ["--device", "cpu", "--precision", "fp32"]
CSV_COLUMNS = {"myocardium_ml", "scar_ml", "mvo_ml", "scar_percent_lv"}


def run_cli(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def lines_naming(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


def check_outputs(out: Path, name: str, source: Path):
    seg = sitk.ReadImage(str(out / f"{name}_seg.nii.gz"))
    ref = sitk.ReadImage(str(source))
    assert seg.GetSize() == ref.GetSize()
    assert seg.GetSpacing() == ref.GetSpacing() and seg.GetOrigin() == ref.GetOrigin()
    assert seg.GetDirection() == ref.GetDirection()
    assert set(np.unique(sitk.GetArrayViewFromImage(seg)).tolist()) <= {0, 1, 2, 3, 4}
    with open(out / f"{name}_scar.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1 and CSV_COLUMNS <= set(rows[0])
    for column in ("myocardium_ml", "scar_ml", "mvo_ml"):
        assert float(rows[0][column]) >= 0


def leftovers(folder: Path) -> list[str]:
    """Temporary files atomic_path would leave behind (hidden `.name-XXXX` files)."""
    return [p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != LOCK] if folder.exists() else []


def test_segment_good_bad_good_then_overwrite(tmp_path, capsys, model_path, positive_slab, negative_slab, write_volume):
    pos, neg = write_volume("pos.nii.gz", positive_slab), write_volume("neg.nii.gz", negative_slab)
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(os.urandom(2048))
    out = tmp_path / "out"

    rc, stdout, err = run_cli(capsys, "segment", pos, bad, neg, "-o", out, "--model", model_path,
                              "--batch-size", "2", *COMMON)
    assert rc == 1  # one input failed, the others were processed
    assert "Traceback" not in err
    [line] = lines_naming(err, str(bad))
    assert "not a readable image" in line
    assert "1 of 3 input(s) failed" in err
    check_outputs(out, "pos", pos)
    check_outputs(out, "neg", neg)
    assert not list(out.glob("broken*")) and not leftovers(out)
    assert "wrote" in stdout

    # an earlier result is never replaced without --overwrite
    seg = out / "pos_seg.nii.gz"
    before = seg.read_bytes()
    os.utime(seg, ns=(0, 0))
    rc, _, err = run_cli(capsys, "segment", pos, "-o", out, "--model", model_path, *COMMON)
    assert rc == 1 and "already exists" in err and "--overwrite" in err and "Traceback" not in err
    assert seg.read_bytes() == before and seg.stat().st_mtime_ns == 0

    rc, _, err = run_cli(capsys, "segment", pos, "-o", out, "--model", model_path, "--overwrite", *COMMON)
    assert rc == 0, err
    assert seg.stat().st_mtime_ns != 0
    check_outputs(out, "pos", pos)
    assert not leftovers(out)


def test_console_script_subprocess(tmp_path, model_path, positive_slab, write_volume):
    script = Path(sys.executable).with_name("scarnet")
    if not script.exists():
        pytest.skip("the scarnet console script is not installed in this environment")
    pos = write_volume("case01.nii.gz", positive_slab)
    out = tmp_path / "results"
    proc = subprocess.run([str(script), "segment", str(pos), "-o", str(out), "--model", str(model_path), *COMMON],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    check_outputs(out, "case01", pos)


def _bad_images(tmp_path: Path) -> dict[Path, str]:
    """Each bad input and a phrase its error line must contain."""
    folder = tmp_path / "bad"
    folder.mkdir()
    rng = np.random.default_rng(0)
    cases = {}

    def add(name, image, phrase):
        path = folder / name
        if image is not None:
            sitk.WriteImage(image, str(path))
        cases[path] = phrase

    phases = [sitk.GetImageFromArray(rng.random((3, 16, 16)).astype(np.float32)) for _ in range(2)]
    add("four_d.nii.gz", sitk.JoinSeries(phases), "4-D")  # e.g. a multi-phase series
    add("rgb.nii.gz", sitk.GetImageFromArray(rng.integers(0, 255, (3, 16, 16, 3), dtype=np.uint8), isVector=True),
        "components")
    add("constant.nii.gz", sitk.GetImageFromArray(np.full((3, 16, 16), 7, np.int16)), "constant")
    nan = rng.random((3, 16, 16)).astype(np.float32)
    nan[1, 2, 3] = np.nan
    # MHA/NRRD: ITK's NIfTI reader turns NaN/Inf into 0 before the engine can see them
    add("nan.mha", sitk.GetImageFromArray(nan), "NaN/Inf")
    inf = rng.random((3, 16, 16)).astype(np.float32)
    inf[0, 0, 0] = np.inf
    add("inf.nrrd", sitk.GetImageFromArray(inf), "NaN/Inf")
    (folder / "empty.nii.gz").write_bytes(b"")
    add("empty.nii.gz", None, "not a readable image")
    # a well-formed header that declares zero slices
    (folder / "zero_slices.nrrd").write_text("NRRD0004\ntype: float\ndimension: 3\nsizes: 16 16 0\n"
                                             "encoding: raw\nendian: little\n\n")
    add("zero_slices.nrrd", None, "size is zero")
    (folder / "random.nii.gz").write_bytes(os.urandom(4096))
    add("random.nii.gz", None, "not a readable image")
    add("missing.nii.gz", None, "no such file")
    (folder / "no_dicom").mkdir()
    add("no_dicom", None, "no DICOM series")
    return cases


def test_every_bad_input_is_one_clear_line(tmp_path, capsys, model_path):
    cases = _bad_images(tmp_path)
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, "segment", *cases, "-o", out, "--model", model_path, *COMMON)
    assert rc == 1
    assert "Traceback" not in err
    for path, phrase in cases.items():
        lines = lines_naming(err, str(path))
        assert len(lines) == 1, f"{path.name}: expected one error line in\n{err}"
        line = lines[0]
        assert phrase in line, line
        assert "SimpleITK" not in line and ".cxx" not in line  # the reason, not ITK's source location
    assert f"{len(cases)} of {len(cases)} input(s) failed" in err
    # no file for any bad input: only the cohort table, one failed row with its reason per input
    assert sorted(p.name for p in out.iterdir() if p.name != LOCK) == ["cohort.csv"]  # the lock stays on POSIX
    with open(out / "cohort.csv", newline="") as handle:
        rows = {row["input"]: row for row in csv.DictReader(handle)}
    for path, phrase in cases.items():
        assert rows[str(path)]["status"] == "failed" and phrase in rows[str(path)]["error"]


class WritesMarker:
    """Unpickling this object would create `marker` (a stand-in for arbitrary code)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


NOT_A_CHECKPOINT = re.compile(r"not a (readable )?ScarNet checkpoint")


def _assert_model_rejected(capsys, model: Path, input_path: Path, out: Path) -> str:
    rc, _, err = run_cli(capsys, "segment", input_path, "-o", out, "--model", model, *COMMON)
    assert rc == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert str(model) in lines[0]
    assert not out.exists()
    return lines[0]


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("filename", ["model.pt", "model.safetensors"])
def test_malicious_pickle_is_never_unpickled(tmp_path, capsys, protocol, filename):
    # control: the payload is live, so the check below can fail
    control = tmp_path / "control_marker"
    pickle.loads(pickle.dumps(WritesMarker(control), protocol=protocol))
    assert control.exists()

    marker = tmp_path / "marker"
    model = tmp_path / filename
    model.write_bytes(pickle.dumps({"state_dict": WritesMarker(marker)}, protocol=protocol))
    line = _assert_model_rejected(capsys, model, tmp_path / "any.nii.gz", tmp_path / "out")
    assert not marker.exists()
    assert NOT_A_CHECKPOINT.search(line), line


@pytest.mark.parametrize("filename", ["model.pt", "model.safetensors"])
def test_malicious_torch_zip_is_never_unpickled(tmp_path, capsys, filename):
    control = tmp_path / "control.pt"
    torch.save(WritesMarker(tmp_path / "control_marker"), control)
    torch.load(control, weights_only=False)
    assert (tmp_path / "control_marker").exists()

    marker = tmp_path / "marker"
    model = tmp_path / filename
    torch.save({"weights": torch.zeros(2), "hook": WritesMarker(marker)}, model)
    line = _assert_model_rejected(capsys, model, tmp_path / "any.nii.gz", tmp_path / "out")
    assert not marker.exists()
    assert NOT_A_CHECKPOINT.search(line) and "not opened" in line, line


def test_model_file_that_is_not_a_checkpoint(tmp_path, capsys):
    plain = tmp_path / "plain.safetensors"
    save_file({"weight": torch.zeros(3, 3)}, str(plain))  # valid safetensors, no ScarNet metadata
    assert NOT_A_CHECKPOINT.search(_assert_model_rejected(capsys, plain, tmp_path / "a.nii.gz", tmp_path / "o1"))
    text = tmp_path / "model.safetensors"
    text.write_text("this is a README, not weights\n")
    assert NOT_A_CHECKPOINT.search(_assert_model_rejected(capsys, text, tmp_path / "a.nii.gz", tmp_path / "o2"))
    missing = tmp_path / "nowhere.safetensors"
    assert "not found" in _assert_model_rejected(capsys, missing, tmp_path / "a.nii.gz", tmp_path / "o3")


def _gflops(text: str) -> list[float]:
    return [float(part.split(" GFLOP")[0]) for part in text.split("FLOPs per slice: ")[1:]]


def test_info_prints_parameters_and_flops(capsys, model_and_path):
    """A v2 file: each stage with its grid, field of view, parameters and FLOPs; a v1 file (the bundled
    v1, LiteMedSAM's TinyViT encoder): its one network's."""
    from ScarNetCore.cli import main
    from ScarNetCore.model import count_parameters
    from ScarNetCore.resources import v1_model_path

    cascade, path = model_and_path
    assert main(["info", "--model", str(path)]) == 0
    out = capsys.readouterr().out
    assert "model v2 cascade" in out and "name: test-random" in out
    assert "locate: 224×224 at 2 mm/pixel (448 mm field of view)" in out
    assert "segment: 128×128 at 1.25 mm/pixel (160 mm field of view)" in out
    for stage in (cascade.locate, cascade.segment):
        counts = count_parameters(stage)
        assert f"{counts['total']:,} total = 0 encoder" in out
    locate, segment = _gflops(out)
    assert 0 < segment < locate < 1.0   # tiny encoder-free networks; stage 1's grid is the larger

    assert main(["info", "--model", str(v1_model_path())]) == 0
    out = capsys.readouterr().out
    from ScarNetCore.model.checkpoint import load_checkpoint
    counts = count_parameters(load_checkpoint(v1_model_path())[0])
    assert f"{counts['total']:,} total" in out and f"{counts['encoder']:,} encoder" in out and counts["encoder"] > 0
    [gflop] = _gflops(out)
    assert 1.0 < gflop < 200.0  # a 256×256 TinyViT + U-Net pass: tens of GFLOPs, not zero or absurd


def test_worker_counts_slices_along_the_acquisition_axis(tmp_path, model_path):
    """`python -m ScarNetCore.worker` (the Slicer module's child process) on a stack whose slices lie along
    i, not k: its status reports 3 slices, as the Segmenter cuts them, not the 40 voxels along k."""
    from ScarNetCore import worker

    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.random((40, 48, 3)).astype(np.float32))  # size (i, j, k) = (3, 48, 40)
    image.SetSpacing((10.0, 1.25, 1.25))
    assert worker.slice_count(image) == 3
    source, labels, status = tmp_path / "in.nrrd", tmp_path / "labels.nrrd", tmp_path / "status.json"
    sitk.WriteImage(image, str(source))
    assert worker.main(["--input", str(source), "--output", str(labels), "--status", str(status),
                        "--cancel-file", str(tmp_path / "cancel"), "--model", str(model_path), "--device", "cpu"]) == 0
    report = json.loads(status.read_text())
    assert report["state"] == "finished", report
    assert (report["done"], report["total"]) == (3, 3)
    assert sitk.ReadImage(str(labels)).GetSize() == image.GetSize()
