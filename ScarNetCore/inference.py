"""Volume inference: an LGE image in, a label volume on exactly the input grid out.

Slices are cut along the acquisition axis (largest spacing), preprocessed once (preprocessing.py,
configuration read from the checkpoint), segmented in batches, and their class probabilities mapped
back to the native slice grid before the argmax. Geometry never enters the computation, so the same
voxels with any direction matrix (oblique included) give identical labels, and the output copies
the input's size, spacing, origin and direction.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk
import torch

from .cascade import (ScarNetCascade, cross_sections_mm2, locate_lv, neighbour_step, refine_centre, refine_crops,
                      segment_crops, segment_grid, touches_border, whole_image_location)
from .checkpoint import load_checkpoint
from .errors import Cancelled, CheckpointError
from .io import validate_image
from .labels import MYOCARDIUM, scar_mask
from .postprocess import clean_labels
from .preprocessing import PreprocessConfig, prepare_slices
from .resources import default_model_path, default_model_sha256
from .volume import cut_axis, join_slices, split_slices

Progress = Callable[[int, int], None]


def available_devices() -> list[str]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        found = available_devices()
        return torch.device("cuda" if "cuda" in found else "mps" if "mps" in found else "cpu")
    if name.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {name!r}: choose auto, cpu, cuda or mps")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device cuda requested but PyTorch sees no CUDA GPU; use --device auto or cpu")
    if name == "mps" and "mps" not in available_devices():
        raise ValueError("device mps requested but Apple MPS is not available; use --device auto or cpu")
    return torch.device(name)


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """Reduced precision where the hardware runs it natively (None: plain fp32).

    bf16 on CPUs with native bf16 (AVX512-BF16/AMX) and on CUDA GPUs that support it, else fp16 on
    CUDA. Documented tolerance: ≥ 99.9 % of all voxels equal to fp32. Measured with the bundled model
    on the two EMIDEC volumes: 99.95 % of all voxels, 97.8–97.9 % of the voxels either run labels as
    LV (the differences are boundary voxels); benchmarks/benchmark_inference.py re-measures it.
    Use precision="fp32" for bit-stable results across machines.
    """
    if precision == "fp32":
        return None
    if precision in ("bf16", "fp16"):
        return torch.bfloat16 if precision == "bf16" else torch.float16
    if precision != "auto":
        raise ValueError(f"precision {precision!r}: choose auto, fp32, bf16 or fp16")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
        return torch.bfloat16
    return None


@dataclass
class SegmentationResult:
    labels: sitk.Image                       # uint8 0..4 on the input grid
    probabilities: sitk.Image | None = None  # float32 vector image (5 components), on request
    model_info: dict = field(default_factory=dict)
    qc_flags: list[str] = field(default_factory=list)   # e.g. no_lv_found, low_confidence, lv_at_image_edge
    confidence: float | None = None   # mean top-class probability over the voxels labelled LV (None: no LV)


QC_MESSAGES = {
    "no_lv_found": "no left ventricle found: the image may not be a short-axis LGE stack (nothing was segmented)",
    "lv_at_image_edge": "the LV touches the image border: part of the heart may lie outside the field of view",
    "low_confidence": "the model is unsure of this result (low probabilities): check it before use",
    "no_infarct": "no infarct above the model's minimum scar volume: small scar was dropped as noise",
}


class _Collector:
    """Per-slice results as batches arrive: labels, the model's confidence on the LV, probabilities on request.

    Only what is asked for is kept, so memory stays bounded by the labels for large stacks."""

    def __init__(self, shape, num_classes: int, keep_probabilities: bool):
        self.labels = np.zeros(shape, np.uint8)
        self.probabilities = np.empty((shape[0], num_classes, *shape[1:]), np.float32) if keep_probabilities else None
        self.clear()  # background where no slice result arrives (v2: slices without LV)

    def put(self, index: np.ndarray, probs: torch.Tensor) -> None:
        top, labels = probs.max(dim=1)
        self.labels[index] = labels.numpy().astype(np.uint8)
        lv = labels > 0
        self.lv_pixels += int(lv.sum())
        self._top_sum += float(top[lv].sum())
        if self.probabilities is not None:
            self.probabilities[index] = probs.numpy()

    def clear(self) -> None:
        """Every slice background, with probability 1 (how it starts, and what is left when nothing is found)."""
        self.labels[:] = 0
        if self.probabilities is not None:
            self.probabilities[:] = 0
            self.probabilities[:, 0] = 1
        self.lv_pixels, self._top_sum = 0, 0.0

    def largest_lv_mm2(self, spacing) -> float:
        """The largest cross-section of the pixels labelled LV (blood pool or myocardium), in mm²."""
        return float(cross_sections_mm2(self.labels > 0, spacing).max())

    @property
    def lv_confidence(self) -> float:
        """Mean top-class probability over the pixels labelled LV (blood pool or myocardium)."""
        return self._top_sum / self.lv_pixels if self.lv_pixels else 0.0


class Segmenter:
    """Loads a ScarNet checkpoint once and segments images with it."""

    def __init__(self, model_path: str | Path | None = None, device: str = "auto", precision: str = "auto"):
        bundled = model_path is None
        path = Path(model_path) if model_path is not None else default_model_path()
        if bundled and not path.is_file():
            raise CheckpointError(f"no trained model is bundled ({path} is missing); "
                                  "train one with scarnet-train or pass --model CKPT")
        self.device = resolve_device(device)
        self.model, self.metadata = load_checkpoint(path, self.device,
                                                    expected_sha256=default_model_sha256() if bundled else None)
        self.model_path = path
        self.preprocessing = PreprocessConfig.from_dict(self.metadata.get("preprocessing", {}))
        self.dtype = autocast_dtype(self.device, precision)
        self.is_cascade = isinstance(self.model, ScarNetCascade)
        if not self.is_cascade and self.model.config.prior:
            raise CheckpointError(f"{path}: a refine-stage network runs only inside a v2 model; "
                                  "export it with training/export.py --locate ... --refine")
        if not self.is_cascade and self.model.config.in_channels != 1:
            raise CheckpointError(f"{path}: a network that sees neighbouring slices (2.5-D) runs only as stage 2 "
                                  "of a v2 model; export it with training/export.py --locate")
        self.num_classes = self.model.num_classes if self.is_cascade else self.model.config.num_classes
        if self.device.type == "cpu":   # oneDNN's convolutions run faster on channels-last tensors
            self.model.to(memory_format=torch.channels_last)

    @property
    def model_info(self) -> dict:
        keys = ("name", "version", "licence", "encoder", "architecture", "training_data", "metrics")
        info = {k: self.metadata[k] for k in keys if k in self.metadata}
        info.setdefault("name", self.model_path.stem)
        info["path"] = str(self.model_path)
        return info

    def _autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def segment(self, image: sitk.Image, progress: Progress | None = None, cancel: Callable[[], bool] | None = None,
                batch_size: int = 8, return_probabilities: bool = False, postprocess: bool = True) -> SegmentationResult:
        validate_image(image)
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        array = sitk.GetArrayFromImage(image).astype(np.float32)
        axis = cut_axis(image)
        if axis is None:
            slices, spacing, slice_mm = array[None], tuple(image.GetSpacing()[::-1]), None
        else:
            slices, spacing = split_slices(array, image, axis)
            slice_mm = image.GetSpacing()[::-1][axis]
        total = len(slices)
        if progress:
            progress(0, total)
        out = _Collector(slices.shape, self.num_classes, return_probabilities)
        with torch.inference_mode():
            if self.is_cascade:
                qc_flags = self._cascade(slices, spacing, slice_mm, batch_size, progress, cancel, out)
            else:
                qc_flags = self._whole_slices(slices, spacing, batch_size, progress, cancel, out)
        labels = out.labels
        if postprocess:
            labels = clean_labels(labels)
            if self.is_cascade:
                qc_flags += self._drop_small_scar(labels, image)
        return SegmentationResult(self._to_image(labels, axis, image),
                                  self._probabilities_image(out.probabilities, axis, image),
                                  self.model_info, qc_flags, out.lv_confidence if out.lv_pixels else None)

    def _check_cancel(self, cancel):
        if cancel is not None and cancel():
            raise Cancelled("segmentation cancelled; nothing was written")

    def _whole_slices(self, slices, spacing, batch_size, progress, cancel, out: "_Collector") -> list[str]:
        """v1: every slice on the whole-field grid. Fills `out`; returns QC flags (none)."""
        total = len(slices)
        for start in range(0, total, batch_size):
            self._check_cancel(cancel)
            batch, mapping = prepare_slices(slices[start:start + batch_size], spacing, self.preprocessing)
            with self._autocast():
                logits = self.model(batch.to(self.device))
            out.put(np.arange(start, start + len(batch)), mapping.from_grid(torch.softmax(logits.float(), dim=1)).cpu())
            if progress:
                progress(min(start + batch_size, total), total)
        return []

    def _cascade(self, slices, spacing, slice_mm, batch_size, progress, cancel, out: "_Collector") -> list[str]:
        """v2: find the LV on the whole stack, then segment the crop around it on the slices that hold it.

        Slices without LV stay background (probability 1). Fills `out`; returns QC flags."""
        total = len(slices)
        self._check_cancel(cancel)
        location = locate_lv(self.model, slices, spacing, self.device, self._autocast, batch_size)
        judged_by_stage_2 = not location.found   # stage 2 decides, if stage 1 saw one slice's worth of LV
        if judged_by_stage_2:
            location = whole_image_location(slices.shape[-2:], spacing, self.model, total, location.largest_mm2)
        if location is None:
            if progress:
                progress(total, total)
            return ["no_lv_found"]
        flags = ["lv_at_image_edge"] if location.at_edge else []
        todo = np.flatnonzero(location.slices)
        done = total - len(todo)
        centre = location.centre
        step = neighbour_step(slice_mm, self.model.params)
        for _ in range(self.model.params.refine_passes):
            self._check_cancel(cancel)
            previous, centre = centre, refine_centre(self.model, slices, todo, spacing, centre, self.device,
                                                     self._autocast, batch_size, step)
            if np.hypot(*((np.subtract(centre, previous)) * spacing)) < self.model.params.refine_stop_mm:
                break
        if self.model.refine is None:
            for start, index in self._batches(todo, batch_size, cancel):
                out.put(index, segment_crops(self.model, slices, index, spacing, centre, self.device, self._autocast,
                                             step=step))
                if progress:
                    progress(done + start + len(index), total)
        else:
            self._segment_and_refine(slices, todo, spacing, centre, step, batch_size, progress, cancel, out, done, total)
        if progress and not len(todo):
            progress(total, total)
        if judged_by_stage_2 and out.lv_confidence < self.model.params.low_confidence:
            out.clear()    # neither stage is sure there is a heart: say so rather than guess
        if out.lv_pixels and out.largest_lv_mm2(spacing) < self.model.params.min_stack_lv_mm2:
            out.clear()    # smaller than any adult LV: stage 1's own minimum, asked of the result too
        if out.lv_pixels == 0:
            return ["no_lv_found"]
        if judged_by_stage_2 and touches_border(out.labels > 0):
            flags.append("lv_at_image_edge")
        if out.lv_confidence < self.model.params.low_confidence:
            flags.append("low_confidence")
        return flags

    def _segment_and_refine(self, slices, todo, spacing, centre, step, batch_size, progress, cancel, out: "_Collector",
                            done: int, total: int) -> None:
        """Stage 2 on every slice first (the refine stage looks at each slice's neighbours' results too),
        then the refine stage; each pass counts for half of the progress, reported as it grows."""
        reported = done

        def advance(passes_done: int) -> None:   # slice passes done out of 2·len(todo)
            nonlocal reported
            if progress and done + passes_done // 2 > reported:
                reported = done + passes_done // 2
                progress(reported, total)

        stage_2 = {}
        for start, index in self._batches(todo, batch_size, cancel):
            probs, _ = segment_grid(self.model, slices, index, spacing, centre, self.device, self._autocast, step=step)
            stage_2.update(zip(index.tolist(), probs))
            advance(start + len(index))
        if self.model.refine.config.stack_mixing and len(todo):
            # a refine stage that sees the stack gets all of it at once, in order, as in training (a slice
            # stage 2 did not see comes with background as its answer); only todo's results are kept
            self._check_cancel(cancel)
            probs = refine_crops(self.model, slices, np.arange(len(slices)), spacing, centre, stage_2, self.device,
                                 self._autocast, step=step)
            out.put(todo, probs[todo])
            advance(2 * len(todo))
            return
        for start, index in self._batches(todo, batch_size, cancel):
            out.put(index, refine_crops(self.model, slices, index, spacing, centre, stage_2, self.device,
                                        self._autocast, step=step))
            advance(len(todo) + start + len(index))

    def _batches(self, todo: np.ndarray, batch_size: int, cancel):
        """(start, slice indices) of each batch of todo, checking for cancellation before each."""
        for start in range(0, len(todo), batch_size):
            self._check_cancel(cancel)
            yield start, todo[start:start + batch_size]

    def _drop_small_scar(self, labels: np.ndarray, image: sitk.Image) -> list[str]:
        """Case-level "no infarct": predicted scar below the model's minimum volume becomes healthy myocardium."""
        minimum = self.model.params.min_scar_ml
        scar = scar_mask(labels)
        voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
        if minimum > 0 and scar.any() and scar.sum() * voxel_ml < minimum:
            labels[scar] = MYOCARDIUM
            return ["no_infarct"]
        return []

    @staticmethod
    def _to_image(slices: np.ndarray, axis: int | None, reference: sitk.Image) -> sitk.Image:
        array = slices[0] if axis is None else join_slices(slices, axis)
        out = sitk.GetImageFromArray(np.ascontiguousarray(array))
        out.CopyInformation(reference)
        return out

    @staticmethod
    def _probabilities_image(probs: np.ndarray | None, axis: int | None, reference: sitk.Image):
        if probs is None:
            return None
        channels_last = np.moveaxis(probs, 1, -1)  # [N, h, w, K]
        array = channels_last[0] if axis is None else np.moveaxis(channels_last, 0, axis)
        out = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=True)
        out.CopyInformation(reference)
        return out
