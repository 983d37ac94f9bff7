"""Training data readers. Every sample is one slice on the model grid, with its case id for splitting.

Two layouts:
- slice folders: `images/<case>_slice<NNN>.png` + `masks/<same name>` (the EMIDEC 2D export);
- volume folders: `images/<name>.nii.gz` + `masks/<name>.nii.gz` (NIfTI/NRRD/MHA; same file name),
  cut into slices along the acquisition axis (largest spacing) with their real pixel spacing.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ScarNetCore.pipeline.preprocessing import GridMapping, PreprocessConfig, normalize_intensity
from ScarNetCore.pipeline.stack import Stack

SLICE_NAME = re.compile(r"^(?P<case>.+?)_slice(?P<index>\d+)\.png$", re.IGNORECASE)
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def volume_stem(name: str) -> str | None:
    """File name without its volume suffix (the case id), or None for a file that is not a volume."""
    return next((name[: -len(s)] for s in VOLUME_SUFFIXES if name.endswith(s)), None)


@dataclass
class SliceSample:
    case: str
    index: int
    image: np.ndarray   # float32 [grid, grid] in [0, 1]
    mask: np.ndarray    # uint8 [grid, grid], labels 0..4


def remap_labels(mask: np.ndarray, mapping: dict[int, int] | None) -> np.ndarray:
    """Apply a dataset's label mapping (e.g. {5: 3} when its scar label is 5); unmapped values stay."""
    mask = np.asarray(mask).astype(np.int64)
    if mapping:
        out = mask.copy()
        for src, dst in mapping.items():
            out[mask == int(src)] = int(dst)
        mask = out
    if mask.min() < 0 or mask.max() > 4:
        raise ValueError(f"mask values {sorted(np.unique(mask).tolist())} outside 0..4; set label_map in the config")
    return mask.astype(np.uint8)


def _to_grid(image: np.ndarray, mask: np.ndarray, spacing, config: PreprocessConfig):
    mapping = GridMapping.for_slice(image.shape, spacing, config)
    img = mapping.to_grid(torch.from_numpy(normalize_intensity(image, config.percentiles))[None, None])[0, 0]
    # masks: nearest neighbour through the same mapping (one-hot would be exact but costs 5×)
    if tuple(mapping.resized) != tuple(image.shape):
        m = torch.nn.functional.interpolate(torch.from_numpy(mask)[None, None].float(), size=mapping.resized,
                                            mode="nearest")
        msk = GridMapping(mapping.resized, mapping.resized, mapping.grid).to_grid(m)[0, 0]
    else:
        msk = mapping.to_grid(torch.from_numpy(mask)[None, None].float())[0, 0]
    return img.numpy(), msk.numpy().astype(np.uint8)


def read_slice_folder(root: str | Path, config: PreprocessConfig = PreprocessConfig(),
                      label_map: dict[int, int] | None = None, cases: set[str] | None = None) -> list[SliceSample]:
    root = Path(root)
    samples = []
    for image_path in sorted((root / "images").glob("*.png")):
        match = SLICE_NAME.match(image_path.name)
        if not match:
            raise ValueError(f"{image_path}: name does not follow <case>_slice<NNN>.png")
        if cases is not None and match["case"] not in cases:
            continue
        mask_path = root / "masks" / image_path.name
        if not mask_path.is_file():
            raise FileNotFoundError(f"{image_path}: no mask {mask_path}")
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(image_path))).astype(np.float32)
        mask = remap_labels(sitk.GetArrayFromImage(sitk.ReadImage(str(mask_path))), label_map)
        spacing = (config.png_nominal_spacing_mm,) * 2
        img, msk = _to_grid(image, mask, spacing, config)
        samples.append(SliceSample(match["case"], int(match["index"]), img, msk))
    if not samples:
        raise FileNotFoundError(f"{root}: no slices found under images/ (expected <case>_slice<NNN>.png)")
    return samples


def read_volume_folder(root: str | Path, config: PreprocessConfig = PreprocessConfig(),
                       label_map: dict[int, int] | None = None, cases: set[str] | None = None) -> list[SliceSample]:
    root = Path(root)
    samples = []
    for image_path in sorted(p for p in (root / "images").iterdir() if volume_stem(p.name) is not None):
        case = volume_stem(image_path.name)
        if cases is not None and case not in cases:
            continue
        mask_path = root / "masks" / image_path.name
        if not mask_path.is_file():
            raise FileNotFoundError(f"{image_path}: no mask with the same file name in {root / 'masks'}")
        image, mask = sitk.ReadImage(str(image_path)), sitk.ReadImage(str(mask_path))
        if image.GetSize() != mask.GetSize():
            raise ValueError(f"{case}: image {image.GetSize()} and mask {mask.GetSize()} differ in size")
        stack = Stack.from_image(image)
        img_slices, spacing = stack.slices, stack.spacing
        msk_slices = remap_labels(np.rint(stack.split(mask)), label_map)
        for index, (img, msk) in enumerate(zip(img_slices, msk_slices)):
            g_img, g_msk = _to_grid(img, msk, spacing, config)
            samples.append(SliceSample(case, index, g_img, g_msk))
    if not samples:
        raise FileNotFoundError(f"{root}: no volumes found under images/")
    return samples


def read_dataset(root: str | Path, layout: str, **kwargs) -> list[SliceSample]:
    readers = {"slices": read_slice_folder, "volumes": read_volume_folder}
    if layout not in readers:
        raise ValueError(f"data layout {layout!r}: choose 'slices' or 'volumes'")
    return readers[layout](root, **kwargs)


def case_ids(root: str | Path, layout: str) -> list[str]:
    root = Path(root)
    if layout == "slices":
        return sorted({SLICE_NAME.match(p.name)["case"] for p in (root / "images").glob("*.png") if SLICE_NAME.match(p.name)})
    return sorted(stem for p in (root / "images").iterdir() if (stem := volume_stem(p.name)) is not None)
