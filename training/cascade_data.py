"""Training views for the two cascade stages, drawn on the fly from whole slices.

Both stages see what inference will give them (ScarNetCore/pipeline/predictor.py), resampled from the
slice at its pixel spacing by one affine map per view (torch grid_sample):
- locate: the slice as a scanner's field of view (80–450 mm, square or not, the heart anywhere in
  it, partly or not at all, or a user's crop close around it), rotated, flipped and zoomed, placed
  centred on the coarse grid with black outside; intensity normalised over the field of view only.
  Target: LV (blood pool + myocardium) or not. Some views are synthetic non-hearts (noise, blank,
  smooth blobs, fractal textures, scenes of overlapping shapes), whole-grid or as a smaller image.
- segment: a crop at the fine spacing centred on the case's LV centre plus a jitter as large as
  the localisation error, rotated, flipped, zoomed; sometimes the image itself is cut to a small
  field of view around the heart first (a user's crop: the window then holds padding). Normalised
  over the part of the crop that lies in the image. Target: the five labels, background outside.
  A 2.5-D network also gets the neighbouring slices through the same crop, each normalised alone,
  the stack in either direction, slightly shifted (breath-hold misregistration) or left out.
- refine: the segment view, with stage 2's class probabilities for the slice and each neighbour
  (cached per case by training/evaluate.py --save-probabilities, on the slice grid) resampled
  through the same maps: what the refine stage gets from stage 2 at inference.
- stacks (a refine stage with model.stack_mixing): every slice of a case through one crop, one pose
  and one user crop for the whole stack, as inference crops a stack at one centre; each slice a
  little displaced (breath-hold misregistration), the stack in either direction.
Intensity augmentation (gamma, contrast, bias, blur, low resolution, noise) follows (images only).
Randomness depends on (seed, epoch, index) alone, so a resumed run replays the same views.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch.nn import functional as F

from ScarNetCore.model.cascade import LOCATE, REFINE, SEGMENT
from ScarNetCore.pipeline.preprocessing import PreprocessConfig, normalize_in_window
from ScarNetCore.pipeline.stack import neighbour_indices
from ScarNetCore.settings import settings_from_dict
from .augment import AugmentConfig, augment_intensity, grid_sample_grid


@dataclass(frozen=True)
class ViewConfig:
    fov_mm: tuple[float, float] = (80.0, 450.0)   # locate: simulated field of view (side)
    p_negative: float = 0.12                      # locate: synthetic non-cardiac input, empty target
    p_heart_anywhere: float = 0.25                # locate: the LV anywhere (else in the middle 40 % of the view)
    p_heart_crop: float = 0.0                     # locate: a user's crop around the heart (user_crop_mm)
    p_negative_window: float = 0.0                # locate: a non-heart as a small image (a field of view) in the grid
    structured_negatives: bool = False            # locate: non-hearts include fractal textures and shape scenes
    jitter_mm: float = 12.0                       # segment: crop-centre jitter (sd), ~ localisation error
    scale: tuple[float, float] = (0.8, 1.25)      # zoom: covers the pixel-spacing spread of the PNG export
    p_flip: float = 0.5
    p_negative_segment: float = 0.03              # segment: noise crops with an empty target
    p_user_crop: float = 0.3                      # segment: the image was cropped close to the heart
    user_crop_mm: tuple[float, float] = (80.0, 200.0)   # side of such a crop, most of the heart inside (both stages)
    p_reverse: float = 0.5                        # segment, 2.5-D: the stack runs apex to base, not base to apex
    p_no_context: float = 0.1                     # segment, 2.5-D: a lone slice (its neighbours are itself)
    neighbour_shift_mm: float = 1.5               # segment, 2.5-D: breath-hold misregistration between slices (sd)

    @classmethod
    def from_dict(cls, data: dict | None) -> "ViewConfig":
        return settings_from_dict(cls, data, "view")


class CaseSlices:
    """The slices of one case on the reader's grid, with the case's LV centre (as inference finds it)
    and, for a refine stage, stage 2's probabilities of the classes other than background [N, K-1, h, w]."""

    def __init__(self, samples, spacing_mm: float, priors: np.ndarray | None = None):
        self.images = np.stack([s.image for s in samples]).astype(np.float32)
        self.masks = np.stack([s.mask for s in samples]).astype(np.uint8)
        if priors is not None and (len(priors) != len(self.images) or priors.shape[2:] != self.images.shape[1:]):
            raise ValueError(f"{samples[0].case}: stage-2 probabilities {priors.shape} do not match its slices "
                             f"{self.images.shape}; cache them again from the same data")
        self.priors = priors
        self.spacing = spacing_mm
        lv = self.masks > 0
        self.centre = np.array(ndimage.center_of_mass(lv.any(0))) if lv.any() else \
            (np.array(self.images.shape[1:]) - 1) / 2


