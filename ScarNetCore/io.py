"""Reading images safely (file integrity: integrity.py) and writing outputs atomically."""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .integrity import check_file_complete, nonfinite_message

_UMASK = os.umask(0)
os.umask(_UMASK)
# image files read_image takes; input_stem strips them to name the outputs
READABLE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png")


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


def json_safe(value):
    """Strict JSON for other tools: NaN (e.g. scar Dice of a case without infarct) becomes null,
    ±inf (e.g. HD95 with an empty prediction) the strings "inf"/"-inf"; keys become strings."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json_atomic(data, path: str | os.PathLike) -> Path:
    """Strict JSON (json_safe; other objects, e.g. paths, as their text), written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(json_safe(data), indent=1, allow_nan=False, default=str) + "\n", encoding="utf-8")
    return Path(path)


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
    for suffix in READABLE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_image(path: str | os.PathLike, series: str | None = None) -> sitk.Image:
    """Read a NIfTI/NRRD/MHA/PNG file or a DICOM series folder (`series`: the SeriesInstanceUID to read
    when the folder holds several); raise InputError with a clear reason."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        return _read_dicom_folder(path, series)
    # ITK reads a cut-off stream without complaint (zeros fill the rest) and turns NaN in NIfTI into 0
    check_file_complete(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"{path}: not a readable image ({_itk_reason(exc)}); "
                         f"give a NIfTI, NRRD, MHA file or a DICOM folder") from exc


def _read_dicom_folder(path: Path, series: str | None) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in dicom_series_files(path, series)])
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot read the DICOM series ({_itk_reason(exc)}); copy the series again, "
                         "or export it uncompressed from the scanner/PACS") from exc


def dicom_series_files(path: str | os.PathLike, series_uid: str | None = None) -> list[Path]:
    """The files of one DICOM series in a folder, in slice order (the image's k axis): the only one,
    or `series_uid`. Series are never mixed.

    The reader, the run record's checksums and the DICOM SEG's source references all use this list.
    """
    path = Path(path)
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(path))
    files = {uid: reader.GetGDCMSeriesFileNames(str(path), uid) for uid in series}
    in_series = {Path(f).name for names in files.values() for f in names}
    # GDCM silently leaves out a slice file it cannot parse: the stack would just be one slice short
    damaged = [p.name for p in sorted(path.iterdir()) if p.is_file() and p.name not in in_series
               and p.name.upper() != "DICOMDIR" and _looks_like_dicom(p)]
    if damaged:
        more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
        raise InputError(f"{path}: {damaged[0]}{more} is not a readable DICOM file (truncated or damaged); "
                         "copy the series again from the scanner/PACS, or move that file out of the folder")
    if not series:
        raise InputError(f"{path}: folder holds no DICOM series; give a DICOM series folder or an image file")
    if series_uid is not None and series_uid not in files:
        raise InputError(f"{path}: holds no DICOM series {series_uid}; it holds {_describe_series(files)}")
    if series_uid is None and len(series) > 1:
        raise InputError(f"{path}: folder holds {len(series)} DICOM series: {_describe_series(files)}; "
                         "pick the LGE short-axis one with --series UID")
    return [Path(f) for f in files[series_uid or series[0]]]


def _describe_series(files: dict[str, tuple]) -> str:
    """UID, description and slice count of each series, from the first file's header."""
    parts = []
    for uid, names in files.items():
        reader = sitk.ImageFileReader()
        reader.SetFileName(names[0])
        try:
            reader.ReadImageInformation()
            description = reader.GetMetaData("0008|103e").strip() if reader.HasMetaDataKey("0008|103e") else ""
        except RuntimeError:
            description = ""
        parts.append(f"{uid} ({description or 'no description'}, {len(names)} file(s))")
    return "; ".join(parts)


def input_files(path: str | os.PathLike, series: str | None = None) -> list[Path]:
    """Every file an input consists of: the file itself, or each file of a DICOM series folder."""
    path = Path(path)
    return dicom_series_files(path, series) if path.is_dir() else [path]


def _looks_like_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom", ".ima"):
        return True
    with open(path, "rb") as handle:
        return handle.read(132)[128:] == b"DICM"  # the DICOM Part 10 preamble


# ------------------------------------------------------------------------ is it an LGE image?
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
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        if not finite.all():
            first = np.unravel_index(int(np.argmin(finite)), array.shape)[::-1]  # ITK index order (x, y, z)
            raise InputError(nonfinite_message(name, int((~finite).sum()), first))
    if float(array.max()) == float(array.min()):
        raise InputError(f"{name}: is constant (every voxel = {float(array.min()):g}); it holds no image")


LABEL_MAP_MAX_VALUES = 8  # a label map has a handful of integer values; an LGE image has hundreds


def label_map_message(name: str, evidence: str, hint: str) -> str:
    return f"{name}: looks like a label map (a segmentation), not an LGE image: {evidence}; {hint}"


def check_not_label_map(image: sitk.Image, name: str = "input",
                        hint: str = "give the greyscale LGE image, or pass --force to segment it anyway") -> None:
    """Refuse a segmentation given as the image (an easy mix-up whose "result" would be nonsense).

    Two to LABEL_MAP_MAX_VALUES distinct integer values count as a label map; one value is left to
    validate_image (constant image), vector images too.
    """
    if image.GetNumberOfComponentsPerPixel() != 1:
        return
    array = sitk.GetArrayViewFromImage(image)
    if array.size == 0 or len(np.unique(array.ravel()[::101])) > LABEL_MAP_MAX_VALUES:
        return  # a sample already has too many values: the common case costs one pass over 1 % of voxels
    values = np.unique(array)
    if 2 <= len(values) <= LABEL_MAP_MAX_VALUES and np.all(values == np.round(values)):
        shown = ", ".join(f"{v:g}" for v in values.astype(float))
        raise InputError(label_map_message(name, f"{image.GetPixelIDTypeAsString()} voxels with only "
                                           f"{len(values)} values ({shown})", hint))


def _itk_reason(exc: BaseException) -> str:
    """The reason from a SimpleITK exception: its last meaningful line, without ITK's source location or prefix."""
    text = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    # SimpleITK puts "Exception thrown in ... file.cxx:99:" first and the reason after "sitk::ERROR:"
    meaningful = [line.split("sitk::ERROR:", 1)[-1].strip() for line in text
                  if not line.startswith("Exception thrown in SimpleITK")]
    return (meaningful or text or ["unknown error"])[-1][:200]
