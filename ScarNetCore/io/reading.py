"""Reading images: NIfTI, NRRD, MHA, PNG and DICOM series folders (file integrity: integrity.py)."""
from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .integrity import check_file_complete

# image files read_image takes; input_stem strips them to name the outputs
READABLE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png")


def input_stem(path: str | os.PathLike) -> str:
    """Name of an input without folders and image suffix: the prefix of every output written for it."""
    name = Path(str(path).rstrip("/")).name
    for suffix in READABLE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_image(path: str | os.PathLike, series: str | None = None, notes: list[str] | None = None) -> sitk.Image:
    """Read a NIfTI/NRRD/MHA/PNG file or a DICOM series folder (`series`: the SeriesInstanceUID to read
    when the folder holds several, `UID:N` for stack N of a series holding several, see
    dicom_series_files); raise InputError with a clear reason. Facts the user should know about a
    DICOM series that is read anyway (uneven slice spacing) are appended to `notes`."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        return _read_dicom_folder(path, series, notes if notes is not None else [])
    # ITK reads a cut-off stream without complaint (zeros fill the rest) and turns NaN in NIfTI into 0
    check_file_complete(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"{path}: not a readable image ({_itk_reason(exc)}); "
                         f"give a NIfTI, NRRD, MHA file or a DICOM folder") from exc


def _read_dicom_folder(path: Path, series: str | None, notes: list[str]) -> sitk.Image:
    files, stack_notes, multiframe = _dicom_stack(path, series)
    notes.extend(stack_notes)
    if multiframe:
        return _read_multiframe(files[0])
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")  # named: ITK's file-type probe wants the 128-byte preamble, GDCM does not
    reader.SetFileNames([str(f) for f in files])  # in slice order: the image's slice k is files[k]
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot read the DICOM series ({_itk_reason(exc)}; transfer syntax "
                         f"{_transfer_syntax(files[0])}); copy the series again, or export it uncompressed "
                         "from the scanner/PACS") from exc


def dicom_series_files(path: str | os.PathLike, series_uid: str | None = None) -> list[Path]:
    """The files of one DICOM series in a folder, in slice order (the image's k axis): the only one,
    or `series_uid`. Series are never mixed; neither are stacks: a series holding several images at
    one slice position (PSIR magnitude and phase, repeated acquisitions, cine phases) is refused with
    its stacks listed, unless `series_uid` is `UID:N`, stack N of that list.

    The reader, the run record's checksums and the DICOM SEG's source references all use this list.
    """
    return _dicom_stack(Path(path), series_uid)[0]


def _series_files(path: Path, series_uid: str | None) -> tuple[str, list[Path]]:
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
    uid = series_uid or series[0]
    return uid, [Path(f) for f in files[uid]]


# what tells two images at one slice position apart (several stacks in one series), as the user would say it
STACK_KEYS = (("ImageType", "image type"), ("AcquisitionNumber", "acquisition"), ("EchoTime", "echo time"),
              ("InversionTime", "inversion time"), ("TriggerTime", "trigger time"),
              ("TemporalPositionIdentifier", "temporal position"))
_HEADER_TAGS = ["ImagePositionPatient", "ImageOrientationPatient", "NumberOfFrames", "TransferSyntaxUID",
                *(key for key, _ in STACK_KEYS)]
MISSING_SLICE_RATIO = 1.5      # a gap this many times the usual spacing is a missing slice
UNEVEN_SPACING_MM = 0.01       # positions are stored with a few decimals: smaller differences are rounding


def _dicom_stack(path: Path, series: str | None) -> tuple[list[Path], list[str], bool]:
    """(files of the one stack to read, in slice order; notes; whether it is one multi-frame file).
    Checks the slice geometry the image reader would hide: mixed orientations, several images at one
    position, a missing slice (refused), uneven spacing (noted: the image's grid has the mean spacing)."""

    uid, stack = series, None
    if series and ":" in series:  # UIDs hold digits and dots only
        uid, _, number = series.rpartition(":")
        if not number.isdigit():
            raise InputError(f"--series {series}: give a series UID, or UID:N for stack N of a series")
        stack = int(number)
    uid, files = _series_files(path, uid)
    heads = [_header(f) for f in files]
    if any(frame_count(h) > 1 for h in heads):
        if len(files) > 1:
            raise InputError(f"{path}: series {uid} holds {len(files)} multi-frame images; give a folder "
                             "holding the one multi-frame LGE image to segment")
        if stack not in (None, 1):
            raise InputError(f"{path}: series {uid} holds one multi-frame image, not several stacks; "
                             f"give --series {uid}")
        return files, [], True
    if any(getattr(h, "ImagePositionPatient", None) is None or getattr(h, "ImageOrientationPatient", None) is None
           for h in heads):
        return files, [], False  # no geometry to check; the reader places the slices as it can
    orientations = {tuple(np.round(np.asarray(h.ImageOrientationPatient, float), 3)) for h in heads}
    if len(orientations) > 1:
        raise InputError(f"{path}: series {uid} mixes images of {len(orientations)} orientations (e.g. a localiser "
                         "among the slices); give a folder holding only the LGE short-axis stack")
    row, column = np.reshape(next(iter(orientations)), (2, 3))
    normal = np.cross(row, column)
    position = np.array([float(np.dot(np.asarray(h.ImagePositionPatient, float), normal)) for h in heads])
    at = np.round(position, 2)
    if len(set(at)) < len(at):
        split = _stacks(heads, at)
        if split is None:
            raise InputError(f"{path}: series {uid} holds several images at one slice position that no "
                             "header tells apart; give a folder holding one LGE stack")
        keys, groups = split
        order = sorted(groups, key=lambda key: [_sort_key(v) for v in key])
        listed = "; ".join(f"--series {uid}:{n}: " + ", ".join(f"{STACK_KEYS[i][1]} {v or 'none'}" for i, v in zip(keys, key))
                           + f" ({len(groups[key])} images)" for n, key in enumerate(order, 1))
        if stack is None:
            raise InputError(f"{path}: series {uid} holds {len(order)} stacks of images at the same slice positions "
                             f"(e.g. PSIR magnitude and phase, or a repeated acquisition): {listed}; pick the "
                             "LGE stack with one of these --series options")
        if not 1 <= stack <= len(order):
            raise InputError(f"{path}: series {uid} has no stack {stack}; it holds {listed}")
        chosen = groups[order[stack - 1]]
        files, position = [files[i] for i in chosen], position[chosen]
    elif stack not in (None, 1):
        raise InputError(f"{path}: series {uid} holds one stack; give --series {uid}")
    order = np.argsort(position, kind="stable")  # along the normal, as GDCM sorts a plain series
    return [files[i] for i in order], _spacing_notes(path, uid, position[order]), False


def _header(path: Path):
    """The header tags _dicom_stack checks. force=True: a file without the 128-byte preamble (which
    GDCM reads) is read too, so no series passes unchecked."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS, force=True)
    except (InvalidDicomError, OSError) as exc:
        raise InputError(f"{path}: not a readable DICOM file ({exc}); copy the series again from the "
                         "scanner/PACS, or move that file out of the folder") from exc


def _stacks(heads, at: np.ndarray) -> tuple[tuple[int, ...], dict[tuple, list[int]]] | None:
    """Images at repeated slice positions split into stacks by header keys (indices into STACK_KEYS)
    that tell them apart: (keys, {their values: image indices}). Of the key sets that leave no position
    twice in a stack, the one giving the fewest stacks, then the fewest keys, in STACK_KEYS order
    (ImageType first). A key that changes from slice to slice within a stack (TriggerTime per heartbeat,
    AcquisitionNumber per breath-hold) would cut each stack into one-image pieces, so it is used only
    where nothing else tells the stacks apart. None when no key set does."""
    values = [[_value(h, key) for key, _ in STACK_KEYS] for h in heads]
    varying = [i for i in range(len(STACK_KEYS)) if len({v[i] for v in values}) > 1]
    best = None
    for size in range(1, len(varying) + 1):
        for keys in itertools.combinations(varying, size):
            groups: dict[tuple, list[int]] = {}
            for n, v in enumerate(values):
                groups.setdefault(tuple(v[i] for i in keys), []).append(n)
            if all(len(set(at[g])) == len(g) for g in groups.values()) and (best is None or len(groups) < len(best[1])):
                best = keys, groups
    return best


def _spacing_notes(path: Path, uid: str, position: np.ndarray) -> list[str]:
    if len(position) < 3:
        return []
    gaps = np.diff(position)
    usual = float(np.median(gaps))
    k = int(np.argmax(gaps))
    if gaps[k] > MISSING_SLICE_RATIO * usual:
        raise InputError(f"{path}: a slice is missing from series {uid}: {gaps[k]:.2f} mm between slices {k + 1} "
                         f"and {k + 2} (of {len(position)}), {usual:.2f} mm between the others; copy the complete "
                         "series again from the scanner/PACS (ScarNet does not fill a gap or resample)")
    if float(gaps.max() - gaps.min()) > max(UNEVEN_SPACING_MM, 0.01 * usual):
        mean = float(position[-1] - position[0]) / (len(position) - 1)
        off = float(np.abs(position - (position[0] + mean * np.arange(len(position)))).max())
        return [f"slice spacing is uneven ({gaps.min():.2f} to {gaps.max():.2f} mm): the label volume's grid "
                f"uses the mean {mean:.2f} mm, so a slice lies up to {off:.2f} mm from its own position there "
                "(volumes count each slice once; a DICOM SEG keeps each slice's own position)"]
    return []


def _value(header, key: str) -> str:
    value = getattr(header, key, None)
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def _sort_key(value: str):
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def frame_count(header) -> int:
    """Frames in a DICOM image (NumberOfFrames; 1 for a single-frame image)."""
    try:
        return int(getattr(header, "NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1


def _transfer_syntax(path: Path) -> str:
    import pydicom
    try:
        uid = pydicom.dcmread(path, stop_before_pixels=True, force=True).file_meta.TransferSyntaxUID
        return f"{uid.name} ({uid})"
    except Exception:
        return "unknown"


def _read_multiframe(path: Path) -> sitk.Image:
    """An enhanced (multi-frame) MR image, read with highdicom: its frames are placed by their own
    positions (per-frame functional groups), sorted into one regular stack, or refused."""
    import highdicom as hd
    try:
        volume = hd.imread(str(path)).get_volume(dtype=np.float32)
    except Exception as exc:  # highdicom's reason: irregular or several stacks, no decoder, no geometry
        reason = f"{type(exc).__name__}: {exc}"[:300]
        if any(word in reason.lower() for word in ("decod", "plugin", "handler", "compress")):
            hint = (f"its pixel data ({_transfer_syntax(path)}) cannot be decoded here; export it uncompressed "
                    "from the scanner/PACS, or install pylibjpeg")
        else:
            hint = ("its frames do not form one regular stack; export the LGE stack as single-frame images, "
                    "or as one multi-frame image per stack")
        raise InputError(f"{path}: cannot read this multi-frame DICOM image ({reason}); {hint}") from exc
    if volume.number_of_channel_dimensions:
        raise InputError(f"{path}: this multi-frame image holds {volume.shape} values (several images at each "
                         "position); export one LGE stack")
    return image_from_affine(volume.array, volume.affine)


def affine_of_image(image: sitk.Image) -> np.ndarray:
    """The 4x4 affine from (slice, row, column) indices of the image's numpy array to patient (LPS) mm:
    highdicom's Volume convention (ITK's index order is the reverse). The inverse of image_from_affine."""
    direction = np.asarray(image.GetDirection(), float).reshape(3, 3) * np.asarray(image.GetSpacing(), float)
    affine = np.eye(4)
    affine[:3, :3] = direction[:, ::-1]
    affine[:3, 3] = image.GetOrigin()
    return affine


def image_from_affine(array_kji: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A SimpleITK image from a [slice, row, column] array and the 4x4 affine from those indices to
    patient (LPS) mm, highdicom's Volume convention; the inverse of affine_of_image."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_kji))
    columns = np.asarray(affine, float)[:3, :3][:, ::-1]      # ITK index order: column, row, slice
    spacing = np.linalg.norm(columns, axis=0)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in (columns / spacing).ravel()])
    image.SetOrigin([float(v) for v in np.asarray(affine, float)[:3, 3]])
    return image


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


def _itk_reason(exc: BaseException) -> str:
    """The reason from a SimpleITK exception: its last meaningful line, without ITK's source location or prefix."""
    text = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    # SimpleITK puts "Exception thrown in ... file.cxx:99:" first and the reason after "sitk::ERROR:"
    meaningful = [line.split("sitk::ERROR:", 1)[-1].strip() for line in text
                  if not line.startswith("Exception thrown in SimpleITK")]
    return (meaningful or text or ["unknown error"])[-1][:200]
