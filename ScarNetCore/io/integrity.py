"""Is an image file whole? ITK reads a cut-off compressed stream without complaint (zeros fill the
rest) and turns NaN in NIfTI into 0, so these checks read the file themselves before ITK does:
compressed streams to their end (their CRC and length checks run), the voxel bytes the header
declares, detached data files, and NIfTI's raw voxels for NaN/Inf (with nibabel, which keeps them).
"""
from __future__ import annotations

import io
import os
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError

_RECOPY = "copy it again from its source"


def check_file_complete(path: str | os.PathLike) -> None:
    """Raise InputError if a NIfTI, NRRD or MetaImage file's voxel data is cut off, corrupt or missing.

    Compressed streams are read to the end, so their own checks (CRC, length) run; for NIfTI, whose
    NaN/Inf ITK would turn into 0, the raw voxels are checked too. Files these checks cannot parse
    are left to ITK, which says why it cannot read them.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        check = _check_nifti
    elif name.endswith((".nrrd", ".nhdr")):
        check = _check_nrrd
    elif name.endswith((".mha", ".mhd")):
        check = _check_metaimage
    else:
        return
    try:
        check(path)
    except OSError as exc:
        raise InputError(f"{exc.filename or path}: cannot be read ({exc.strerror or exc}); "
                         "check that it exists and you may read it") from exc
    except ValueError:  # a malformed header number: ITK reports the header
        return


def _inflate(path: Path, stream, kind: str, keep: bool = False) -> tuple[int, bytes]:
    """Decompress a gzip or zlib stream to its end; return (size, data if keep)."""
    def new():
        return zlib.decompressobj(32 + zlib.MAX_WBITS)  # either wrapper; both end in a checksum
    decoder, size, parts, pending = new(), 0, [], b""
    try:
        while chunk := pending or stream.read(1 << 20):
            out = decoder.decompress(chunk)
            size += len(out)
            if keep:
                parts.append(out)
            pending = b""
            if decoder.eof and decoder.unused_data:  # gzip allows several members one after another
                pending, decoder = decoder.unused_data, new()
    except zlib.error as exc:
        raise InputError(f"{path}: damaged file: its {kind} data is corrupt ({exc}); {_RECOPY}") from exc
    if not decoder.eof:
        raise InputError(f"{path}: damaged file: its {kind} stream ends early (the file was cut off, e.g. by an "
                         f"interrupted copy or download); {_RECOPY}")
    return size, b"".join(parts)


def _check_size(path: Path, expected: int | None, available: int) -> None:
    if expected is not None and available < expected:
        raise InputError(f"{path}: damaged file: the header declares {expected:,} bytes of voxel data but only "
                         f"{max(available, 0):,} are there (the file was cut off); {_RECOPY}")


def nonfinite_message(name, count: int, index) -> str:
    return (f"{name}: has {count} NaN/Inf voxels (the first at voxel index {tuple(int(i) for i in index)}); "
            "replace or mask them (e.g. set them to 0) and save the image again")


def _check_nifti(path: Path) -> None:
    import nibabel

    with open(path, "rb") as handle:
        gzipped = handle.read(2) == b"\x1f\x8b"
        handle.seek(0)
        raw = _inflate(path, handle, "gzip", keep=True)[1] if gzipped else handle.read()
    if raw[344:348] == b"n+1\0":  # single-file NIfTI-1/-2 magic; anything else is left to ITK
        header_class = nibabel.Nifti1Header
    elif raw[4:8] == b"n+2\0":
        header_class = nibabel.Nifti2Header
    else:
        return
    try:
        header = header_class.from_fileobj(io.BytesIO(raw))
        shape, dtype, offset = header.get_data_shape(), header.get_data_dtype(), int(header.get_data_offset())
    except Exception:  # nibabel's header errors have no common base; ITK will report the header
        return
    count = int(np.prod(shape))
    _check_size(path, count * dtype.itemsize, len(raw) - offset)
    if dtype.kind in "fc":
        finite = np.isfinite(np.frombuffer(raw, dtype, count=count, offset=offset))
        if not finite.all():
            first = np.unravel_index(int(np.argmin(finite)), shape, order="F")  # NIfTI stores x fastest
            raise InputError(nonfinite_message(path, int((~finite).sum()), first))


def _expected_bytes(path: Path) -> int | None:
    """Voxel bytes the header declares, from ITK's reading of the header alone."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        one = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID(), reader.GetNumberOfComponents())
    except (RuntimeError, TypeError, ValueError):
        return None
    return int(np.prod(reader.GetSize())) * sitk.GetArrayViewFromImage(one).nbytes


def _data_file(path: Path, name: str) -> Path | None:
    """A detached data file named in a header; None for lists/patterns of files (not checked here)."""
    if name.upper().startswith("LIST") or "%" in name:
        return None
    data = path.parent / name
    if not data.is_file():
        raise InputError(f"{path}: its voxel data file {data} (named in the header) is missing; keep it beside "
                         "the header, or give the image as one file (.nii.gz, .nrrd, .mha)")
    return data


def _check_nrrd(path: Path) -> None:
    blob = path.read_bytes()
    if not blob.startswith(b"NRRD"):
        return
    end = blob.find(b"\n\n")
    start = len(blob) if end < 0 else end + 2
    fields = {}
    for line in blob[:start].decode("latin-1").splitlines()[1:]:
        key, sep, value = line.partition(":")
        if sep and not line.startswith("#") and not value.startswith("="):  # skip comments and key:=value
            fields[key.strip().lower().replace(" ", "")] = value.strip()
    encoding = fields.get("encoding", "").lower()
    encoding = "gzip" if encoding == "gz" else encoding
    if encoding not in ("raw", "gzip"):  # text encodings ITK checks itself; bzip2 it cannot read
        return
    if "datafile" in fields:
        data_path = _data_file(path, fields["datafile"])
        if data_path is None:
            return
        blob, start = data_path.read_bytes(), 0
    for _ in range(int(fields.get("lineskip", 0))):
        start = blob.find(b"\n", start) + 1 or len(blob)
    skip = int(fields.get("byteskip", 0))
    data = memoryview(blob)[start:]
    if encoding == "raw":
        available = len(data) - max(skip, 0)  # byte skip -1: the data are the file's last bytes
    else:
        available = _inflate(path, io.BytesIO(data), encoding)[0] - max(skip, 0)
    _check_size(path, _expected_bytes(path), available)


def _check_metaimage(path: Path) -> None:
    blob = path.read_bytes()
    fields, start = {}, 0
    while "elementdatafile" not in fields:  # ElementDataFile is the header's last line
        end = blob.find(b"\n", start)
        key, sep, value = blob[start:len(blob) if end < 0 else end].decode("latin-1").partition("=")
        if not sep or end < 0 and key.strip().lower() != "elementdatafile":
            return  # not a MetaImage header: left to ITK
        fields[key.strip().lower()] = value.strip()
        start = len(blob) if end < 0 else end + 1
    if fields.get("binarydata", "true").lower() != "true":
        return
    skip = 0
    if fields["elementdatafile"].upper() != "LOCAL":
        data_path = _data_file(path, fields["elementdatafile"])
        if data_path is None:
            return
        blob, start, skip = data_path.read_bytes(), 0, int(fields.get("headersize", 0))
    data = memoryview(blob)[start + max(skip, 0):]  # header size -1: the data are the file's last bytes
    if fields.get("compresseddata", "false").lower() == "true":
        available = _inflate(path, io.BytesIO(data), "zlib")[0]
    else:
        available = len(data)
    _check_size(path, _expected_bytes(path), available)
