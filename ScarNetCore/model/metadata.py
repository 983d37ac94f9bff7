"""The typed reading of a checkpoint's metadata (its safetensors header, checkpoint.py): what the engine
needs to rebuild and run the model, each part checked where it is read, and old names understood.

A v1 file describes one network (`config`) and its preprocessing; a v2 file (architecture
"ScarNetCascade") describes each stage's network, or the networks of an ensemble (`members`), the
stage's geometry (its preprocessing, stored as {spacing_mm, grid_size, percentiles}) and the cascade
settings. Everything else in the header (training data, metrics, training configs) is provenance,
kept as read in `header`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..pipeline.preprocessing import PreprocessConfig
from .cascade import LOCATE, REFINE, SEGMENT, CascadeParams
from .scarnet import ScarNetConfig

SINGLE = "ScarNet"           # v1: one network on the whole slice
CASCADE = "ScarNetCascade"   # v2: every stage in one file, tensors prefixed "locate.", "segment." (and "refine.")
INFO_KEYS = ("name", "version", "licence", "encoder", "architecture", "training_data", "metrics")


def geometry_to_dict(geometry: PreprocessConfig) -> dict:
    """A stage's geometry as v2 files store it."""
    return {"spacing_mm": geometry.target_spacing_mm, "grid_size": geometry.grid_size,
            "percentiles": list(geometry.percentiles)}


def geometry_from_dict(data: dict) -> PreprocessConfig:
    unknown = set(data) - {"spacing_mm", "grid_size", "percentiles"}
    if unknown:
        raise ValueError(f"unknown stage geometry setting(s): {', '.join(sorted(unknown))}")
    return PreprocessConfig(grid_size=int(data["grid_size"]), target_spacing_mm=float(data["spacing_mm"]),
                            percentiles=tuple(data.get("percentiles", (0.5, 99.5))))


@dataclass(frozen=True)
class StageSpec:
    """One cascade stage as a file describes it: one network config, or one per ensemble member."""
    configs: tuple[ScarNetConfig, ...]
    geometry: PreprocessConfig
    ensemble: bool = False

    @classmethod
    def from_dict(cls, data: dict) -> "StageSpec":
        if "members" in data:
            return cls(tuple(ScarNetConfig.from_dict(c) for c in data["members"]),
                       geometry_from_dict(data["geometry"]), ensemble=True)
        return cls((ScarNetConfig.from_dict(data["config"]),), geometry_from_dict(data["geometry"]))


@dataclass(frozen=True)
class ModelMetadata:
    architecture: str
    preprocessing: PreprocessConfig                  # v1: the network's; v2: stage 2's (the crop)
    config: ScarNetConfig | None = None              # v1
    stages: dict[str, StageSpec] = field(default_factory=dict)   # v2, in stage order
    cascade: CascadeParams | None = None             # v2
    header: dict = field(default_factory=dict)       # everything the file says, as read

    @classmethod
    def from_header(cls, header: dict) -> "ModelMetadata":
        """Raises ValueError (or KeyError/TypeError) naming what a header lacks or has wrong."""
        architecture = header.get("architecture", SINGLE)
        preprocessing = PreprocessConfig.from_dict(header.get("preprocessing", {}))
        if architecture == SINGLE:
            return cls(architecture, preprocessing, config=ScarNetConfig.from_dict(header["config"]), header=header)
        if architecture != CASCADE:
            raise ValueError(f"unknown architecture {architecture!r} (this ScarNet knows {SINGLE} and {CASCADE}; "
                             "a newer ScarNet may be needed)")
        unknown = set(header["stages"]) - {LOCATE, SEGMENT, REFINE}
        if unknown:
            raise ValueError(f"unknown stage(s) {sorted(unknown)}; a newer ScarNet may be needed")
        stages = {name: StageSpec.from_dict(header["stages"][name])
                  for name in (LOCATE, SEGMENT, REFINE) if name in header["stages"]}
        if REFINE in stages and stages[REFINE].geometry != stages[SEGMENT].geometry:
            raise ValueError("the refine stage must see stage 2's crop (the same geometry)")
        return cls(architecture, preprocessing, stages=stages, cascade=CascadeParams.from_dict(header.get("cascade")),
                   header=header)

    @property
    def is_cascade(self) -> bool:
        return self.architecture == CASCADE

    def info(self) -> dict:
        """Name, version, licence, encoder, architecture, training data and metrics, where recorded."""
        return {k: self.header[k] for k in INFO_KEYS if k in self.header}
