"""Damaged and wrong inputs (issue 11): each is one clear line, exit status 1, nothing written for it.

ITK reads a cut-off compressed stream without complaint (zeros fill the rest) and turns NaN in
NIfTI into 0, so these rows would otherwise be segmented silently. The CLI rows run in one
`scarnet segment` call (one model load, no segmentation); one more call shows --force and a good
input after a bad one. Model-file fuzzing rows go through ScarNetCore.model.checkpoint directly.
Output faults (full disk, read-only folder, two processes on one folder, planted links) are in
test_outputs.py, which runs real tmpfs mounts and real concurrent processes.
"""
from __future__ import annotations

import bz2
import contextlib
import csv
import gzip
import io
import json
import re
import resource
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ScarNetCore.model.checkpoint import FORMAT, load_checkpoint, read_metadata
from ScarNetCore.cli import main
from ScarNetCore.errors import CheckpointError, InputError
from ScarNetCore.io.validation import check_not_label_map, validate_image
from ScarNetCore.io.reading import read_image
from ScarNetCore.io.outputs import LOCK

COMMON = ["--device", "cpu", "--precision", "fp32"]
NAN_AT = (1, 2, 3)  # numpy (z, y, x) of the bad voxel; messages give ITK's (x, y, z) = (3, 2, 1)


def _image(dtype=np.int16, shape=(4, 24, 24), seed=0) -> sitk.Image:
    values = np.random.default_rng(seed).uniform(0, 1000, shape).astype(dtype)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((1.5, 1.5, 8.0))
    return image


def _write(path: Path, image: sitk.Image, compress: bool = False) -> Path:
    sitk.WriteImage(image, str(path), useCompression=compress)
    return path


def _cut(path: Path, keep: int) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    return path


def _with_nonfinite(value) -> sitk.Image:
    array = np.random.default_rng(1).uniform(0, 1000, (4, 24, 24)).astype(np.float32)
    array[NAN_AT] = value
    array[3, 20, 20] = value
    return sitk.GetImageFromArray(array)


