"""Preprocessing grid mapping, intensity normalisation, label clean-up, and bounded inference memory."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ScarNetCore.labels import BACKGROUND, BLOOD_POOL, MVO, MYOCARDIUM, SCAR
from ScarNetCore.pipeline.postprocess import clean_labels
from ScarNetCore.pipeline.preprocessing import GridMapping, PreprocessConfig, normalize_intensity, prepare_slices

CONFIG = PreprocessConfig()


@pytest.mark.parametrize("shape", [(200, 180), (256, 256), (255, 131), (300, 301), (400, 90)])
def test_grid_mapping_round_trip_at_native_spacing(shape):
    spacing = (CONFIG.target_spacing_mm,) * 2
    mapping = GridMapping.for_slice(shape, spacing, CONFIG)
    assert mapping.resized == shape  # no resampling at the model's own pixel size
    x = torch.rand(2, 1, *shape)
    grid = mapping.to_grid(x)
    assert grid.shape == (2, 1, 256, 256)
    back = mapping.from_grid(grid)
    assert back.shape == x.shape
    # identity inside the centred 256×256 window; outside it (cropped away) is background (1 in channel 0)
    inside = torch.zeros(shape, dtype=torch.bool)
    r0, c0 = max(0, -((256 - shape[0]) // 2)), max(0, -((256 - shape[1]) // 2))
    inside[r0:r0 + min(256, shape[0]), c0:c0 + min(256, shape[1])] = True
    assert torch.equal(back[..., inside], x[..., inside])
    assert torch.all(back[..., ~inside] == 1)


def test_from_grid_probabilities_sum_to_one():
    # EMIDEC-like slice: 248×258 at 1.40625 mm → resized larger than the grid (cropped) and resampled back
    mapping = GridMapping.for_slice((248, 258), (1.40625, 1.40625), CONFIG)
    assert mapping.resized == (279, 290)
    probs = torch.softmax(torch.randn(3, 5, 256, 256), dim=1)
    back = mapping.from_grid(probs)
    assert back.shape == (3, 5, 248, 258)
    assert torch.allclose(back.sum(dim=1), torch.ones(3, 248, 258), atol=1e-5)
    assert back.min() >= 0
    # a small field of view is padded: the padding maps back to nothing, the slice keeps its probabilities
    small = GridMapping.for_slice((100, 90), (1.0, 1.0), CONFIG)
    assert torch.allclose(small.from_grid(probs).sum(dim=1), torch.ones(3, 100, 90), atol=1e-5)


def test_normalize_intensity_robust_to_outliers():
    rng = np.random.default_rng(0)
    slice2d = rng.uniform(100, 300, (128, 128)).astype(np.float32)
    spiked = slice2d.copy()
    spiked[5, 5], spiked[6, 6] = 1e9, -1e9  # e.g. a corrupt voxel or a fat-saturation artefact
    a, b = normalize_intensity(slice2d), normalize_intensity(spiked)
    assert b.min() == 0 and b.max() == 1 and b.dtype == np.float32
    assert abs(float(np.median(b)) - 0.5) < 0.05  # the outliers do not squash the tissue contrast
    mask = np.ones_like(a, bool)
    mask[5, 5] = mask[6, 6] = False
    assert np.abs(a[mask] - b[mask]).max() < 0.02
    assert not normalize_intensity(np.full((8, 8), 5.0)).any()  # constant slice: zeros, no NaN
    batch, mapping = prepare_slices(np.stack([spiked, slice2d]), (1.25, 1.25), CONFIG)
    assert batch.shape == (2, 1, 256, 256) and 0 <= batch.min() and batch.max() <= 1


def _disk(shape, centre, radius):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


def test_clean_labels():
    labels = np.zeros((2, 64, 64), np.uint8)
    for z in range(2):
        labels[z][_disk((64, 64), (30, 30), 14)] = MYOCARDIUM
        labels[z][_disk((64, 64), (30, 30), 8)] = BLOOD_POOL
    labels[:, 20:24, 40:44] = SCAR
    labels[:, 21:23, 41:43] = MVO            # MVO inside scar: stays MVO
    labels[0, 36:38, 18:20] = MVO           # MVO in the wall with no scar next to it: becomes scar
    labels[1, 58:62, 2:6] = SCAR             # stray blob far from the heart: background
    labels[0, 2:5, 55:58] = MYOCARDIUM
    labels[0, 58:61, 58:61] = BLOOD_POOL     # second blood-pool component: background
    out = clean_labels(labels)
    assert out is not labels and labels[1, 58, 2] == SCAR  # input untouched
    assert (out[1, 58:62, 2:6] == BACKGROUND).all() and (out[0, 2:5, 55:58] == BACKGROUND).all()
    assert (out[0, 58:61, 58:61] == BACKGROUND).all()
    assert (out[:, 21:23, 41:43] == MVO).all()
    assert (out[0, 36:38, 18:20] == SCAR).all()
    kept = labels.copy()
    kept[1, 58:62, 2:6] = kept[0, 2:5, 55:58] = kept[0, 58:61, 58:61] = BACKGROUND
    kept[0, 36:38, 18:20] = SCAR
    np.testing.assert_array_equal(out, kept)  # nothing else changes
    np.testing.assert_array_equal(clean_labels(out), out)  # idempotent
    assert clean_labels(labels[0]).shape == (64, 64)  # 2-D works too


@pytest.mark.parametrize("generation", ["v1", "v2"])
def test_memory_bounded_without_probabilities(generation, segmenter, v1_model_and_path):
    """No probability volume is held on the host (numpy) when probabilities are not requested.

    2 slices of 1024×1024 keep inference cheap (the networks see their fixed grids either way) while the
    full 5-class float32 probability volume (42 MB) dominates the arrays of a whole-slice (v1) model;
    torch tensors are not seen by tracemalloc, only numpy, which is where a volume-sized buffer would
    live. The cascade (v2) also holds stage 1's LV probability on the native grid and labels its 3-D
    components there (about 1.5 volumes at peak, measured 63 MB): asking for probabilities must add the
    volume, not asking must not.
    """
    from ScarNetCore.pipeline.segmenter import Segmenter
    if generation == "v1":
        segmenter = Segmenter(v1_model_and_path[1], device="cpu", precision="fp32")
    rng = np.random.default_rng(0)
    array = rng.integers(0, 1000, (2, 1024, 1024), dtype=np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.3125, 0.3125, 8.0))
    full_probabilities = array.size * 5 * 4

    def peak_of(probabilities: bool) -> int:
        tracemalloc.start()
        try:
            segmenter.segment(image, batch_size=1, return_probabilities=probabilities)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    peak, with_probabilities = peak_of(False), peak_of(True)
    assert with_probabilities - peak > 0.9 * full_probabilities, f"{peak / 1e6:.1f} / {with_probabilities / 1e6:.1f} MB"
    # measured without probabilities: v1 ~27 MB, v2 ~63 MB; with them about 42 MB more
    assert peak < (1 if generation == "v1" else 2) * full_probabilities, f"peak {peak / 1e6:.1f} MB"
