"""On-the-fly augmentation of one slice on the model grid (image in [0, 1], integer mask).

Geometry (rotation, flips, scaling, translation, elastic) is composed into one sampling map, so the
image is interpolated once (linear) and the mask once (nearest neighbour: labels stay integers).
Intensity changes (gamma, contrast, bias field, Gaussian/Rician noise, blur/low resolution) mimic
the spread between scanners and sequences.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch.nn import functional as F

from ScarNetCore.settings import settings_from_dict


@dataclass(frozen=True)
class AugmentConfig:
    p_affine: float = 0.9
    rotation_deg: float = 180.0          # orientation of short-axis views varies between cases and centres
    p_flip: float = 0.5
    scale: tuple[float, float] = (0.8, 1.25)   # ≈ pixel spacing 1.0–1.6 mm at the nominal 1.25 mm
    translate_px: float = 16.0
    p_elastic: float = 0.3
    elastic_alpha_px: float = 6.0
    elastic_sigma_px: float = 12.0
    p_gamma: float = 0.5
    gamma: tuple[float, float] = (0.7, 1.5)
    p_contrast: float = 0.5
    contrast: tuple[float, float] = (0.75, 1.25)
    p_bias: float = 0.3
    bias_strength: float = 0.3
    p_noise: float = 0.3
    noise_sd: tuple[float, float] = (0.01, 0.06)
    p_rician: float = 0.5                # share of noisy samples that get Rician (magnitude) noise
    p_blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.2)
    p_lowres: float = 0.15
    lowres_factor: tuple[float, float] = (0.5, 0.9)

    @classmethod
    def from_dict(cls, data: dict | None) -> "AugmentConfig":
        return settings_from_dict(cls, data, "augmentation")


def _sampling_grid(shape, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray | None:
    h, w = shape
    matrix, shift, moved = np.eye(2), np.zeros(2), False
    if rng.random() < cfg.p_affine:
        angle = np.deg2rad(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg))
        scale = np.exp(rng.uniform(*np.log(cfg.scale)))
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        matrix = rot / scale  # output → input coordinates: zoom in by `scale`
        shift = rng.uniform(-cfg.translate_px, cfg.translate_px, 2)
        moved = True
    if rng.random() < cfg.p_flip:
        matrix = matrix @ np.diag([1.0, -1.0])
        moved = True
    yy, xx = np.meshgrid(np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2, indexing="ij")
    coords = np.einsum("ij,jhw->ihw", matrix, np.stack([yy, xx])) + shift[:, None, None]
    if rng.random() < cfg.p_elastic:
        for axis in range(2):
            field = ndimage.gaussian_filter(rng.uniform(-1, 1, (h, w)), cfg.elastic_sigma_px)
            coords[axis] += field / (np.abs(field).max() + 1e-8) * cfg.elastic_alpha_px
        moved = True
    if not moved:
        return None
    coords[0] += (h - 1) / 2
    coords[1] += (w - 1) / 2
    return coords


def _resample(image: np.ndarray, mask: np.ndarray, coords: np.ndarray):
    image = ndimage.map_coordinates(image, coords, order=1, mode="constant", cval=0.0)
    mask = ndimage.map_coordinates(mask, coords, order=0, mode="constant", cval=0)
    return image.astype(np.float32), mask.astype(np.uint8)


def augment_geometry(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig):
    coords = _sampling_grid(image.shape, rng, cfg)
    return (image, mask) if coords is None else _resample(image, mask, coords)


def augment_intensity(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """image: [H, W], or [C, H, W] for a slice with its neighbours (one acquisition: the same gamma,
    contrast, coil field, blur and resolution for all, noise drawn per pixel)."""
    x = image.astype(np.float32)
    plane = (0,) * (x.ndim - 2)  # no smoothing or zoom across channels
    if rng.random() < cfg.p_gamma:
        x = np.power(np.clip(x, 0, 1), rng.uniform(*cfg.gamma))
    if rng.random() < cfg.p_contrast:
        mean = x.mean(axis=(-2, -1), keepdims=True)
        x = (x - mean) * rng.uniform(*cfg.contrast) + mean
    if rng.random() < cfg.p_bias:
        # smooth multiplicative field (coil sensitivity): a random low-order polynomial
        h, w = x.shape[-2:]
        yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
        c = rng.uniform(-1, 1, 5) * cfg.bias_strength
        field = 1 + c[0] * yy + c[1] * xx + c[2] * yy * xx + c[3] * yy ** 2 + c[4] * xx ** 2
        x = x * np.clip(field, 0.5, 1.5)
    if rng.random() < cfg.p_blur:
        sigma = rng.uniform(*cfg.blur_sigma)
        x = ndimage.gaussian_filter(x, plane + (sigma, sigma))
    if rng.random() < cfg.p_lowres:
        factor = rng.uniform(*cfg.lowres_factor)
        small = ndimage.zoom(x, (1,) * len(plane) + (factor, factor), order=1)
        x = ndimage.zoom(small, np.array(x.shape) / np.array(small.shape), order=1)[..., : x.shape[-2], : x.shape[-1]]
    if rng.random() < cfg.p_noise:
        sd = rng.uniform(*cfg.noise_sd)
        if rng.random() < cfg.p_rician:
            x = np.sqrt((x + rng.normal(0, sd, x.shape)) ** 2 + rng.normal(0, sd, x.shape) ** 2)
        else:
            x = x + rng.normal(0, sd, x.shape)
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig = AugmentConfig()):
    image, mask = augment_geometry(image, mask, rng, cfg)
    return augment_intensity(image, rng, cfg), mask


def grid_sample_grid(coords: np.ndarray, height: int, width: int) -> torch.Tensor:
    """Source pixel coordinates [2, H, W] (row, column) of an image of height × width → the [1, H, W, 2]
    grid of torch's grid_sample (align_corners=False: −1 and 1 are the outer pixel edges)."""
    grid = np.stack([(coords[1] + 0.5) / width * 2 - 1, (coords[0] + 0.5) / height * 2 - 1], -1)
    return torch.from_numpy(grid.astype(np.float32))[None]


