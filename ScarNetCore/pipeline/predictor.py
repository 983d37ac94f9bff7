"""Predictors: a model, the device and precision it runs in and the batch size, applied to a Stack.

Both model generations have the same interface, `predict(stack, results, progress, cancel) -> QC
flags`: SlicePredictor (v1, each whole slice on one grid) and CascadePredictor (v2: find the LV,
segment the crop around it, optionally refine). Class probabilities go back to the native slice grid
through GridMapping's exact inverse before any argmax, so the labels lie on the input's own grid.

CascadePredictor, step by step:
- locate: stage 1 sees each whole slice at its coarse spacing; the LV is one 3-D component (lv.py).
- recentre: stage 1 is coarse, so its centre can be off by a few centimetres; stage 2 sees the LV
  within its 160 mm crop all the same, and stage-2 passes without test-time views re-centre the crop
  on the LV they find (`recentre_passes`; a pass that moves it less than `recentre_stop_mm` ends
  them) before the final one. When stage 1 is far off, each pass sees more of the LV than the last.
- segment: stage 2 on the crop, intensity-normalised over the part of the crop that lies in the
  image, so the result does not depend on how much chest, air or padding the field of view holds.
- refine (optional): the crop once more with stage 2's class probabilities for the slice and its
  neighbours (or the whole stack at once, for a refine network with stack_mixing).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..errors import Cancelled
from ..model import ScarNet
from ..model.cascade import LOCATE, SEGMENT, ScarNetCascade, SegmentEnsemble
from .device import autocast, autocast_dtype
from .lv import LVLocation, cross_sections_mm2, find_lv, touches_border, whole_image_location
from .preprocessing import GridMapping, PreprocessConfig, normalize_in_window, normalize_intensity, prepare_slices
from .stack import Stack, neighbour_indices

Progress = Callable[[int, int], None]
Cancel = Callable[[], bool]

# Test-time views as (quarter turns, mirrored): the identity and two flips (a vertical flip is a half
# turn mirrored), or the dihedral group: every quarter turn, each also mirrored.
PLAIN_VIEW = ((0, False),)
FLIP_VIEWS = ((0, False), (0, True), (2, True))
DIHEDRAL_VIEWS = tuple((k, mirror) for k in range(4) for mirror in (False, True))


def average_views(net: torch.nn.Module, batch: torch.Tensor, views=PLAIN_VIEW) -> torch.Tensor:
    """Class probabilities of `net` averaged over test-time `views` of the batch."""
    probs = None
    for k, mirror in views:
        x = torch.rot90(batch, k, (-2, -1))
        p = torch.softmax(net(x.flip(-1) if mirror else x).float(), 1)
        p = torch.rot90(p.flip(-1) if mirror else p, -k, (-2, -1))  # back to the crop's orientation
        probs = p if probs is None else probs + p
    return probs / len(views)


class SliceResults:
    """Per-slice results as batches arrive: labels, the model's confidence on the LV, probabilities on request.

    Only what is asked for is kept: no probability volume unless it is requested. (v2's stage 1 still
    holds its LV map and a connected-component analysis of the whole stack on the native grid.)"""

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
    def lv_confidence(self) -> float | None:
        """Mean top-class probability over the pixels labelled LV (blood pool or myocardium); None: no LV."""
        return self._top_sum / self.lv_pixels if self.lv_pixels else None


class _Predictor:
    """What both predictors hold: the network, its device, precision and batch size."""

    def __init__(self, model: torch.nn.Module, device: torch.device | str = "cpu", precision: str = "auto",
                 batch_size: int = 8):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.model = model
        self.device = torch.device(device)
        self.dtype = autocast_dtype(self.device, precision)
        self.batch_size = batch_size
        self._cancel: Cancel | None = None

    def _autocast(self):
        return autocast(self.device, self.dtype)

    def _check_cancel(self) -> None:
        if self._cancel is not None and self._cancel():
            raise Cancelled("segmentation cancelled; nothing was written")

    def _batches(self, todo: np.ndarray):
        """(start, slice indices) of each batch of todo, checking for cancellation before each."""
        for start in range(0, len(todo), self.batch_size):
            self._check_cancel()
            yield start, todo[start:start + self.batch_size]

    def predict(self, stack: Stack, results: SliceResults, progress: Progress | None = None,
                cancel: Cancel | None = None) -> list[str]:
        """Fill `results` with the model's answer for every slice of `stack`; returns QC flags."""
        self._cancel = cancel
        try:
            with torch.inference_mode():
                return self._predict(stack, results, progress)
        finally:
            self._cancel = None

    def _predict(self, stack: Stack, results: SliceResults, progress: Progress | None) -> list[str]:
        raise NotImplementedError


