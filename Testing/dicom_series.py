"""A single-frame MR series written with pydicom: the test data of the DICOM tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

ROW, COLUMN = np.array([0.866025, 0.5, 0.0]), np.array([-0.5, 0.866025, 0.0])  # oblique: 30° about z


def write_series(folder: Path, array: np.ndarray, positions=None, spacing=(1.4, 1.5, 8.0), uids=None,
                 drop=(), prefix="im", image_type=("ORIGINAL", "PRIMARY", "M", "NONE"), acquisition=1,
                 orientation=None, per_slice=None, preamble=True) -> list[Path]:
    """Single-frame MR files (one per slice, oblique) with `array`'s voxels; `uids` (study, series,
    frame of reference) lets two calls write two stacks of one series; `drop`: tags left out;
    `per_slice`: {keyword: one value per slice}; preamble=False: without the 128-byte preamble and
    'DICM' (older files; GDCM reads them, pydicom only with force=True)."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame_of_reference = uids or (generate_uid(), generate_uid(), generate_uid())
    row, column = orientation or (ROW, COLUMN)
    normal = np.cross(row, column)
    positions = [k * spacing[2] for k in range(len(array))] if positions is None else positions
    files = []
    for k, (plane, offset) in enumerate(zip(array, positions)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Synthetic^LGE", "SYN01", "", "O"
        ds.StudyInstanceUID, ds.StudyID, ds.StudyDate, ds.StudyTime = study, "1", "20240101", "120000"
        ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.Modality, ds.InstanceNumber = series, 7, "MR", k + 1
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference, ""
        ds.ImageType, ds.AcquisitionNumber = list(image_type), acquisition
        ds.ImageOrientationPatient = [*row, *column]
        ds.ImagePositionPatient = [round(float(v), 4) for v in np.array((10.0, -20.0, 30.0)) + offset * normal]
        ds.PixelSpacing, ds.SliceThickness = [spacing[1], spacing[0]], spacing[2]
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = plane.tobytes()
        for keyword, values in (per_slice or {}).items():
            setattr(ds, keyword, values[k])
        for tag in drop:
            delattr(ds, tag)
        path = folder / f"{prefix}{len(array) - k:03d}.dcm"  # named against the slice order
        ds.save_as(path, enforce_file_format=True)
        if not preamble:
            path.write_bytes(path.read_bytes()[132:])
        files.append(path)
    return files