def warp_features(features: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Resample an encoder feature map [C, h, w] with the sampling map `coords` [2, H, W] of its image.

    Each feature cell covers an H/h × W/w patch of the image: the map is read at the cell centres and
    converted to feature-cell units, so the features move exactly as the image content under them.
    """
    _, h, w = features.shape
    sy, sx = coords.shape[1] / h, coords.shape[2] / w
    centres = np.stack(np.meshgrid((np.arange(h) + 0.5) * sy - 0.5, (np.arange(w) + 0.5) * sx - 0.5, indexing="ij"))
    source = np.stack([ndimage.map_coordinates(coords[a], centres, order=1, mode="nearest") for a in range(2)])
    # torch's bilinear sampler: one vectorised call for all channels (a TinyViT map is 256 × 64 × 64);
    # border padding: beyond the field of view the encoder saw background, not zeros
    warped = F.grid_sample(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))[None],
                           grid_sample_grid(source, *coords.shape[1:]), mode="bilinear",
                           padding_mode="border", align_corners=False)
    return warped[0].numpy()


def augment_cached(image: np.ndarray, mask: np.ndarray, features: np.ndarray, rng: np.random.Generator,
                   cfg: AugmentConfig, intensity: bool = True):
    """Augment a cached view on the fly: geometry moves image, mask and encoder features alike.

    Intensity changes reach only the image (the frozen encoder saw the cached view), so the U-Net
    pathway meets fresh contrast, noise and blur every epoch while the features stay consistent
    with the anatomy. Views that were intensity-augmented before encoding pass `intensity=False`.
    """
    coords = _sampling_grid(image.shape, rng, cfg)
    if coords is not None:
        image, mask = _resample(image, mask, coords)
        features = warp_features(features, coords)
    if intensity:
        image = augment_intensity(image, rng, cfg)
    return image, mask, features
