"""Model v2: find the LV, then segment a fine crop around it.

Stage 1 (locate) sees each whole slice at a coarse spacing (2 mm/pixel, a 448 mm field of view) and
gives the probability that a pixel is LV (blood pool or myocardium). The stack's LV is the 3-D
connected component carrying the most probability, so one centre serves every slice and spurious
blobs on single slices are ignored. Slices the component does not reach get no stage-2 work.
Stage 1 is small and coarse, so its centre can be off by a few centimetres; stage 2 sees the LV
within its 160 mm crop all the same, and stage-2 passes without test-time views re-centre the crop
on the LV they find (`refine_passes`; a pass that moves it less than `refine_stop_mm` ends them)
before the final one. When stage 1 is far off, each pass sees more of the LV than the one before.
Stage 2 (segment) sees a fixed-size crop at a fine spacing centred on that LV, intensity-normalised
over the part of the crop that lies in the image, so the result does not depend on how much chest,
air or padding the user's field of view holds. Probabilities go back to the native grid through
GridMapping's exact inverse, as in v1.
An optional refine stage sees the same crop once more together with stage 2's class probabilities,
for the slice and its neighbours, and gives the final five classes: a second look that may move any
border, the endocardial one included, with the whole stack's first answer in view (`refine_crops`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from .model import ScarNet, middle_channels
from .preprocessing import GridMapping, PreprocessConfig, normalize_intensity
from .settings import settings_from_dict

LOCATE, SEGMENT, REFINE = "locate", "segment", "refine"


@dataclass(frozen=True)
class StageGeometry:
    spacing_mm: float
    grid_size: int
    percentiles: tuple[float, float] = (0.5, 99.5)

    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig(grid_size=self.grid_size, target_spacing_mm=self.spacing_mm,
                                percentiles=self.percentiles)

    @classmethod
    def of(cls, preprocessing: PreprocessConfig) -> "StageGeometry":
        """The stage geometry a stage checkpoint's preprocessing records (inverse of preprocess())."""
        return cls(preprocessing.target_spacing_mm, preprocessing.grid_size, preprocessing.percentiles)

    def to_dict(self) -> dict:
        return {"spacing_mm": self.spacing_mm, "grid_size": self.grid_size, "percentiles": list(self.percentiles)}

    @classmethod
    def from_dict(cls, data: dict) -> "StageGeometry":
        return settings_from_dict(cls, data, "stage geometry")


LOCATE_GEOMETRY = StageGeometry(spacing_mm=2.0, grid_size=224)     # 448 mm: any cardiac field of view
SEGMENT_GEOMETRY = StageGeometry(spacing_mm=1.25, grid_size=128)   # 160 mm: the LV with a margin for jitter


@dataclass(frozen=True)
class CascadeParams:
    lv_threshold: float = 0.5          # stage-1 probability that counts as LV
    min_lv_area_mm2: float = 150.0     # a slice needs this much LV (stage 1) to be segmented
    min_stack_lv_mm2: float = 1200.0   # largest LV cross-section below this, in stage 1's LV or in the final
                                       # result: no LV found (a disc 39 mm across; v2.0-v2.8 files store 600,
                                       # which let a brain EPI through)
    min_scar_ml: float = 0.0           # case-level "no infarct": less predicted scar than this is dropped
    low_confidence: float = 0.8        # mean top-class probability over the predicted LV below this: flag
    flip_tta: bool = True              # stage 2 averages the identity and two flips
    rot90_tta: bool = False            # with flip_tta: all 8 rotations by 90° and their mirror images
    refine_passes: int = 3             # re-centre the crop on stage 2's own LV before the final pass, up to this often
    refine_stop_mm: float = 2.0        # ... stopping once a pass moves the centre less than this (0: every pass)
    recentre_first_member: bool = False  # ... asking only an ensemble stage 2's first member (they need the LV's centre)
    neighbour_mm: float = 10.0         # 2.5-D stage 2: its neighbours are the slices nearest this far away

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> "CascadeParams":
        return settings_from_dict(cls, data, "cascade")