class SlicePredictor(_Predictor):
    """Model v1: every slice on the whole-field grid of the checkpoint's preprocessing."""

    def __init__(self, model: ScarNet, device: torch.device | str = "cpu", precision: str = "auto",
                 batch_size: int = 8, preprocessing: PreprocessConfig = PreprocessConfig()):
        super().__init__(model, device, precision, batch_size)
        self.preprocessing = preprocessing

    @property
    def num_classes(self) -> int:
        return self.model.config.num_classes

    def _predict(self, stack: Stack, results: SliceResults, progress: Progress | None) -> list[str]:
        total = len(stack)
        for start, index in self._batches(np.arange(total)):
            batch, mapping = prepare_slices(stack.slices[index], stack.spacing, self.preprocessing)
            with self._autocast():
                logits = self.model(batch.to(self.device))
            results.put(index, mapping.from_grid(torch.softmax(logits.float(), dim=1)).cpu())
            if progress:
                progress(min(start + self.batch_size, total), total)
        return []


class CascadePredictor(_Predictor):
    """Model v2: find the LV on the whole stack, then segment the crop around it on the slices that
    hold it (and refine, when the model has a refine stage). Slices without LV stay background."""

    model: ScarNetCascade

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def params(self):
        return self.model.params

    # ------------------------------------------------------------------------------ stages
    def lv_probability(self, stack: Stack) -> np.ndarray:
        """Stage 1's LV probability [N, h, w] on the native grid."""
        geometry = self.model.geometry[LOCATE]
        normalised = np.stack([normalize_intensity(s, geometry.percentiles) for s in stack.slices])
        mapping = GridMapping.for_slice(stack.slices.shape[-2:], stack.spacing, geometry)
        lv = np.zeros(stack.slices.shape, np.float32)
        for _, index in self._batches(np.arange(len(stack))):
            batch = mapping.to_grid(torch.from_numpy(normalised[index])[:, None])
            with self._autocast():
                probs = torch.softmax(self.model.locate(batch.to(self.device)).float(), 1)
            lv[index] = mapping.from_grid(probs.cpu())[:, 1:].sum(1).numpy()
        return lv

    def locate(self, stack: Stack) -> LVLocation:
        return find_lv(self.lv_probability(stack), stack.spacing, self.params)

    def crops(self, stack: Stack, positions: np.ndarray, centre):
        """The slices at `positions` [n, channels] (neighbour_indices) cropped around `centre` at stage
        2's geometry, each normalised over the part of the crop inside the image → (batch, mapping)."""
        geometry = self.model.geometry[SEGMENT]
        shape = stack.slices.shape[-2:]
        mapping = GridMapping.for_slice(shape, stack.spacing, geometry, centre_native=centre)
        needed = np.unique(positions)
        raw = mapping.to_grid(torch.from_numpy(stack.slices[needed].astype(np.float32))[:, None])[:, 0].numpy()
        inside = mapping.to_grid(torch.ones(1, 1, *shape))[0, 0].numpy() > 0.5
        crops = np.stack([normalize_in_window(r, inside, geometry.percentiles) for r in raw])
        return torch.from_numpy(crops[np.searchsorted(needed, positions)]), mapping

    def segment_grid(self, stack: Stack, index: np.ndarray, centre, tta: bool = True,
                     net: torch.nn.Module | None = None):
        """Stage 2 on stack slices[index] (a 2.5-D network also takes their neighbours from the stack)
        → ([n, K, g, g] class probabilities on the crop, the crop's mapping).

        tta: the model's test-time views (CascadeParams flip_tta, rot90_tta); False: the plain view.
        net: another network on stage 2's crop (default: stage 2)."""
        net = self.model.segment if net is None else net
        positions = neighbour_indices(index, len(stack), net.config.in_channels // 2,
                                      stack.neighbour_step(self.params.neighbour_mm))
        batch, mapping = self.crops(stack, positions, centre)
        with self._autocast():
            probs = average_views(net, batch.to(self.device), self._views() if tta else PLAIN_VIEW)
        return probs.cpu(), mapping

    def segment(self, stack: Stack, index: np.ndarray, centre, tta: bool = True,
                net: torch.nn.Module | None = None) -> torch.Tensor:
        """segment_grid's probabilities on the native grid: [n, K, h, w]."""
        probs, mapping = self.segment_grid(stack, index, centre, tta, net)
        return mapping.from_grid(probs)

    def recentre(self, stack: Stack, index: np.ndarray, centre) -> tuple[float, float]:
        """Stage 2's own LV centre (native pixels) over stack slices[index], in its plain view; `centre`
        if it finds no LV."""
        net = self.model.segment
        if self.params.recentre_first_member and isinstance(net, SegmentEnsemble):
            net = net.members[0]
        sums, count = np.zeros(2), 0
        for start in range(0, len(index), self.batch_size):
            probs = self.segment(stack, index[start:start + self.batch_size], centre, tta=False, net=net)
            lv = probs.argmax(1).numpy() > 0
            per_row, per_column = lv.sum(axis=(0, 2)), lv.sum(axis=(0, 1))   # not index arrays: 24 bytes a pixel
            sums += (per_row @ np.arange(len(per_row)), per_column @ np.arange(len(per_column)))
            count += int(per_row.sum())
        return tuple(float(v) for v in sums / count) if count else centre

    def refine(self, stack: Stack, index: np.ndarray, centre, stage_2: dict) -> torch.Tensor:
        """The refine stage on stack slices[index] → [n, K, h, w] class probabilities on the native grid.

        stage_2: stack position → stage 2's crop probabilities [K, g, g] at the same centre
        (segment_grid), for every slice stage 2 saw; a slice it did not see counts as background, as
        its result does. Each slice comes with its neighbours (as a 2.5-D stage 2 takes them), and each
        of those with its stage-2 probabilities of the classes other than background."""
        net = self.model.refine
        positions = neighbour_indices(index, len(stack), net.config.in_channels // 2,
                                      stack.neighbour_step(self.params.neighbour_mm))
        batch, mapping = self.crops(stack, positions, centre)
        nothing = torch.zeros(net.config.num_classes - 1, *batch.shape[-2:])
        prior = torch.stack([torch.cat([stage_2[p][1:] if p in stage_2 else nothing for p in row]) for row in positions])
        with self._autocast():
            probs = average_views(net, torch.cat([batch, prior], 1).to(self.device), self._views())
        return mapping.from_grid(probs.cpu())

    def _views(self):
        if not self.params.flip_tta:
            return PLAIN_VIEW
        return DIHEDRAL_VIEWS if self.params.rot90_tta else FLIP_VIEWS

    # -------------------------------------------------------------------------- the whole run
    def _predict(self, stack: Stack, results: SliceResults, progress: Progress | None) -> list[str]:
        params, total = self.params, len(stack)
        location = self.locate(stack)
        judged_by_stage_2 = not location.found   # stage 2 decides, if stage 1 saw one slice's worth of LV
        if judged_by_stage_2:
            location = whole_image_location(stack.slices.shape[-2:], stack.spacing, params,
                                            self.model.geometry[SEGMENT], total, location.largest_mm2)
        if location is None:
            if progress:
                progress(total, total)
            return ["no_lv_found"]
        flags = ["lv_at_image_edge"] if location.at_edge else []
        todo = np.flatnonzero(location.slices)
        centre = location.centre
        for _ in range(params.recentre_passes):
            self._check_cancel()
            previous, centre = centre, self.recentre(stack, todo, centre)
            if np.hypot(*((np.subtract(centre, previous)) * stack.spacing)) < params.recentre_stop_mm:
                break
        done = total - len(todo)
        if self.model.refine is None:
            for start, index in self._batches(todo):
                results.put(index, self.segment(stack, index, centre))
                if progress:
                    progress(done + start + len(index), total)
        else:
            self._segment_and_refine(stack, todo, centre, results, progress)
        if progress and not len(todo):
            progress(total, total)
        if judged_by_stage_2 and (results.lv_confidence or 0.0) < params.low_confidence:
            results.clear()    # neither stage is sure there is a heart: say so rather than guess
        if results.lv_pixels and results.largest_lv_mm2(stack.spacing) < params.min_stack_lv_mm2:
            results.clear()    # smaller than any adult LV: stage 1's own minimum, asked of the result too
        if results.lv_pixels == 0:
            return ["no_lv_found"]
        if judged_by_stage_2 and touches_border(results.labels > 0):
            flags.append("lv_at_image_edge")
        if results.lv_confidence < params.low_confidence:
            flags.append("low_confidence")
        return flags

    def _segment_and_refine(self, stack: Stack, todo: np.ndarray, centre, results: SliceResults,
                            progress: Progress | None) -> None:
        """Stage 2 on every slice first (the refine stage looks at each slice's neighbours' results too),
        then the refine stage; each pass counts for half of the progress, reported as it grows."""
        total = len(stack)
        done = reported = total - len(todo)

        def advance(passes_done: int) -> None:   # slice passes done out of 2·len(todo)
            nonlocal reported
            if progress and done + passes_done // 2 > reported:
                reported = done + passes_done // 2
                progress(reported, total)

        stage_2 = {}
        for start, index in self._batches(todo):
            probs, _ = self.segment_grid(stack, index, centre)
            stage_2.update(zip(index.tolist(), probs))
            advance(start + len(index))
        if self.model.refine.config.stack_mixing and len(todo):
            # a refine stage that sees the stack gets all of it at once, in order, as in training (a slice
            # stage 2 did not see comes with background as its answer); only todo's results are kept
            self._check_cancel()
            probs = self.refine(stack, np.arange(total), centre, stage_2)
            results.put(todo, probs[todo])
            advance(2 * len(todo))
            return
        for start, index in self._batches(todo):
            results.put(index, self.refine(stack, index, centre, stage_2))
            advance(len(todo) + start + len(index))


def predictor_for(model: torch.nn.Module, device: torch.device | str = "cpu", precision: str = "auto",
                  batch_size: int = 8, preprocessing: PreprocessConfig = PreprocessConfig()) -> _Predictor:
    """The predictor of a loaded checkpoint's model (v2 cascade or v1 network)."""
    if isinstance(model, ScarNetCascade):
        return CascadePredictor(model, device, precision, batch_size)
    return SlicePredictor(model, device, precision, batch_size, preprocessing)