def synthetic_negative(shape, rng: np.random.Generator, structured: bool = False) -> np.ndarray:
    """Inputs that are not hearts: noise of several kinds, a blank or constant image, smooth blobs;
    with `structured`, mostly (60 %) fractal textures (terrain, clouds) and scenes of overlapping shapes."""
    kind = rng.integers(5, 7) if structured and rng.random() < 0.6 else rng.integers(5)
    if kind == 0:
        x = rng.normal(0.5, rng.uniform(0.05, 0.3), shape)
    elif kind == 1:
        sd = rng.uniform(0.05, 0.4)
        x = np.sqrt(rng.normal(0, sd, shape) ** 2 + rng.normal(0, sd, shape) ** 2)
    elif kind == 2:
        x = np.full(shape, rng.uniform(0, 1))
    elif kind == 3:
        x = ndimage.gaussian_filter(rng.normal(0, 1, shape), rng.uniform(2, 12))
    elif kind == 4:
        x = rng.uniform(0, 1, shape)
    elif kind == 5:
        x = fractal_noise(shape, rng)
    else:
        x = shape_scene(shape, rng)
    x = x - x.min()
    return (x / x.max() if x.max() > 0 else x).astype(np.float32)


def fractal_noise(shape, rng: np.random.Generator) -> np.ndarray:
    """Noise with a 1/f^β power spectrum (β 1.5–3.5): from rough texture to smooth terrain or clouds."""
    fy, fx = np.meshgrid(np.fft.fftfreq(shape[0]), np.fft.fftfreq(shape[1]), indexing="ij")
    f = np.hypot(fy, fx)
    f[0, 0] = np.inf
    spectrum = np.fft.fft2(rng.normal(0, 1, shape)) * f ** (-rng.uniform(1.5, 3.5) / 2)
    return np.real(np.fft.ifft2(spectrum))


def shape_scene(shape, rng: np.random.Generator) -> np.ndarray:
    """Overlapping ellipses and rectangles of random size, brightness and shading on a textured
    background, like an object photographed: edges and regions, but no anatomy."""
    yy, xx = np.mgrid[:shape[0], :shape[1]].astype(np.float32)
    size = min(shape)
    x = rng.uniform(0, 1) + rng.uniform(0, 0.5) * fractal_noise(shape, rng) / 3
    for _ in range(rng.integers(2, 12)):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        a, b = rng.uniform(0.04, 0.4, 2) * size
        t = rng.uniform(0, np.pi)
        u = (yy - cy) * np.cos(t) + (xx - cx) * np.sin(t)
        v = -(yy - cy) * np.sin(t) + (xx - cx) * np.cos(t)
        inside = (u / a) ** 2 + (v / b) ** 2 <= 1 if rng.random() < 0.5 else (np.abs(u) <= a) & (np.abs(v) <= b)
        shading = rng.uniform(0, 1) + rng.uniform(-0.5, 0.5) * u / a
        x = np.where(inside, shading, x)
    x = ndimage.gaussian_filter(x, rng.uniform(0, 2))
    return x + rng.uniform(0, 0.05) * rng.normal(0, 1, shape)