class SegmentEnsemble(nn.Module):
    """Several networks that see stage 2's crop (stage-2 or refine networks); their class probabilities
    are averaged.

    forward returns the log of the mean probability, so the softmax every caller applies gives that
    mean back exactly. Stage-2 members may differ in width and in how many neighbouring slices they see
    (each takes the middle channels of the input); refine members take stage 2's probabilities laid out
    per slice, so they must all see the same slices. All share classes and grid."""

    def __init__(self, members: list[ScarNet]):
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two networks")
        first = members[0].config
        for net in members[1:]:
            if (net.config.num_classes, net.config.grid_size) != (first.num_classes, first.grid_size):
                raise ValueError("ensemble members must share classes and grid")
        if any(m.config.prior for m in members) and len({(m.config.prior, m.config.in_channels) for m in members}) > 1:
            raise ValueError("refine-stage ensemble members must all take stage 2's probabilities for the same slices")
        self.members = nn.ModuleList(members)

    @property
    def config(self):
        """The first member's, taking as many slices as the widest-seeing member, and the whole stack
        when any member mixes across it."""
        return replace(self.members[0].config, in_channels=max(m.config.in_channels for m in self.members),
                       stack_mixing=any(m.config.stack_mixing for m in self.members))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        mean = torch.stack([torch.softmax(net(image if net.config.prior else middle_channels(image, net.config.in_channels))
                                          .float(), 1) for net in self.members]).mean(0)
        return torch.log(mean.clamp_min(1e-12))


class ScarNetCascade(nn.Module):
    """The stage networks, each a ScarNet (one definition), with their geometry and settings: locate,
    segment and, optionally, refine (on stage 2's crop, so with stage 2's geometry)."""

    def __init__(self, locate: ScarNet, segment: ScarNet | SegmentEnsemble, locate_geometry: StageGeometry = LOCATE_GEOMETRY,
                 segment_geometry: StageGeometry = SEGMENT_GEOMETRY, params: CascadeParams = CascadeParams(),
                 refine: ScarNet | SegmentEnsemble | None = None):
        super().__init__()
        stages = [(locate, locate_geometry, LOCATE), (segment, segment_geometry, SEGMENT)]
        if refine is not None:
            if not refine.config.prior or refine.config.num_classes != segment.config.num_classes:
                raise ValueError("refine: the network must take stage 2's probabilities and share its classes")
            stages.append((refine, segment_geometry, REFINE))
        for net, geometry, name in stages:
            if net.config.stack_mixing and name != REFINE:
                raise ValueError(f"{name}: only the refine stage sees the whole stack (stack_mixing)")
            if net.config.grid_size != geometry.grid_size:
                raise ValueError(f"{name}: network grid {net.config.grid_size} ≠ preprocessing grid {geometry.grid_size}")
        self.locate, self.segment, self.refine = locate, segment, refine
        self.geometry = {name: geometry for _, geometry, name in stages}
        self.params = params

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(self.geometry)   # in stage order, refine only when present

    @property
    def num_classes(self) -> int:
        return self.segment.config.num_classes


def normalize_in_window(image: np.ndarray, valid: np.ndarray, percentiles=(0.5, 99.5)) -> np.ndarray:
    """Percentile normalisation over the pixels that lie in the image (padding excluded); 0 outside."""
    out = np.zeros(image.shape, np.float32)
    if valid.any():
        out[valid] = normalize_intensity(image[valid], percentiles)
    return out


@dataclass
class LVLocation:
    found: bool
    centre: tuple[float, float] | None = None     # native pixels (row, column), shared by all slices
    slices: np.ndarray | None = None              # bool [N]: slices that get stage-2 work
    at_edge: bool = False                         # the LV touches the image border: part may be cut off
    largest_mm2: float = 0.0                      # stage 1's largest LV cross-section, found or not


def find_lv(lv_probability: np.ndarray, spacing_mm: tuple[float, float], params: CascadeParams) -> LVLocation:
    """lv_probability: [N, h, w] on the native grid. The LV is one 3-D component for the whole stack."""
    mask = lv_probability > params.lv_threshold
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    if count == 0:
        return LVLocation(False)
    mass = ndimage.sum(lv_probability, components, index=np.arange(1, count + 1))
    lv = components == int(np.argmax(mass)) + 1
    area_mm2 = cross_sections_mm2(lv, spacing_mm)
    if area_mm2.max() < params.min_stack_lv_mm2:
        return LVLocation(False, largest_mm2=float(area_mm2.max()))
    centre = tuple(float(c) for c in ndimage.center_of_mass(lv.any(0)))
    return LVLocation(True, centre, area_mm2 >= params.min_lv_area_mm2, touches_border(lv), float(area_mm2.max()))


def cross_sections_mm2(mask: np.ndarray, spacing_mm) -> np.ndarray:
    """mask [N, h, w] → [N]: each slice's area of the mask in mm² (spacing_mm: the in-plane spacing)."""
    return mask.sum(axis=(1, 2)) * float(spacing_mm[0] * spacing_mm[1])