def _dicom_series(folder: Path, slices: int = 3, uid: str = "1.2.826.0.1.3680043.2.1125.7.1",
                  description: str = "LGE SAX", prefix: str = "IM") -> Path:
    folder.mkdir(exist_ok=True)
    array = _image(shape=(slices, 24, 24))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()  # one series: the same UIDs in every file
    for k in range(slices):
        image = array[:, :, k]
        for tag, value in (("0020|000d", "1.2.826.0.1.3680043.2.1125.7"), ("0020|000e", uid),
                           ("0008|103e", description),
                           ("0020|0013", str(k + 1)), ("0020|0032", f"0\\0\\{8 * k}"),
                           ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0008|0060", "MR")):
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{prefix}{k:04d}.dcm"))
        writer.Execute(image)
    return folder


CINE_UID = "1.2.826.0.1.3680043.2.1125.7.2"


# Each row: a file (or folder) made in `folder` and phrases its error line must contain.
def truncated_nii_gz(folder):
    return _cut(_write(folder / "cut_after_5k.nii.gz", _image(shape=(8, 64, 64)), True), 5000), ["ends early"]


def corrupt_gzip_crc(folder):
    path = _write(folder / "bad_crc.nii.gz", _image(), True)
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # the CRC-32 in the gzip trailer: every voxel decodes, the check fails
    path.write_bytes(bytes(data))
    return path, ["corrupt"]


def truncated_nii(folder):
    path = _write(folder / "half.nii", _image())
    return _cut(path, path.stat().st_size // 2), ["header declares", "cut off"]


def nan_nifti(folder):
    return _write(folder / "has_nan.nii.gz", _with_nonfinite(np.nan), True), ["2 NaN/Inf", "(3, 2, 1)"]


def inf_nrrd(folder):
    return _write(folder / "has_inf.nrrd", _with_nonfinite(np.inf)), ["2 NaN/Inf", "(3, 2, 1)"]


def truncated_gzip_nrrd(folder):
    path = _write(folder / "short_gz.nrrd", _image(), True)
    return _cut(path, -20), ["ends early"]


def truncated_raw_nrrd(folder):
    path = _write(folder / "short_raw.nrrd", _image())
    return _cut(path, -100), ["header declares"]


def nrrd_missing_data_file(folder):
    path = _write(folder / "detached.nhdr", _image(), True)
    (folder / "detached.raw.gz").unlink()
    return path, ["detached.raw.gz", "is missing"]


def truncated_mha(folder):
    path = _write(folder / "short_zlib.mha", _image(), True)
    return _cut(path, path.stat().st_size - 300), ["ends early"]


def truncated_raw_mha(folder):
    path = _write(folder / "short_plain.mha", _image())
    return _cut(path, -2), ["header declares"]


def mhd_missing_raw(folder):
    path = _write(folder / "lonely.mhd", _image())
    (folder / "lonely.raw").unlink()
    return path, ["lonely.raw", "is missing"]


def label_map_as_image(folder):
    labels = np.zeros((4, 24, 24), np.uint8)
    labels[:, 6:18, 6:18], labels[:, 9:15, 9:15], labels[:, 6:9, 6:12] = 2, 1, 3
    return _write(folder / "case_label.nii.gz", sitk.GetImageFromArray(labels), True), ["label map", "--force"]


def garbage_dicom_in_folder(folder):
    series = folder / "dicom_garbage"
    series.mkdir()
    (series / "IM0001.dcm").write_bytes(np.random.default_rng(2).bytes(4096))
    return series, ["IM0001.dcm", "not a readable DICOM file"]


def truncated_slice_in_dicom_series(folder):
    series = _dicom_series(folder / "dicom_cut_slice")
    _cut(series / "IM0001.dcm", 600)  # GDCM would silently leave this slice out of the stack
    return series, ["IM0001.dcm", "not a readable DICOM file"]


def two_dicom_series_in_one_folder(folder):
    both = _dicom_series(folder / "dicom_two_series")
    _dicom_series(both, slices=2, uid=CINE_UID, description="CINE SAX", prefix="CI")
    return both, ["2 DICOM series", CINE_UID, "CINE SAX", "2 file(s)", "LGE SAX", "3 file(s)", "--series UID"]


ROWS = [two_dicom_series_in_one_folder, truncated_nii_gz, corrupt_gzip_crc, truncated_nii, nan_nifti, inf_nrrd, truncated_gzip_nrrd,
        truncated_raw_nrrd, nrrd_missing_data_file, truncated_mha, truncated_raw_mha, mhd_missing_raw,
        label_map_as_image, garbage_dicom_in_folder, truncated_slice_in_dicom_series]


def _stem(path: Path) -> str:
    return path.name.split(".")[0]


def _run_cli(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory, model_path):
    """All rows through one `scarnet segment` call: (rows {name: (path, phrases)}, rc, stderr, out dir)."""
    folder = tmp_path_factory.mktemp("bad_inputs")
    rows = {make.__name__: make(folder) for make in ROWS}
    out = folder / "out"
    rc, _, err = _run_cli("segment", *(path for path, _ in rows.values()), "-o", out, "--model", model_path, *COMMON)
    return rows, rc, err, out


def test_every_bad_input_failed_and_the_run_says_so(bad_run):
    rows, rc, err, out = bad_run
    assert rc == 1
    assert "Traceback" not in err
    assert f"{len(rows)} of {len(rows)} input(s) failed" in err
    # no file for any bad input: only the cohort table, every row failed with its reason
    assert sorted(p.name for p in out.iterdir() if p.name != LOCK) == ["cohort.csv"]  # the lock stays on POSIX
    with open(out / "cohort.csv", newline="", encoding="utf-8") as handle:
        table = {row["input"]: row for row in csv.DictReader(handle)}
    for path, phrases in rows.values():
        assert table[str(path)]["status"] == "failed"
        assert all(phrase in table[str(path)]["error"] for phrase in phrases)


@pytest.mark.parametrize("row", [make.__name__ for make in ROWS])
def test_bad_input_is_one_line_and_writes_nothing(bad_run, row):
    rows, _, err, out = bad_run
    path, phrases = rows[row]
    lines = [line for line in err.splitlines() if str(path) in line]
    assert len(lines) == 1, f"{row}: expected one error line in\n{err}"
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    assert "SimpleITK" not in lines[0] and ".cxx" not in lines[0]
    assert not list(out.glob(f"{_stem(path)}_*"))


def test_force_segments_a_label_map_and_a_bad_input_does_not_stop_the_next(tmp_path, model_path):
    """The one segmentation here: a small label map with --force, after a damaged input."""
    bad, _ = truncated_nii_gz(tmp_path)
    labels, _ = label_map_as_image(tmp_path)
    out = tmp_path / "out"
    rc, stdout, err = _run_cli("segment", bad, labels, "-o", out, "--model", model_path, "--force",
                               "--batch-size", "4", *COMMON)
    assert rc == 1 and "1 of 2 input(s) failed" in err and "Traceback" not in err
    assert (out / "case_label_seg.nii.gz").is_file() and "wrote" in stdout
    assert not list(out.glob("cut_after_5k*"))


# ----------------------------------------------------------------- good files pass the same checks
def _good_files(folder: Path) -> list[Path]:
    image = _image()
    files = [_write(folder / "a.nii.gz", sitk.Cast(image, sitk.sitkFloat32), True), _write(folder / "b.nii", image),
             _write(folder / "c.nrrd", image, True), _write(folder / "d.nrrd", image),
             _write(folder / "e.nhdr", image, True), _write(folder / "f.mha", image, True),
             _write(folder / "g.mhd", image), _dicom_series(folder / "dicom")]
    (folder / "dicom" / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM")  # an index file is not a slice
    return files


def test_good_files_of_every_format_pass(tmp_path):
    for path in _good_files(tmp_path):
        image = read_image(path)
        validate_image(image, str(path))
        check_not_label_map(image, str(path))
        assert image.GetSize()[:2] == (24, 24), path


@pytest.mark.parametrize("values, dtype", [((0, 1), np.uint8), ((0, 1, 2, 3, 4), np.int16), ((0, 1, 2, 3), np.float64),
                                           ((0, 200, 500, 600), np.int32)])  # e.g. EMIDEC, MS-CMRSeg codings
def test_label_maps_are_recognised(values, dtype):
    array = np.resize(np.array(values, dtype), (3, 16, 16))
    with pytest.raises(InputError, match="label map.*--force"):
        check_not_label_map(sitk.GetImageFromArray(array))


def test_few_valued_images_that_are_no_label_maps_pass_the_label_check():
    check_not_label_map(sitk.GetImageFromArray(np.full((3, 8, 8), 7, np.int16)))  # constant: validate_image says so
    check_not_label_map(sitk.GetImageFromArray(np.resize(np.array([0.5, 1.5], np.float32), (3, 8, 8))))
    check_not_label_map(sitk.GetImageFromArray(np.arange(3 * 8 * 8, dtype=np.int16).reshape(3, 8, 8)))


# ------------------------------------------------------------------------ Slicer logic (headless)
def _slicer():
    root = Path(__file__).resolve().parents[1]
    if str(root / "ScarNetSlicer") not in sys.path:
        sys.path.insert(0, str(root / "ScarNetSlicer"))
    import slicer  # noqa: F401  (slicer-core, a test requirement)
    from ScarNetLib import ScarNetLogic
    from ScarNetLib.Conversion import addVolumeNodeFromSitk
    return slicer, ScarNetLogic, addVolumeNodeFromSitk


def _labels_image() -> sitk.Image:
    labels = np.zeros((4, 24, 24), np.uint8)
    labels[:, 6:18, 6:18], labels[:, 9:15, 9:15] = 2, 1
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing((1.5, 1.5, 8.0))
    return image


@pytest.mark.parametrize("className, image, phrases", [
    ("vtkMRMLLabelMapVolumeNode", _labels_image, ["label map", "labelmap volume node", "select the greyscale"]),
    ("vtkMRMLScalarVolumeNode", _labels_image, ["label map", "3 values (0, 1, 2)", "select the greyscale"]),
    ("vtkMRMLScalarVolumeNode", lambda: _with_nonfinite(np.nan), ["2 NaN/Inf", "(3, 2, 1)"]),
])
def test_slicer_logic_refuses_bad_input_and_leaves_the_scene_unchanged(className, image, phrases):
    slicer, ScarNetLogic, addVolumeNodeFromSitk = _slicer()
    scene = slicer.vtkMRMLScene()
    volume = addVolumeNodeFromSitk(scene, image(), "input", className)
    before = scene.GetNumberOfNodes()
    with pytest.raises(InputError) as info:
        ScarNetLogic().process(volume)
    for phrase in phrases:
        assert phrase in str(info.value)
    assert "\n" not in str(info.value) and scene.GetNumberOfNodes() == before


# -------------------------------------------------------------------------- model-file fuzzing
def _raw_safetensors(path: Path, header: bytes, declared_length: int | None = None) -> Path:
    length = len(header) if declared_length is None else declared_length
    path.write_bytes(struct.pack("<Q", length) + header + b"\0" * 64)
    return path


@contextlib.contextmanager
def _small(megabytes: int = 200):
    """The refusal comes without allocating what a hostile header asks for."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak  # ru_maxrss is in KiB on Linux
    assert grown_kb < megabytes * 1024


@pytest.mark.parametrize("make", [
    pytest.param(lambda p: _raw_safetensors(p, b"{this is not a header"), id="corrupt-header"),
    pytest.param(lambda p: _raw_safetensors(p, b"{}", declared_length=2 ** 60), id="header-length-2**60"),
    pytest.param(lambda p: _raw_safetensors(p, b"{}", declared_length=50_000_000), id="header-longer-than-file"),
    pytest.param(lambda p: _raw_safetensors(p, json.dumps({"w": {"dtype": "F32", "shape": [2 ** 40, 2 ** 20],
                                                               "data_offsets": [0, 8]}}).encode()),
                 id="tensor-larger-than-file"),
    pytest.param(lambda p: save_file({"w": torch.zeros(2)}, str(p), metadata={"scarnet": "{not json"}) or p,
                 id="metadata-not-json"),
    pytest.param(lambda p: save_file({"w": torch.zeros(2)}, str(p), metadata={"scarnet": "[1, 2]"}) or p,
                 id="metadata-json-not-object"),
    pytest.param(lambda p: save_file({"w": torch.zeros(2)}, str(p), metadata={
        "scarnet": json.dumps({"format": FORMAT, "config": "litemedsam"})}) or p,
                 id="config-not-an-object"),
])
def test_hostile_checkpoint_headers_are_refused(tmp_path, make):
    path = make(tmp_path / "model.safetensors")
    with _small(), pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_checkpoint(path)


def _edited_checkpoint(source: Path, target: Path, edit) -> Path:
    with safe_open(str(source), framework="pt") as handle:
        metadata = handle.metadata()
    state = load_file(str(source))
    edit(state)
    save_file(state, str(target), metadata=metadata)
    return target


def _drop_one(state):
    state.pop(sorted(state)[0])


def _add_one(state):
    state["surplus.weight"] = torch.zeros(3)


def _reshape_one(state):
    key = next(k for k, v in sorted(state.items()) if v.ndim >= 1 and v.shape[0] > 1)
    state[key] = state[key][:1].clone()


@pytest.mark.parametrize("edit, phrase", [(_drop_one, "missing key"), (_add_one, "unexpected key"),
                                          (_reshape_one, "wrong shape")])
def test_checkpoint_whose_tensors_do_not_match_the_network(tmp_path, model_path, edit, phrase):
    path = _edited_checkpoint(model_path, tmp_path / "edited.safetensors", edit)
    assert read_metadata(path)["format"]  # the header is fine; the tensors are not
    with pytest.raises(CheckpointError, match=phrase):
        load_checkpoint(path)


def test_checkpoint_cut_short_is_refused(tmp_path, model_path):
    path = tmp_path / "short.safetensors"
    shutil.copyfile(model_path, path)
    _cut(path, path.stat().st_size // 2)
    reason = re.escape(f"{path}: ") + ".*(damaged|truncated|not fully covered)"
    with _small(), pytest.raises(CheckpointError, match=reason):
        load_checkpoint(path)


def test_hand_written_nrrd_headers(tmp_path):
    """'gz' encoding, detached data with line/byte skips, malformed headers (left to ITK)."""
    voxels = np.arange(16 * 16 * 2, dtype=np.int16)
    head = "NRRD0004\ntype: short\ndimension: 3\nsizes: 16 16 2\nendian: little\n"
    packed = gzip.compress(voxels.tobytes())
    (tmp_path / "gz.nrrd").write_bytes(f"{head}encoding: gz\n\n".encode() + packed)
    assert np.array_equal(sitk.GetArrayFromImage(read_image(tmp_path / "gz.nrrd")).ravel(), voxels)
    (tmp_path / "gz_cut.nrrd").write_bytes(f"{head}encoding: gz\n\n".encode() + packed[:-10])
    with pytest.raises(InputError, match="gzip stream ends early"):
        read_image(tmp_path / "gz_cut.nrrd")
    (tmp_path / "bz.nrrd").write_bytes(f"{head}encoding: bzip2\n\n".encode() + bz2.compress(voxels.tobytes()))
    with pytest.raises(InputError, match="not a readable image.*bzip2"):  # ITK's NRRD reader has no bzip2
        read_image(tmp_path / "bz.nrrd")

    detached = f"{head}encoding: raw\ndata file: skip.raw\nline skip: 1\nbyte skip: 4\n"
    (tmp_path / "skip.nhdr").write_text(detached)
    (tmp_path / "skip.raw").write_bytes(b"a text line\n" + b"1234" + voxels.tobytes())
    assert np.array_equal(sitk.GetArrayFromImage(read_image(tmp_path / "skip.nhdr")).ravel(), voxels)
    (tmp_path / "skip.raw").write_bytes(b"a text line\n" + b"1234" + voxels.tobytes()[:-2])
    with pytest.raises(InputError, match="header declares 1,024 bytes of voxel data but only 1,022"):
        read_image(tmp_path / "skip.nhdr")

    (tmp_path / "odd.nrrd").write_bytes(f"{head}encoding: raw\nbyte skip: many\n\n".encode() + voxels.tobytes())
    with pytest.raises(InputError, match="not a readable image"):
        read_image(tmp_path / "odd.nrrd")


def test_series_option_picks_one_series_and_never_mixes_them(tmp_path):
    from ScarNetCore.io.reading import read_image
    both = two_dicom_series_in_one_folder(tmp_path)[0]
    assert read_image(both, CINE_UID).GetSize()[2] == 2
    assert read_image(both, "1.2.826.0.1.3680043.2.1125.7.1").GetSize()[2] == 3
    with pytest.raises(InputError, match="holds no DICOM series 9.9.9"):
        read_image(both, "9.9.9")
