"""Reading images safely and writing outputs atomically."""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError

_UMASK = os.umask(0)
os.umask(_UMASK)
READABLE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".png")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    An interrupted or failed write leaves neither a half file nor a damaged earlier result.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # keep the full suffix (e.g. .nii.gz) so writers pick the right format from the name
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}-", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file private (0600); results get the usual permissions of a new file
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_image_atomic(image: sitk.Image, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    return Path(path)


def input_stem(path: str | os.PathLike) -> str:
    """Name of an input without folders and image suffix: the prefix of every output written for it."""
    name = Path(str(path).rstrip("/")).name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_image(path: str | os.PathLike) -> sitk.Image:
    """Read a NIfTI/NRRD/MHA/PNG file or a DICOM series folder; raise InputError with a clear reason."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        series = reader.GetGDCMSeriesIDs(str(path))
        if not series:
            raise InputError(f"{path}: folder holds no DICOM series; give a DICOM series folder or an image file")
        if len(series) > 1:
            raise InputError(f"{path}: folder holds {len(series)} DICOM series; put the LGE short-axis series in a folder of its own")
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
        try:
            return reader.Execute()
        except RuntimeError as exc:
            raise InputError(f"{path}: cannot read the DICOM series ({_first_line(exc)})") from exc
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"{path}: not a readable image ({_first_line(exc)}); "
                         f"give a NIfTI, NRRD, MHA file or a DICOM folder") from exc


def validate_image(image: sitk.Image, name: str = "input") -> None:
    """Reject what the slice-wise model cannot segment, saying what to do instead."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{name}: has {image.GetNumberOfComponentsPerPixel()} components per voxel (RGB/vector); "
                         "give a single-channel greyscale LGE image")
    if image.GetDimension() not in (2, 3):
        raise InputError(f"{name}: is {image.GetDimension()}-D; give one 3-D LGE stack "
                         "(split a 4-D/multi-phase series and choose one phase)")
    array = sitk.GetArrayViewFromImage(image)
    if array.size == 0:
        raise InputError(f"{name}: is empty (size {image.GetSize()})")
    if not np.issubdtype(array.dtype, np.number):
        raise InputError(f"{name}: voxel type {image.GetPixelIDTypeAsString()} is not numeric")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise InputError(f"{name}: has {bad} NaN/Inf voxels; fix or mask them before segmenting")
    if float(array.max()) == float(array.min()):
        raise InputError(f"{name}: is constant (every voxel = {float(array.min()):g}); it holds no image")


def _first_line(exc: BaseException) -> str:
    """The reason from a SimpleITK exception: its last line, without ITK's source location or prefix."""
    text = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    # SimpleITK puts "Exception thrown in ... file.cxx:99:" first and the reason after "sitk::ERROR:"
    meaningful = [line.split("sitk::ERROR:", 1)[-1].strip() for line in text
                  if not line.startswith("Exception thrown in SimpleITK")]
    return (meaningful or text or ["unknown error"])[-1][:200]
