"""The default model (v2) against the field of view, and against inputs that are not hearts.

On the two real EMIDEC volumes (real spacing; not training cases of the model): the volume cropped
to about 100 mm around the heart, cropped to 96 mm and resampled to 0.75 mm pixels (another centre's
heart-centred stack), and padded to about 400 mm with the heart off-centre. The myocardium Dice of
each stays within 0.03 of the uncropped result's, both scored on the changed grid against the
same reference, and no result is empty. Noise, a smooth non-anatomical image, a chest region without
the heart and real images that are not hearts (brain MRI, CT, abdominal MRI and pictures that ship
inside nibabel, pydicom and matplotlib) come back with no LV, or flagged; one more (an elevation map)
is a known failure, marked so.
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from ScarNetCore.labels import myocardium_mask

from conftest import NEGATIVE_IMAGE, POSITIVE_IMAGE, VOLUMES, needs_data

pytestmark = pytest.mark.slow   # the trained model's quality (conftest.py: -m "not slow" leaves it out)

TOLERANCE = 0.03


@pytest.fixture(scope="module")
def segmenter():
    from ScarNetCore.pipeline.segmenter import Segmenter
    return Segmenter(None, device="cpu", precision="fp32")


def _volume(path):
    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    image = sitk.ReadImage(str(path))
    labels = sitk.Cast(sitk.Round(sitk.ReadImage(str(VOLUMES / path.name.replace("_image", "_label")))), sitk.sitkUInt8)
    labels.CopyInformation(image)
    return image, labels


def _myo_dice(pred: sitk.Image, ref: sitk.Image) -> float:
    p, r = (myocardium_mask(sitk.GetArrayFromImage(x)) for x in (pred, ref))
    return float(2 * (p & r).sum() / (p.sum() + r.sum()))


def _heart_centre_index(labels) -> np.ndarray:
    """(x, y) voxel index of the reference LV centre (labels 1-4) in the slice plane."""
    z, y, x = np.nonzero(sitk.GetArrayFromImage(labels) > 0)
    return np.array([x.mean(), y.mean()])


# Each change acts alike on [image, reference labels, labels of the uncropped run]: the image
# linearly, label volumes by nearest neighbour, so both runs are scored on the same grid against
# the same reference and the difference is the model's, not the resampling's.
def _crop(volumes, centre, side_mm: float):
    image = volumes[0]
    half = side_mm / 2 / np.array(image.GetSpacing()[:2])
    lo = np.maximum(np.round(centre - half), 0).astype(int)
    hi = np.minimum(np.round(centre + half), image.GetSize()[:2]).astype(int)
    return [v[lo[0]:hi[0], lo[1]:hi[1], :] for v in volumes]


def _resample(volumes, pixel_mm: float):
    image = volumes[0]
    spacing = (pixel_mm, pixel_mm, image.GetSpacing()[2])
    size = [int(round(n * s / t)) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing)]
    return [sitk.Resample(v, size, sitk.Transform(), sitk.sitkLinear if k == 0 else sitk.sitkNearestNeighbor,
                          v.GetOrigin(), spacing, v.GetDirection(), 0, v.GetPixelID()) for k, v in enumerate(volumes)]


def _pad(volumes, centre, side_mm: float, heart_at: tuple[float, float]):
    """Pad to side_mm with the heart at the given fraction of the new field of view (0.5 = centred)."""
    image = volumes[0]
    total = np.round(side_mm / np.array(image.GetSpacing()[:2])).astype(int)
    lower = np.maximum(np.round(np.array(heart_at) * total - centre), 0).astype(int)
    upper = np.maximum(total - lower - np.array(image.GetSize()[:2]), 0).astype(int)
    return [sitk.ConstantPad(v, [int(lower[0]), int(lower[1]), 0], [int(upper[0]), int(upper[1]), 0], 0)
            for v in volumes]


VARIANTS = {
    "crop 100 mm": lambda v, c: _crop(v, c, 100),
    "crop 96 mm at 0.75 mm pixels": lambda v, c: _resample(_crop(v, c, 96), 0.75),
    "pad 400 mm, heart upper left": lambda v, c: _pad(v, c, 400, (0.3, 0.3)),
    "pad 400 mm, heart lower right": lambda v, c: _pad(v, c, 400, (0.72, 0.68)),
}


@needs_data
@pytest.mark.parametrize("path", [POSITIVE_IMAGE, NEGATIVE_IMAGE], ids=["positive", "negative"])
def test_field_of_view_does_not_change_the_myocardium(segmenter, path):
    image, labels = _volume(path)
    uncropped = segmenter.segment(image).labels
    centre = _heart_centre_index(labels)
    changes = {}
    for name, make in VARIANTS.items():
        changed_image, ref, before = make([image, labels, uncropped], centre)
        after = segmenter.segment(changed_image).labels
        assert myocardium_mask(sitk.GetArrayFromImage(after)).any(), f"{name}: empty result"
        changes[name] = _myo_dice(after, ref) - _myo_dice(before, ref)
    print(f"{path.name}: myocardium Dice {_myo_dice(uncropped, labels):.3f} uncropped; changes " +
          ", ".join(f"{k}: {v:+.3f}" for k, v in changes.items()))
    assert all(abs(v) <= TOLERANCE for v in changes.values()), changes


def _like(reference: sitk.Image, array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.CopyInformation(reference)
    return image


@needs_data
@pytest.mark.parametrize("kind", ["gaussian noise", "rician noise", "smooth blobs", "chest without heart"])
def test_inputs_that_are_not_hearts_are_not_called_hearts(segmenter, kind):
    from scipy import ndimage
    image, labels = _volume(POSITIVE_IMAGE)
    rng = np.random.default_rng(7)
    shape = sitk.GetArrayFromImage(image).shape
    if kind == "gaussian noise":
        test = _like(image, 100 + 30 * rng.standard_normal(shape))
    elif kind == "rician noise":
        test = _like(image, np.hypot(rng.normal(0, 50, shape), rng.normal(0, 50, shape)))
    elif kind == "smooth blobs":
        test = _like(image, ndimage.gaussian_filter(rng.standard_normal(shape), (0, 6, 6)))
    else:  # a 100 mm region of the same chest that holds no LV
        ref = sitk.GetArrayFromImage(labels) > 0
        side = int(100 / image.GetSpacing()[0])
        x_lv = np.nonzero(ref.any((0, 1)))[0]
        x0 = 0 if x_lv.min() > side else image.GetSize()[0] - side
        test = image[x0:x0 + side, :, :]
        assert not (sitk.GetArrayFromImage(labels[x0:x0 + side, :, :]) > 0).any()
    _assert_not_a_confident_heart(segmenter, test, kind)


def _assert_not_a_confident_heart(segmenter, image: sitk.Image, kind: str) -> None:
    result = segmenter.segment(image)
    myo_ml = myocardium_mask(sitk.GetArrayFromImage(result.labels)).sum() * np.prod(image.GetSpacing()) / 1000
    print(f"{kind}: flags {result.qc_flags}, myocardium {myo_ml:.1f} mL, confidence {result.confidence}")
    assert "no_lv_found" in result.qc_flags or "low_confidence" in result.qc_flags


# kind: (package, file in its data folder, and for a 2-D image: copies stacked, spacing in mm or None: the file's)
PACKAGED = {"brain EPI volume": ("nibabel", "example4d.nii.gz", None),     # 4-D fMRI series: its first frame
            "brain MRI volume": ("nibabel", "anatomical.nii", None),
            "brain MRI slice": ("matplotlib", "s1045.ima.gz", (1, (0.9, 0.9, 5.0))),
            "photograph": ("matplotlib", "grace_hopper.jpg", (1, (1.0, 1.0, 10.0))),
            "elevation map": ("matplotlib", "topobathy.npz", (8, (1.0, 1.0, 10.0))),
            "picture of a parcel": ("matplotlib", "Minduka_Present_Blue_Pack.png", (8, (1.0, 1.0, 10.0))),
            "CT slice": ("pydicom", "CT_small.dcm", (8, None)),     # 85 mm across: small enough for stage 2 to judge whole
            "abdominal MRI slice": ("pydicom", "examples_overlay.dcm", (8, None))}
FOLDERS = {"nibabel": ("tests", "data"), "matplotlib": ("mpl-data", "sample_data"), "pydicom": ("data", "test_files")}


def _packaged_image(kind: str) -> sitk.Image:
    """Real non-cardiac images that ship inside installed packages (nothing is downloaded)."""
    import gzip
    import importlib
    from pathlib import Path

    import matplotlib.image
    import pydicom
    package, name, stack = PACKAGED[kind]
    path = Path(importlib.import_module(package).__file__).parent.joinpath(*FOLDERS[package], name)
    if not path.exists():
        pytest.skip(f"{path} is not in this installation of {package}")
    if stack is None:
        image = sitk.ReadImage(str(path))
        return image[:, :, :, 0] if image.GetDimension() == 4 else image
    copies, spacing = stack
    if path.suffix == ".gz":    # 256 x 256 uint16, little-endian
        pixels = np.frombuffer(gzip.open(path).read(), "<u2").reshape(256, 256)
    elif path.suffix == ".npz":
        pixels = np.load(path)["topo"]
    elif path.suffix == ".dcm":
        dataset = pydicom.dcmread(path)
        pixels = dataset.pixel_array
        row_mm, column_mm = (float(v) for v in dataset.PixelSpacing)
        spacing = (column_mm, row_mm, 10.0)
    else:                       # a picture, in grey
        pixels = matplotlib.image.imread(path)[..., :3].mean(-1)
    image = sitk.GetImageFromArray(np.repeat(pixels[None], copies, 0).astype(np.float32))
    image.SetSpacing(spacing)
    return image


# A known failure (v2.9-v2.11): a heart-sized, ring-like patch in a small image is drawn as a confident
# heart (v2.11: 134 mL flagged only lv_at_image_edge): stage 1 finds an LV there, and stage 2 has never
# seen such images. Strict, so the day it passes the mark must go. (The parcel was one too until stage 2
# needed stage 1 to see at least min_lv_area_mm2 on some slice before judging a whole image: now no LV.)
KNOWN_FAILURE = pytest.mark.xfail(strict=True, reason="stage 2 calls a confident heart in this non-cardiac image")


@pytest.mark.parametrize("kind", ["brain EPI volume", "brain MRI volume", "brain MRI slice", "photograph",
                                  pytest.param("elevation map", marks=KNOWN_FAILURE), "picture of a parcel",
                                  "CT slice", "abdominal MRI slice"])
def test_real_images_that_are_not_hearts_are_not_called_hearts(segmenter, kind):
    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    _assert_not_a_confident_heart(segmenter, _packaged_image(kind), kind)
