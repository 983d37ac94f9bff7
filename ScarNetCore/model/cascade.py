"""Model v2's networks: find the LV, segment a fine crop around it, optionally look again.

Stage 1 (locate) sees each whole slice at a coarse spacing (2 mm/pixel, a 448 mm field of view) and
gives the probability that a pixel is LV (blood pool or myocardium). Stage 2 (segment) sees a
fixed-size crop at a fine spacing (1.25 mm, 160 mm) centred on that LV. The optional refine stage
sees the same crop once more together with stage 2's class probabilities, for the slice and its
neighbours (or, with stack_mixing, the whole stack), and gives the final five classes.
How they run on a stack (the LV's centre, re-centring, test-time views, going back to the native
grid) is pipeline/predictor.py's CascadePredictor; this module holds the networks, their geometry
and the settings a checkpoint records (CascadeParams).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from ..pipeline.preprocessing import PreprocessConfig
from ..settings import settings_from_dict
from .scarnet import ScarNet, middle_channels

LOCATE, SEGMENT, REFINE = "locate", "segment", "refine"


# Each stage's geometry is the preprocessing its network takes (PreprocessConfig: mm/pixel, grid, percentiles).
LOCATE_GEOMETRY = PreprocessConfig(grid_size=224, target_spacing_mm=2.0)    # 448 mm: any cardiac field of view
SEGMENT_GEOMETRY = PreprocessConfig(grid_size=128, target_spacing_mm=1.25)  # 160 mm: the LV with a margin for jitter


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
    recentre_passes: int = 3           # re-centre the crop on stage 2's own LV before the final pass, up to this often
    recentre_stop_mm: float = 2.0      # ... stopping once a pass moves the centre less than this (0: every pass)
    recentre_first_member: bool = False  # ... asking only an ensemble stage 2's first member (they need the LV's centre)
    neighbour_mm: float = 10.0         # 2.5-D stage 2: its neighbours are the slices nearest this far away

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> "CascadeParams":
        return settings_from_dict(cls, data, "cascade", renamed=RENAMED_PARAMS)


# Names files written before v0.2 use: "refine" now means the third stage only.
RENAMED_PARAMS = {"refine_passes": "recentre_passes", "refine_stop_mm": "recentre_stop_mm"}


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

    def __init__(self, locate: ScarNet, segment: ScarNet | SegmentEnsemble, locate_geometry: PreprocessConfig = LOCATE_GEOMETRY,
                 segment_geometry: PreprocessConfig = SEGMENT_GEOMETRY, params: CascadeParams = CascadeParams(),
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
