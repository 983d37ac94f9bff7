"""The one preprocessing used by training and inference (recorded in checkpoint metadata).

A slice is (1) intensity-normalised with robust percentiles to [0, 1], (2) resampled in-plane to
a fixed physical pixel size, and (3) centre-cropped/padded to the model grid. Working at a fixed
mm/pixel (not "longest side to N px") keeps the heart the same size in pixels whatever the
scanner's field of view, which is what lets the model carry over to other centres.
Probabilities go back through the exact inverse, and labels are the argmax on the input grid.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.nn import functional as F

from ..settings import settings_from_dict


@dataclass(frozen=True)
class PreprocessConfig:
    grid_size: int = 256
    target_spacing_mm: float = 1.25          # 256 px × 1.25 mm = 320 mm field of view
    percentiles: tuple[float, float] = (0.5, 99.5)
    # The EMIDEC PNG export stores no spacing; its pixels measure about 1.1–1.4 mm, so training treats
    # them as this nominal size and covers the spread with scale augmentation.
    png_nominal_spacing_mm: float = 1.25

    def to_dict(self) -> dict:
        data = asdict(self)
        data["percentiles"] = list(self.percentiles)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessConfig":
        return settings_from_dict(cls, data, "preprocessing")


def normalize_intensity(slice2d: np.ndarray, percentiles=(0.5, 99.5)) -> np.ndarray:
    """Map the [p_low, p_high] intensity range of one slice to [0, 1], clipping outliers."""
    x = np.asarray(slice2d, dtype=np.float32)
    lo, hi = np.percentile(x, percentiles)
    if hi <= lo:  # nearly constant slice (e.g. mostly padding): fall back to the full range
        lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.zeros_like(x)
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def normalize_in_window(image: np.ndarray, valid: np.ndarray, percentiles=(0.5, 99.5)) -> np.ndarray:
    """Percentile normalisation over the pixels that lie in the image (padding excluded); 0 outside."""
    out = np.zeros(image.shape, np.float32)
    if valid.any():
        out[valid] = normalize_intensity(image[valid], percentiles)
    return out


@dataclass(frozen=True)
class GridMapping:
    """How slices of shape `native` map onto the model grid (and back).

    The grid window is centred on the resized slice, or on `centre` (row, column in resized pixels)
    when given: the cascade's second stage crops around the LV that way.
    """
    native: tuple[int, int]
    resized: tuple[int, int]
    grid: int
    centre: tuple[float, float] | None = None

    @classmethod
    def for_slice(cls, shape: tuple[int, int], spacing_mm: tuple[float, float], config: PreprocessConfig,
                  centre_native: tuple[float, float] | None = None):
        """centre_native: window centre in native pixel coordinates (row, column); None: centred."""
        resized = tuple(max(1, int(round(n * s / config.target_spacing_mm))) for n, s in zip(shape, spacing_mm))
        centre = None if centre_native is None else tuple(
            (float(c) + 0.5) * r / n - 0.5 for c, r, n in zip(centre_native, resized, shape))
        return cls(tuple(shape), resized, config.grid_size, centre)

    def _offsets(self):
        """Grid position of resized pixel 0, per axis (negative: the window starts inside the slice)."""
        if self.centre is None:
            return [(self.grid - r) // 2 for r in self.resized]
        return [int(round((self.grid - 1) / 2 - c)) for c in self.centre]

    def _windows(self):
        """(resized-frame slices, grid slices) of the overlap between the slice and the grid window."""
        frame, grid = [], []
        for o, r in zip(self._offsets(), self.resized):
            start, first = max(0, -o), max(0, o)
            length = max(0, min(r - start, self.grid - first))
            frame.append(slice(start, start + length))
            grid.append(slice(first, first + length))
        return frame, grid

    def to_grid(self, slices: torch.Tensor) -> torch.Tensor:
        """[N, C, *native] → [N, C, grid, grid]; padding is 0 (dark background)."""
        x = slices
        if tuple(x.shape[-2:]) != self.resized:
            shrinking = self.resized[0] < x.shape[-2] or self.resized[1] < x.shape[-1]
            x = F.interpolate(x, size=self.resized, mode="bilinear", align_corners=False, antialias=shrinking)
        frame, grid = self._windows()
        out = torch.zeros(*x.shape[:-2], self.grid, self.grid, dtype=x.dtype, device=x.device)
        out[..., grid[0], grid[1]] = x[..., frame[0], frame[1]]
        return out

    def from_grid(self, probs: torch.Tensor) -> torch.Tensor:
        """[N, K, grid, grid] class probabilities → [N, K, *native]; outside the grid is background."""
        background = torch.zeros(probs.shape[1], dtype=probs.dtype, device=probs.device)
        background[0] = 1
        out = background.view(1, -1, 1, 1).expand(probs.shape[0], -1, *self.resized).clone()
        frame, grid = self._windows()
        out[..., frame[0], frame[1]] = probs[..., grid[0], grid[1]]
        if tuple(self.resized) != tuple(self.native):
            out = F.interpolate(out, size=self.native, mode="bilinear", align_corners=False)
        return out


def prepare_slices(slices: np.ndarray, spacing_mm: tuple[float, float], config: PreprocessConfig):
    """[N, h, w] raw slices → ([N, 1, grid, grid] float32 tensor, GridMapping)."""
    normalised = np.stack([normalize_intensity(s, config.percentiles) for s in slices])
    mapping = GridMapping.for_slice(slices.shape[-2:], spacing_mm, config)
    return mapping.to_grid(torch.from_numpy(normalised)[:, None]), mapping