def read_priors(folder: str | Path, cases) -> dict[str, np.ndarray]:
    """Stage 2's cached probabilities per case (<case>.npy, [N, K, h, w] in slice order, as
    training/evaluate.py --save-probabilities writes them), background dropped: [N, K-1, h, w]."""
    folder = Path(folder)
    priors = {}
    for case in cases:
        path = folder / f"{case}.npy"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no stage-2 probabilities for {case}; run training/evaluate.py "
                                    f"--save-probabilities on every training and validation case first")
        priors[case] = np.load(path, allow_pickle=False)[:, 1:]
    return priors


def _priors_of(priors: np.ndarray, samples) -> np.ndarray:
    """A case's cached probabilities for these of its slices. The cache holds the whole stack in slice
    order, and slice numbers count from 0 in both layouts (<case>_slice000.png, a volume's first slice)."""
    index = [s.index for s in samples]
    if max(index) >= len(priors):
        raise ValueError(f"{samples[0].case}: slice {max(index)} but stage-2 probabilities for {len(priors)} slices; "
                         "cache them again from the same data")
    return priors[index]


def _sample_channels(stack: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Bilinear samples of every channel of [C, h, w] at source pixel coords [2, H, W] (0 outside)."""
    grid = grid_sample_grid(coords, *stack.shape[-2:])
    src = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[None]
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0].numpy()


def _sample(image: np.ndarray, mask: np.ndarray, coords: np.ndarray):
    """Bilinear image, nearest mask and in-image indicator at source pixel coords [2, H, W]."""
    h, w = image.shape
    src = torch.from_numpy(mask.astype(np.float32))[None, None]
    msk = F.grid_sample(src, grid_sample_grid(coords, h, w), mode="nearest", padding_mode="zeros", align_corners=False)
    inside = (coords[0] > -0.5) & (coords[0] < h - 0.5) & (coords[1] > -0.5) & (coords[1] < w - 0.5)
    return _sample_channels(image[None], coords)[0], msk[0, 0].numpy().astype(np.uint8), inside


def _pose(rng: np.random.Generator, cfg: ViewConfig) -> np.ndarray:
    """Random rotation (any angle: short-axis orientation varies), flip and zoom: output → source."""
    angle = rng.uniform(-np.pi, np.pi)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    flip = np.diag([1.0, -1.0]) if rng.random() < cfg.p_flip else np.eye(2)
    return rot @ flip / np.exp(rng.uniform(*np.log(cfg.scale)))


def _offsets_mm(geometry: PreprocessConfig) -> np.ndarray:
    """Distance of each grid row (or column) from the grid's centre, in mm."""
    return (np.arange(geometry.grid_size) - (geometry.grid_size - 1) / 2) * geometry.target_spacing_mm


def _coords(geometry: PreprocessConfig, matrix: np.ndarray, centre_px: np.ndarray, source_spacing: float):
    """Source pixel coordinates of every output pixel: output mm offsets → pose → source pixels."""
    offsets = _offsets_mm(geometry)
    yy, xx = np.meshgrid(offsets, offsets, indexing="ij")
    return np.einsum("ij,jhw->ihw", matrix, np.stack([yy, xx])) / source_spacing + centre_px[:, None, None]


def _field_of_view(side_mm: float, rng, min_aspect: float) -> np.ndarray:
    """A rectangle (rows, columns) in mm: side_mm by a random fraction of it, either way round."""
    return side_mm * np.array([1.0, rng.uniform(min_aspect, 1.0)])[rng.permutation(2)]


def _window(geometry: PreprocessConfig, fov_mm: np.ndarray) -> np.ndarray:
    """The grid's pixels inside a field of view centred on it, as inference places an image."""
    offsets = np.abs(_offsets_mm(geometry))
    return (offsets[:, None] <= fov_mm[0] / 2) & (offsets[None, :] <= fov_mm[1] / 2)


def locate_view(case: CaseSlices, index: int, geometry: PreprocessConfig, rng, cfg: ViewConfig, aug: AugmentConfig):
    g = geometry.grid_size
    if rng.random() < cfg.p_negative:
        image = synthetic_negative((g, g), rng, cfg.structured_negatives)
        # (options off by default draw no random numbers, so older recipes replay the same views)
        if cfg.p_negative_window > 0 and rng.random() < cfg.p_negative_window:
            # a non-cardiac image smaller than the grid, centred as inference places it; any aspect (pictures)
            window = _window(geometry, _field_of_view(min(rng.uniform(*cfg.fov_mm), (g - 1) * geometry.target_spacing_mm),
                                                      rng, 0.5))
            return augment_intensity(normalize_in_window(image, window), rng, aug) * window, np.zeros((g, g), np.uint8)
        return augment_intensity(image, rng, aug), np.zeros((g, g), np.uint8)
    if cfg.p_heart_crop > 0 and rng.random() < cfg.p_heart_crop:   # a user's crop close around the heart
        fov = rng.uniform(*cfg.user_crop_mm, 2)
        lv_offset_mm = rng.uniform(-0.15, 0.15, 2) * fov
    else:
        fov = _field_of_view(rng.uniform(*cfg.fov_mm), rng, 0.75)
        # where the LV lies in the field of view: mostly near its middle, as a scanner frames the heart;
        # sometimes anywhere, partly or wholly outside it (always anywhere up to v2.4: most views then
        # showed the LV at the edge of a small patch of image, unlike what inference sees)
        spread = 0.6 if rng.random() < cfg.p_heart_anywhere else 0.2
        lv_offset_mm = rng.uniform(-spread, spread, 2) * fov
    matrix = _pose(rng, cfg)
    centre = case.centre - matrix @ lv_offset_mm / case.spacing
    coords = _coords(geometry, matrix, centre, case.spacing)
    # the coarse grid averages several source pixels: blur first, as the antialiased resize at inference
    sigma = 0.4 * geometry.target_spacing_mm / case.spacing
    image, mask, inside = _sample(ndimage.gaussian_filter(case.images[index], sigma), case.masks[index], coords)
    in_fov = inside & _window(geometry, fov)
    image = normalize_in_window(image, in_fov)
    target = ((mask > 0) & in_fov).astype(np.uint8)
    return augment_intensity(image, rng, aug) * in_fov, target


def _neighbours(case: CaseSlices, index: int, context: int, rng, cfg: ViewConfig | None) -> np.ndarray:
    """Stack positions of the slice between its neighbours, as inference takes them; in training the
    stack may also run the other way, and a view may be a lone slice."""
    positions = neighbour_indices(np.array([index]), len(case.images), context)[0]
    if cfg is not None and context:
        if rng.random() < cfg.p_reverse:
            positions = positions[::-1]
        if rng.random() < cfg.p_no_context:
            positions = np.full_like(positions, index)
    return positions


def _user_crop(case: CaseSlices, rng, cfg: ViewConfig) -> tuple[np.ndarray, np.ndarray]:
    """A user's axis-aligned field of view in the source image, around the heart: (centre, side) in pixels."""
    side = rng.uniform(*cfg.user_crop_mm, 2) / case.spacing
    return case.centre + rng.uniform(-0.15, 0.15, 2) * side, side


def _in_crop(coords: np.ndarray, crop: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Which source pixel coords [2, H, W] lie inside the crop."""
    centre, side = crop
    return np.all(np.abs(coords - centre[:, None, None]) <= side[:, None, None] / 2, axis=0)


def segment_view(case: CaseSlices, index: int, geometry: PreprocessConfig, rng, cfg: ViewConfig | None,
                 aug: AugmentConfig | None, context: int = 0):
    """cfg None: the unaugmented crop at the case's LV centre (validation). context: neighbours on each
    side as extra channels (2.5-D). Returns the image [2·context + 1, g, g] and the mask [g, g]."""
    g = geometry.grid_size
    if cfg is not None and rng.random() < cfg.p_negative_segment:
        noise = np.stack([synthetic_negative((g, g), rng) for _ in range(2 * context + 1)])
        noise = augment_intensity(noise, rng, aug)
        if case.priors is not None:   # stage 2 found nothing in it
            noise = np.concatenate([noise, np.zeros((len(noise) * case.priors.shape[1], g, g), np.float32)])
        return noise, np.zeros((g, g), np.uint8)
    positions = _neighbours(case, index, context, rng, cfg)
    matrix = _pose(rng, cfg) if cfg is not None else np.eye(2)
    centre = case.centre + (rng.normal(0, cfg.jitter_mm, 2) / case.spacing if cfg is not None else 0)
    coords = _coords(geometry, matrix, centre, case.spacing)
    image, mask, inside = _sample(case.images[index], case.masks[index], coords)
    images, where = [], []
    for position in positions:
        if position == index:  # the slice itself (its own neighbour at a stack end): as at inference
            images.append(image)
            where.append(coords)
            continue
        shift = rng.normal(0, cfg.neighbour_shift_mm, 2) / case.spacing if cfg is not None else np.zeros(2)
        where.append(coords + shift[:, None, None])
        images.append(_sample(case.images[position], case.masks[position], where[-1])[0])
    image = np.stack(images)
    if cfg is not None and rng.random() < cfg.p_user_crop:
        inside &= _in_crop(coords, _user_crop(case, rng, cfg))
        mask = mask * inside
    image = np.stack([normalize_in_window(c, inside) for c in image])
    if aug is not None:
        image = augment_intensity(image, rng, aug) * inside
    if case.priors is not None:
        priors = [_sample_channels(case.priors[p], w) * inside for p, w in zip(positions, where)]
        image = np.concatenate([image, *priors])
    return image, mask


def stack_view(case: CaseSlices, geometry: PreprocessConfig, rng, cfg: ViewConfig | None, aug: AugmentConfig | None,
               context: int = 0):
    """Every slice of the case, each between its neighbours (and, refine, with their stage-2
    probabilities), through one crop: images [S, channels, g, g] and masks [S, g, g] in stack order.
    cfg None: the unaugmented crop at the case's LV centre (validation)."""
    count = len(case.images)
    order = np.arange(count)
    if cfg is not None and rng.random() < cfg.p_reverse:
        order = order[::-1]
    matrix = _pose(rng, cfg) if cfg is not None else np.eye(2)
    centre = case.centre + (rng.normal(0, cfg.jitter_mm, 2) / case.spacing if cfg is not None else 0)
    coords = _coords(geometry, matrix, centre, case.spacing)
    crop = None
    if cfg is not None and rng.random() < cfg.p_user_crop:
        crop = _user_crop(case, rng, cfg)
    images, masks, insides, where = [], [], [], []
    for position in order:
        shift = rng.normal(0, cfg.neighbour_shift_mm, 2) / case.spacing if cfg is not None else np.zeros(2)
        where.append(coords + shift[:, None, None])
        image, mask, inside = _sample(case.images[position], case.masks[position], where[-1])
        if crop is not None:
            inside &= _in_crop(where[-1], crop)
        images.append(normalize_in_window(image, inside))
        masks.append(mask * inside)
        insides.append(inside)
    images = np.stack(images)
    if aug is not None:   # one acquisition: the same intensity changes for every slice
        images = augment_intensity(images, rng, aug) * np.stack(insides)
    channels = neighbour_indices(np.arange(count), count, context)   # stack positions, in view order
    stacked = images[channels]
    if case.priors is not None:
        priors = np.stack([_sample_channels(case.priors[p], w) * i for p, w, i in zip(order, where, insides)])
        stacked = np.concatenate([stacked, priors[channels].reshape(count, -1, *priors.shape[-2:])], 1)
    return stacked, np.stack(masks)


def collate_stacks(items: list[dict]) -> dict:
    """Whole stacks into one batch: their slices one after the other, with the stack sizes the network
    needs to keep them apart (ScarNet's `stacks`) and each slice's case."""
    sizes = [len(item["image"]) for item in items]
    batch = {"image": torch.cat([item["image"] for item in items]), "mask": torch.cat([item["mask"] for item in items]),
             "stacks": sizes}
    if "case" in items[0]:
        batch["case"] = [item["case"] for item, n in zip(items, sizes) for _ in range(n)]
    return batch


def lv_crops(samples, geometry: PreprocessConfig, source_spacing_mm: float) -> list:
    """Every slice as its unaugmented crop at the case's LV centre: what a frozen-encoder run encodes
    and caches (the cache's augmented views and on-the-fly warps then add rotation, zoom and jitter)."""
    from .data import SliceSample
    views = StageViews(samples, "segment", geometry, source_spacing_mm, seed=0, train=False)
    crops = []
    for k, (case, index) in enumerate(views.items):
        view = views[k]
        crops.append(SliceSample(case, index, view["image"][0].numpy(), view["mask"].numpy().astype(np.uint8)))
    return crops


class StageViews(torch.utils.data.Dataset):
    """Views of every slice for stage `locate` or `segment`; train=False gives fixed validation views.
    stacks=True: an item is a whole case (stack_view; batch them with collate_stacks)."""

    def __init__(self, samples, stage: str, geometry: PreprocessConfig, source_spacing_mm: float, seed: int,
                 view_cfg: ViewConfig = ViewConfig(), aug_cfg: AugmentConfig = AugmentConfig(), train: bool = True,
                 context: int = 0, priors: dict[str, np.ndarray] | None = None, stacks: bool = False):
        if stage not in (LOCATE, SEGMENT, REFINE):
            raise ValueError(f"stage {stage!r}: choose {LOCATE}, {SEGMENT} or {REFINE}")
        if (stage == REFINE) != (priors is not None):
            raise ValueError(f"stage 2's probabilities (priors) go with stage {REFINE}, and only with it")
        by_case: dict[str, list] = {}
        for s in samples:
            by_case.setdefault(s.case, []).append(s)
        self.cases = {}
        for c, v in by_case.items():
            ordered = sorted(v, key=lambda s: s.index)
            self.cases[c] = CaseSlices(ordered, source_spacing_mm, None if priors is None else _priors_of(priors[c], ordered))
        if stacks and stage == LOCATE:
            raise ValueError("whole-stack views are for the segment and refine stages")
        self.items = [(c, None) for c in self.cases] if stacks else \
            [(c, i) for c, case in self.cases.items() for i in range(len(case.images))]
        self.stage, self.geometry, self.seed, self.train, self.epoch = stage, geometry, seed, train, 0
        self.view_cfg, self.aug_cfg, self.context = view_cfg, aug_cfg, context

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.items)

    @property
    def case_of_item(self) -> list[str]:
        return [c for c, _ in self.items]

    def __getitem__(self, index):
        case_id, i = self.items[index]
        case = self.cases[case_id]
        # validation views are fixed: their randomness does not depend on the epoch
        rng = np.random.default_rng([self.seed, self.epoch if self.train else 10 ** 6, index])
        if i is None:
            image, mask = stack_view(case, self.geometry, rng, self.view_cfg if self.train else None,
                                     self.aug_cfg if self.train else None, self.context)
        elif self.stage == LOCATE:
            image, mask = locate_view(case, i, self.geometry, rng, self.view_cfg, self.aug_cfg)
        elif self.train:
            image, mask = segment_view(case, i, self.geometry, rng, self.view_cfg, self.aug_cfg, self.context)
        else:
            image, mask = segment_view(case, i, self.geometry, rng, None, None, self.context)
        image = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        return {"image": image[None] if image.ndim == 2 else image,  # locate views are one plane
                "mask": torch.from_numpy(mask.astype(np.int64))}