def touches_border(mask: np.ndarray) -> bool:
    """mask [N, h, w]: whether any slice's mask reaches the first or last row or column of the image."""
    return bool(mask[:, [0, -1]].any() or mask[:, :, [0, -1]].any())


# Test-time views as (quarter turns, mirrored): the identity and two flips (a vertical flip is a half
# turn mirrored), or the dihedral group: every quarter turn, each also mirrored.
FLIP_VIEWS = ((0, False), (0, True), (2, True))
DIHEDRAL_VIEWS = tuple((k, mirror) for k in range(4) for mirror in (False, True))


def _tta(net: ScarNet, batch: torch.Tensor, params: CascadeParams | None) -> torch.Tensor:
    """Class probabilities averaged over the test-time views `params` asks for (None: the plain view)."""
    views = ((0, False),)
    if params is not None and params.flip_tta:
        views = DIHEDRAL_VIEWS if params.rot90_tta else FLIP_VIEWS
    probs = None
    for k, mirror in views:
        x = torch.rot90(batch, k, (-2, -1))
        p = torch.softmax(net(x.flip(-1) if mirror else x).float(), 1)
        p = torch.rot90(p.flip(-1) if mirror else p, -k, (-2, -1))  # back to the crop's orientation
        probs = p if probs is None else probs + p
    return probs / len(views)


def whole_image_location(shape, spacing_mm, cascade: "ScarNetCascade", count: int,
                         stage_1_mm2: float) -> LVLocation | None:
    """When stage 1 sees an LV too small to trust in an image that fits in one stage-2 crop (a user's
    crop to the heart), stage 2 looks at all of it and decides: stage 2 is trained on such crops.
    stage_1_mm2: stage 1's largest LV cross-section, under min_stack_lv_mm2. None when it is under
    min_lv_area_mm2 as well (not one slice's worth: nothing to confirm, and a non-cardiac picture may
    still look like a heart to stage 2), or the image is larger than the crop, or too small to hold
    the smallest LV."""
    if stage_1_mm2 < cascade.params.min_lv_area_mm2:
        return None
    geometry = cascade.geometry[SEGMENT]
    if any(n * s > geometry.grid_size * geometry.spacing_mm for n, s in zip(shape, spacing_mm)):
        return None
    if np.prod(shape) * np.prod(spacing_mm) < cascade.params.min_stack_lv_mm2:
        return None
    return LVLocation(True, tuple((n - 1) / 2 for n in shape), np.ones(count, bool), largest_mm2=stage_1_mm2)


def locate_lv(cascade: ScarNetCascade, slices: np.ndarray, spacing, device, autocast, batch_size: int) -> LVLocation:
    return find_lv(lv_probability(cascade, slices, spacing, device, autocast, batch_size), spacing, cascade.params)


def lv_probability(cascade: ScarNetCascade, slices: np.ndarray, spacing, device, autocast, batch_size: int) -> np.ndarray:
    """Stage 1's LV probability [N, h, w] on the native grid."""
    geometry = cascade.geometry[LOCATE]
    normalised = np.stack([normalize_intensity(s, geometry.percentiles) for s in slices])
    mapping = GridMapping.for_slice(slices.shape[-2:], spacing, geometry.preprocess())
    lv = np.zeros(slices.shape, np.float32)
    for start in range(0, len(slices), batch_size):
        batch = mapping.to_grid(torch.from_numpy(normalised[start:start + batch_size])[:, None])
        with autocast():
            probs = torch.softmax(cascade.locate(batch.to(device)).float(), 1)
        lv[start:start + len(batch)] = mapping.from_grid(probs.cpu())[:, 1:].sum(1).numpy()
    return lv


def refine_centre(cascade: ScarNetCascade, slices: np.ndarray, index: np.ndarray, spacing, centre, device, autocast,
                  batch_size: int, step: int = 1) -> tuple[float, float]:
    """Stage 2's own LV centre (native pixels) over slices[index]; `centre` if it finds no LV."""
    net = cascade.segment
    if cascade.params.recentre_first_member and isinstance(net, SegmentEnsemble):
        net = net.members[0]
    sums, count = np.zeros(2), 0
    for start in range(0, len(index), batch_size):
        probs = segment_crops(cascade, slices, index[start:start + batch_size], spacing, centre, device, autocast,
                              tta=False, step=step, net=net)
        _, rows, cols = np.nonzero(probs.argmax(1).numpy() > 0)
        sums += (rows.sum(), cols.sum())
        count += len(rows)
    return tuple(float(v) for v in sums / count) if count else centre


