"""Volume inference: an LGE image in, a label volume on exactly the input grid out.

The image is checked (io.validation), cut into a Stack along its acquisition axis, given to the
checkpoint's predictor (predictor.py: v1 or v2) and its labels cleaned (postprocess.py). Geometry
never enters the computation, so the same voxels with any direction matrix (oblique included) give
identical labels, and the output copies the input's size, spacing, origin and direction.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ..errors import CheckpointError
from ..io.validation import validate_image
from ..labels import MYOCARDIUM, scar_mask
from ..model.checkpoint import load_checkpoint
from ..resources import default_model_path, default_model_sha256
from .device import autocast_dtype, precision_name, resolve_device
from .postprocess import clean_labels
from .predictor import Cancel, Progress, SliceResults, predictor_for
from .stack import LabelStack, Stack


@dataclass
class SegmentationResult:
    label_stack: LabelStack                  # labels 0..4 in the layout they were made in, on the image's Stack:
                                             # what quantify, the overlay and the DICOM SEG read
    probabilities: sitk.Image | None = None  # float32 vector image (5 components), on request
    model_info: dict = field(default_factory=dict)
    qc_flags: list[str] = field(default_factory=list)   # e.g. no_lv_found, low_confidence, lv_at_image_edge
    confidence: float | None = None   # mean top-class probability over the voxels labelled LV (None: no LV)

    @cached_property
    def labels(self) -> sitk.Image:
        """The labels as a uint8 image on the input grid (made when first asked for, then kept: change
        the labels through this image, or make a new result, not label_stack's array in place)."""
        return self.label_stack.to_image()


QC_MESSAGES = {
    "no_lv_found": "no left ventricle found: the image may not be a short-axis LGE stack (nothing was segmented)",
    "lv_at_image_edge": "the LV touches the image border: part of the heart may lie outside the field of view",
    "low_confidence": "the model is unsure of this result (low probabilities): check it before use",
    "no_infarct": "no infarct above the model's minimum scar volume: small scar was dropped as noise",
}


class Segmenter:
    """Loads a ScarNet checkpoint once and segments images with it."""

    def __init__(self, model_path: str | Path | None = None, device: str = "auto", precision: str = "auto"):
        bundled = model_path is None
        path = Path(model_path) if model_path is not None else default_model_path()
        if bundled and not path.is_file():
            raise CheckpointError(f"no trained model is bundled ({path} is missing); "
                                  "train one with scarnet-train or pass --model CKPT")
        self.device = resolve_device(device)
        self.precision = precision_name(autocast_dtype(self.device, precision))
        self.model, self.metadata = load_checkpoint(path, self.device,
                                                    expected_sha256=default_model_sha256() if bundled else None)
        self.model_path = path
        if not self.metadata.is_cascade and self.model.config.prior:
            raise CheckpointError(f"{path}: a refine-stage network runs only inside a v2 model; "
                                  "export it with training/export.py --locate ... --refine")
        if not self.metadata.is_cascade and self.model.config.in_channels != 1:
            raise CheckpointError(f"{path}: a network that sees neighbouring slices (2.5-D) runs only as stage 2 "
                                  "of a v2 model; export it with training/export.py --locate")
        if self.device.type == "cpu":   # oneDNN's convolutions run faster on channels-last tensors
            self.model.to(memory_format=torch.channels_last)

    @property
    def model_info(self) -> dict:
        info = self.metadata.info()
        info.setdefault("name", self.model_path.stem)
        info["path"] = str(self.model_path)
        return info

    def predictor(self, batch_size: int = 8):
        """The checkpoint's predictor (predictor.py) at this device and precision."""
        return predictor_for(self.model, self.device, self.precision, batch_size, self.metadata.preprocessing)

    def segment(self, image: sitk.Image, progress: Progress | None = None, cancel: Cancel | None = None,
                batch_size: int = 8, return_probabilities: bool = False, postprocess: bool = True) -> SegmentationResult:
        validate_image(image)
        predictor = self.predictor(batch_size)
        stack = Stack.from_image(image)
        if progress:
            progress(0, len(stack))
        results = SliceResults(stack.slices.shape, predictor.num_classes, return_probabilities)
        qc_flags = predictor.predict(stack, results, progress, cancel)
        labels = results.labels
        if postprocess:
            labels = clean_labels(labels)
            if self.metadata.is_cascade:
                qc_flags += self._drop_small_scar(labels, image)
        probabilities = None if results.probabilities is None else stack.to_image(results.probabilities)
        return SegmentationResult(LabelStack(stack, labels), probabilities, self.model_info, qc_flags,
                                  results.lv_confidence)

    def _drop_small_scar(self, labels: np.ndarray, image: sitk.Image) -> list[str]:
        """Case-level "no infarct": predicted scar below the model's minimum volume becomes healthy myocardium."""
        minimum = self.model.params.min_scar_ml
        scar = scar_mask(labels)
        voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
        if minimum > 0 and scar.any() and scar.sum() * voxel_ml < minimum:
            labels[scar] = MYOCARDIUM
            return ["no_infarct"]
        return []
