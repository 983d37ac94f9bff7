"""Where the bundled model, its checksum and the sample volume live.

Source checkout and editable install: `<repo>/Resources`. An installed Slicer extension places
`Resources/` beside the ScarNetCore package the same way; SCARNET_RESOURCES overrides both.
"""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL_NAME = "scarnet_v2_emidec.safetensors"           # model v2: the cascade (the default)
V1_MODEL_NAME = "scarnet_litemedsam_emidec.safetensors"         # model v1: whole-field, kept for comparison
SAMPLE_VOLUME_NAME = "EMIDEC_samplePositive_LGE.nii.gz"


def resources_dir() -> Path:
    override = os.environ.get("SCARNET_RESOURCES")
    return Path(override) if override else Path(__file__).resolve().parents[1] / "Resources"


def default_model_path() -> Path:
    return resources_dir() / "Models" / DEFAULT_MODEL_NAME


def v1_model_path() -> Path:
    return resources_dir() / "Models" / V1_MODEL_NAME


def default_model_sha256() -> str | None:
    """The bundled model's published checksum (`sha256sum` format file beside it), if present."""
    path = default_model_path().with_suffix(".sha256")
    return path.read_text(encoding="utf-8").split()[0] if path.is_file() else None


def sample_volume_path() -> Path:
    return resources_dir() / "Sample" / SAMPLE_VOLUME_NAME