def neighbour_step(slice_mm: float | None, params: CascadeParams) -> int:
    """How many slices apart a 2.5-D stage 2's neighbours are: the distance it was trained with
    (EMIDEC: 10 mm) in this stack's slices; 1 when the slice distance is unknown (a single slice)."""
    return max(1, int(round(params.neighbour_mm / slice_mm))) if slice_mm else 1


def neighbour_indices(index: np.ndarray, count: int, context: int, step: int = 1) -> np.ndarray:
    """[n, 2·context + 1] stack positions: each slice between its neighbours `step` slices away; a
    neighbour beyond the ends of the stack is the slice itself (as in training)."""
    index = np.asarray(index)[:, None]
    positions = index + np.arange(-context, context + 1)[None] * step
    return np.where((positions < 0) | (positions >= count), index, positions)


def _crops(slices: np.ndarray, positions: np.ndarray, spacing, centre, geometry: StageGeometry):
    """The slices at `positions` [n, channels] (neighbour_indices) cropped around `centre` at the stage
    geometry, each normalised over the part of the crop inside the image → (batch, mapping)."""
    mapping = GridMapping.for_slice(slices.shape[-2:], spacing, geometry.preprocess(), centre_native=centre)
    needed = np.unique(positions)
    raw = mapping.to_grid(torch.from_numpy(slices[needed].astype(np.float32))[:, None])[:, 0].numpy()
    inside = mapping.to_grid(torch.ones(1, 1, *slices.shape[-2:]))[0, 0].numpy() > 0.5
    crops = np.stack([normalize_in_window(r, inside, geometry.percentiles) for r in raw])
    return torch.from_numpy(crops[np.searchsorted(needed, positions)]), mapping


def segment_grid(cascade: ScarNetCascade, slices: np.ndarray, index: np.ndarray, spacing, centre, device,
                 autocast, tta: bool = True, step: int = 1, net: nn.Module | None = None):
    """Stage 2 on slices[index] (slices: the whole raw stack [N, h, w], which a 2.5-D network also
    takes the neighbours from) → ([n, K, g, g] class probabilities on the crop, the crop's mapping).

    tta: the model's test-time augmentation (flips, rotations, CascadeParams); False: the plain view only.
    step: neighbour_step of the stack. net: another network on stage 2's crop (default: stage 2)."""
    net = cascade.segment if net is None else net
    positions = neighbour_indices(index, len(slices), net.config.in_channels // 2, step)
    batch, mapping = _crops(slices, positions, spacing, centre, cascade.geometry[SEGMENT])
    with autocast():
        probs = _tta(net, batch.to(device), cascade.params if tta else None)
    return probs.cpu(), mapping


def segment_crops(cascade: ScarNetCascade, slices: np.ndarray, index: np.ndarray, spacing, centre, device,
                  autocast, tta: bool = True, step: int = 1, net: nn.Module | None = None) -> torch.Tensor:
    """segment_grid's probabilities on the native grid: [n, K, h, w]."""
    probs, mapping = segment_grid(cascade, slices, index, spacing, centre, device, autocast, tta, step, net)
    return mapping.from_grid(probs)


def refine_crops(cascade: ScarNetCascade, slices: np.ndarray, index: np.ndarray, spacing, centre, stage_2: dict,
                 device, autocast, step: int = 1) -> torch.Tensor:
    """The refine stage on slices[index] → [n, K, h, w] class probabilities on the native grid.

    stage_2: stack position → stage 2's crop probabilities [K, g, g] at the same centre (segment_grid),
    for every slice stage 2 saw; a slice it did not see counts as background, as its result does.
    Each slice comes with its neighbours (as a 2.5-D stage 2 takes them), and each of those with its
    stage-2 probabilities of the classes other than background."""
    net = cascade.refine
    positions = neighbour_indices(index, len(slices), net.config.in_channels // 2, step)
    batch, mapping = _crops(slices, positions, spacing, centre, cascade.geometry[SEGMENT])
    nothing = torch.zeros(net.config.num_classes - 1, *batch.shape[-2:])
    prior = torch.stack([torch.cat([stage_2[p][1:] if p in stage_2 else nothing for p in row]) for row in positions])
    with autocast():
        probs = _tta(net, torch.cat([batch, prior], 1).to(device), cascade.params)
    return mapping.from_grid(probs.cpu())
