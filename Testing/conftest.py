"""Shared fixtures for the engine tests.

Engine, CLI and output tests run a tiny seeded encoder-free v2 cascade (the shipped path: stage 1
finds the LV, stage 2 segments the crop around it) on two-slice extracts of the real EMIDEC volumes.
Its settings let random networks find an LV on any image, so every run gives labels to check.
v1 (one network on the whole slice, here with the LiteMedSAM encoder) has its own fixture,
v1_model_and_path, for the checkpoint tests of its file layout.

Tests that check the trained model's quality are marked slow: `python -m pytest Testing -q` runs
them, `-m "not slow"` leaves them out.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "emidec"
VOLUMES = DATA_ROOT / "volumes"
SLICE_IMAGES = DATA_ROOT / "slices" / "images"
POSITIVE_IMAGE = VOLUMES / "samplePositive_image.nii.gz"
NEGATIVE_IMAGE = VOLUMES / "sampleNegative_image.nii.gz"

needs_data = pytest.mark.skipif(not POSITIVE_IMAGE.exists(), reason=f"EMIDEC sample volumes not found at {VOLUMES}")


@pytest.fixture(autouse=True)
def _utf8_text_locale():
    """slicer-core (VTK/Qt) sets the C locale when first imported; text I/O in later tests (and in
    their subprocesses' output decoding) would then be ASCII. Restore the user's character type."""
    import locale
    yield
    locale.setlocale(locale.LC_CTYPE, "")


def _read(path: Path) -> sitk.Image:
    sitk.ProcessObject_SetGlobalWarningDisplay(False)  # "unexpected scales in sform" on every EMIDEC read
    return sitk.ReadImage(str(path))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: checks the trained model's quality on real data (minutes on a CPU); "
                                       "deselect with -m \"not slow\"")


# Settings under which random networks find an LV on any image: stage 1 calls every pixel LV (so the
# LV is the whole image, centred), no size minimum, no confidence minimum. Stage 2 then labels its crop.
TINY_CASCADE_PARAMS = dict(lv_threshold=1e-6, min_lv_area_mm2=0.0, min_stack_lv_mm2=0.0, low_confidence=0.0)


def tiny_cascade(seed: int = 0, **params):
    """A small seeded encoder-free v2 cascade (locate 224 px at 2 mm, segment 128 px at 1.25 mm) with
    TINY_CASCADE_PARAMS, overridden by `params`; eval mode."""
    import torch

    from ScarNetCore.model import ScarNet, ScarNetConfig
    from ScarNetCore.model.cascade import LOCATE_GEOMETRY, SEGMENT_GEOMETRY, CascadeParams, ScarNetCascade

    torch.manual_seed(seed)
    locate = ScarNet(ScarNetConfig(encoder="none", base_channels=4, num_classes=2, grid_size=LOCATE_GEOMETRY.grid_size))
    segment = ScarNet(ScarNetConfig(encoder="none", base_channels=4, grid_size=SEGMENT_GEOMETRY.grid_size))
    return ScarNetCascade(locate, segment, params=CascadeParams(**{**TINY_CASCADE_PARAMS, **params})).eval()


@pytest.fixture(scope="session")
def model_and_path(tmp_path_factory):
    """The tiny seeded cascade (tiny_cascade()) and its v2 checkpoint file, named test-random.

    Geometry, CLI, cancel and file-handling behaviour do not depend on the weights being trained.
    Do not train or modify the returned model.
    """
    from ScarNetCore.model.checkpoint import save_cascade

    model = tiny_cascade()
    path = save_cascade(tmp_path_factory.mktemp("model") / "model.safetensors", model, name="test-random")
    return model, path


@pytest.fixture(scope="session")
def model_path(model_and_path) -> Path:
    return model_and_path[1]


@pytest.fixture(scope="session")
def v1_model_and_path(tmp_path_factory):
    """A v1 ScarNet (pretrained LiteMedSAM encoder, seeded random U-Net) and its checkpoint file: the
    v1 file layout (one network's config and preprocessing, encoder weights in the file)."""
    import torch

    from ScarNetCore.model import ScarNet, ScarNetConfig
    from ScarNetCore.model.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = ScarNet(ScarNetConfig()).eval()
    path = save_checkpoint(tmp_path_factory.mktemp("v1_model") / "model.safetensors", model, name="test-random-v1")
    return model, path


@pytest.fixture(scope="session")
def segmenter(model_path):
    """fp32 on CPU: deterministic across runs and machines (auto picks bf16 where the CPU has it)."""
    from ScarNetCore.pipeline.segmenter import Segmenter
    return Segmenter(model_path, device="cpu", precision="fp32")


@pytest.fixture(scope="session")
def positive_image() -> sitk.Image:
    if not POSITIVE_IMAGE.exists():
        pytest.skip(f"EMIDEC sample not found at {VOLUMES}")
    return _read(POSITIVE_IMAGE)


@pytest.fixture(scope="session")
def negative_image() -> sitk.Image:
    if not NEGATIVE_IMAGE.exists():
        pytest.skip(f"EMIDEC sample not found at {VOLUMES}")
    return _read(NEGATIVE_IMAGE)


@pytest.fixture(scope="session")
def positive_slab(positive_image) -> sitk.Image:
    """Two mid-ventricular slices of samplePositive: full in-plane grid, real spacing and direction."""
    return positive_image[:, :, 3:5]


@pytest.fixture(scope="session")
def negative_slab(negative_image) -> sitk.Image:
    return negative_image[:, :, 4:6]


@pytest.fixture(scope="session")
def positive_slab_result(segmenter, positive_slab):
    """Segmentation of positive_slab (batch_size 1) with the progress calls it made; shared by tests."""
    calls = []
    result = segmenter.segment(positive_slab, progress=lambda done, total: calls.append((done, total)), batch_size=1)
    return result, calls


@pytest.fixture
def write_volume(tmp_path):
    """write_volume(name, image_or_array) -> path of a .nii.gz (or the given suffix) in tmp_path."""
    def write(name: str, image) -> Path:
        if isinstance(image, np.ndarray):
            image = sitk.GetImageFromArray(image)
        path = tmp_path / name
        sitk.WriteImage(image, str(path))
        return path
    return write


@pytest.fixture(scope="session")
def inference_model_path(request) -> Path:
    """The model file for tests that run real inference through an application layer (Slicer logic).

    The bundled trained model when it is present (ScarNetCore.resources.default_model_path()), else
    the session's tiny random cascade (model_path, created only when needed). Such tests check how
    results travel (geometry, voxel-exact transfer, progress, cancel), which needs a real model but
    not a trained one; tests that need trained weights use the bundled model and skip without it.
    """
    from ScarNetCore.resources import default_model_path

    bundled = default_model_path()
    return bundled if bundled.is_file() else request.getfixturevalue("model_path")
