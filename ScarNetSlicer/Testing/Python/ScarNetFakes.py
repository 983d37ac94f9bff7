"""Test doubles for the ScarNetCore Segmenter (no model needed).

FakeSegmenter "segments" a phantom whose intensities encode the labels (label * 100 + texture),
so the expected labels are known exactly; it honours progress, cancel and batch_size like the real one.
"""
from __future__ import annotations

import time

import numpy as np
import SimpleITK as sitk


class FakeResult:
    def __init__(self, labels):
        self.labels = labels


class FakeSegmenter:
    model_info = {"name": "FakeScarNet", "licence": "test-only", "version": "0"}
    device = "cpu"
    delayPerSlice = 0.0

    def __init__(self, model_path=None, device="auto"):
        self.model_path = model_path

    def segment(self, image, progress=None, cancel=None, batch_size=8):
        from ScarNetCore.errors import Cancelled
        array = sitk.GetArrayFromImage(image)
        total = array.shape[0]
        for start in range(0, total, batch_size):
            if cancel is not None and cancel():
                raise Cancelled("cancelled by caller")
            time.sleep(self.delayPerSlice * min(batch_size, total - start))
            if progress is not None:
                progress(min(start + batch_size, total), total)
        labels = sitk.GetImageFromArray(np.clip(np.rint(array / 100.0), 0, 4).astype(np.uint8))
        labels.CopyInformation(image)
        return FakeResult(labels)


class SlowFakeSegmenter(FakeSegmenter):
    delayPerSlice = 0.3


def fakeFactory(model_path, device):
    return FakeSegmenter(model_path, device)


def slowFakeFactory(model_path, device):
    return SlowFakeSegmenter(model_path, device)


def phantomLabels(shape=(6, 40, 48)) -> np.ndarray:
    """Short-axis-like stack: blood pool disc, myocardial ring, a scar sector with an MVO core."""
    nz, ny, nx = shape
    y, x = np.mgrid[0:ny, 0:nx]
    cy, cx = ny / 2, nx / 2
    r = np.hypot(y - cy, x - cx)
    angle = np.degrees(np.arctan2(y - cy, x - cx)) % 360
    slice2d = np.zeros((ny, nx), np.uint8)
    slice2d[r < 8] = 1
    ring = (r >= 8) & (r < 13)
    slice2d[ring] = 2
    slice2d[ring & (angle < 90)] = 3
    slice2d[ring & (angle >= 30) & (angle < 50) & (r < 10)] = 4
    labels = np.repeat(slice2d[None], nz, axis=0)
    labels[0] = 0  # an empty apical slice, as in real stacks
    return labels


def phantomImage(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    texture = np.random.default_rng(seed).uniform(-20, 20, labels.shape)
    return (labels * 100.0 + texture).astype(np.float32)
