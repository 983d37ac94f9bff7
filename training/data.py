"""The one reader of labelled data: the dataset layouts, the case split file and the label mapping.
Training (slices on the model grid) and evaluation (whole cases, as a user's image) both read here.

Two layouts:
- slices:  `images/<case>_slice<NNN>.png` + `masks/<same name>` (the EMIDEC 2D export). A case's
           slices are grouped by <case> and ordered by NNN. PNG stores no spacing: in-plane spacing is
           the preprocessing's `png_nominal_spacing_mm`, the slice distance a nominal one
           (DEFAULT_THICKNESS_MM, EMIDEC's typical value) where a case is stacked into one volume.
- volumes: `images/<name>.nii.gz` + `masks/<name>.nii.gz` (NIfTI/NRRD/MHA; same file name), or one
           folder with `<case>_image.<ext>` + `<case>_label.<ext>` (also _mask/_seg/_gt), real spacing;
           cut into slices along the acquisition axis (ScarNetCore.pipeline.stack, as inference cuts).
Reference labels are 0..4 (EMIDEC); `label_map` maps another dataset's values (e.g. {5: 3}); volume
labels stored as floats are rounded first. The split file is JSON: {"train": [...], "validation":
[...], "test": [...]} case ids.
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

if TYPE_CHECKING:  # volumes and whole cases only: the slices layout is read without it (the GPU machine)
    import SimpleITK as sitk

from ScarNetCore.pipeline.preprocessing import GridMapping, PreprocessConfig, normalize_intensity
from ScarNetCore.pipeline.stack import Stack

SLICE_NAME = re.compile(r"^(?P<case>.+?)_slice(?P<index>\d+)\.png$", re.IGNORECASE)
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
LABEL_SUFFIXES = ("_label", "_mask", "_seg", "_gt")
DEFAULT_THICKNESS_MM = 10.0   # nominal slice distance of a PNG case stacked into a volume
LAYOUTS = ("slices", "volumes")


# --- the layouts -------------------------------------------------------------------------------------

def volume_stem(name: str) -> str | None:
    """File name without its volume suffix (the case id), or None for a file that is not a volume."""
    return next((name[: -len(s)] for s in VOLUME_SUFFIXES if name.endswith(s)), None)


def detect_layout(root: str | Path) -> str:
    """slices when images/ holds PNGs, else volumes."""
    return "slices" if any((Path(root) / "images").glob("*.png")) else "volumes"


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"data layout {layout!r}: choose 'slices' or 'volumes'")


def slice_files(root: str | Path) -> dict[str, list[tuple[int, Path]]]:
    """Case id → [(slice number, image path)] in slice order, for every PNG under images/ (in case order)."""
    groups: dict[str, list[tuple[int, Path]]] = {}
    for path in sorted((Path(root) / "images").glob("*.png")):
        match = SLICE_NAME.match(path.name)
        if not match:
            raise ValueError(f"{path}: name does not follow <case>_slice<NNN>.png")
        groups.setdefault(match["case"], []).append((int(match["index"]), path))
    return {case: sorted(groups[case]) for case in sorted(groups)}


def volume_pairs(root: str | Path) -> dict[str, tuple[Path, Path]]:
    """Case id → (image path, label path), for either volume layout (the label file may be absent)."""
    root = Path(root)
    pairs = {}
    if (root / "images").is_dir():
        for path in sorted((root / "images").iterdir()):
            stem = volume_stem(path.name)
            if stem is not None:
                pairs[stem] = (path, root / "masks" / path.name)
        return pairs
    files = {volume_stem(p.name): p for p in sorted(root.iterdir()) if volume_stem(p.name) is not None}
    for stem, path in files.items():
        if stem.endswith("_image"):
            case = stem[: -len("_image")]
            label = next((files[case + s] for s in LABEL_SUFFIXES if case + s in files), None)
            if label is not None:
                pairs[case] = (path, label)
    return pairs


def case_ids(root: str | Path, layout: str) -> list[str]:
    """Every case id the data holds, sorted."""
    _check_layout(layout)
    return sorted(slice_files(root) if layout == "slices" else volume_pairs(root))


# --- the split file ----------------------------------------------------------------------------------

def read_split(path: str | Path) -> dict:
    """The split file's groups of case ids, as written."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def select_cases(available: list[str], split: Path | None, subset: str | None, cases: list[str] | None) -> list[str]:
    """The cases of `available` in `subset` of the split file (all, without one), narrowed to `cases`."""
    chosen = list(available)
    if split is not None:
        groups = read_split(split)
        if subset not in groups or not isinstance(groups[subset], list):
            names = [k for k, v in groups.items() if isinstance(v, list)]
            raise ValueError(f"{split}: no subset {subset!r}; choose one of {', '.join(names)}")
        wanted = set(groups[subset])
        missing = sorted(wanted - set(available))
        if missing:
            print(f"warning: {len(missing)} case(s) of {subset} not found in the data: {', '.join(missing[:5])}",
                  file=sys.stderr)
        chosen = [c for c in chosen if c in wanted]
    if cases:
        unknown = sorted(set(cases) - set(available))
        if unknown:
            raise ValueError(f"case(s) not found in the data: {', '.join(unknown)}")
        chosen = [c for c in chosen if c in set(cases)]
    if not chosen:
        raise ValueError("no cases to evaluate (check --split/--subset/--cases)")
    return chosen


# --- labels and files --------------------------------------------------------------------------------

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


def read_png(path: Path) -> np.ndarray:
    """A greyscale PNG's pixels (Pillow: the GPU machine's image has it, not SimpleITK)."""
    from PIL import Image
    with Image.open(path) as image:
        array = np.asarray(image)
    if array.ndim != 2:
        raise ValueError(f"{path}: {array.shape[-1]} channels; expected a greyscale PNG")
    return array


def read_slice_pair(root: Path, image_path: Path, label_map: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One PNG slice and its mask (masks/<same name>) → (float32 image, uint8 labels 0..4)."""
    mask_path = Path(root) / "masks" / image_path.name
    if not mask_path.is_file():
        raise FileNotFoundError(f"{image_path}: no mask {mask_path}")
    return read_png(image_path).astype(np.float32), remap_labels(read_png(mask_path), label_map)


def read_volume_pair(case: str, image_path: Path, label_path: Path,
                     label_map: dict | None = None) -> tuple[sitk.Image, np.ndarray]:
    """A volume and its labels → (the image, uint8 labels 0..4 in numpy (z, y, x) order on its grid)."""
    import SimpleITK as sitk
    if not label_path.is_file():  # images/ + masks/ layout: the mask must have the same name
        raise FileNotFoundError(f"{image_path}: no label file {label_path}")
    image, label = sitk.ReadImage(str(image_path)), sitk.ReadImage(str(label_path))
    if image.GetSize() != label.GetSize():
        raise ValueError(f"{case}: image {image.GetSize()} and labels {label.GetSize()} differ in size")
    if not np.allclose(image.GetSpacing(), label.GetSpacing(), rtol=1e-3):
        print(f"warning: {case}: label spacing {label.GetSpacing()} ≠ image spacing {image.GetSpacing()}; "
              "using the image's", file=sys.stderr)
    # labels are often stored as floats (EMIDEC: float64): round, then map to 0..4
    return image, remap_labels(np.rint(sitk.GetArrayFromImage(label)), label_map)


# --- whole cases (evaluation: what a user's image is) ------------------------------------------------

@dataclass
class Case:
    id: str
    image: sitk.Image          # 3-D, what the Segmenter gets
    labels: np.ndarray         # reference, uint8 0..4, numpy (z, y, x) order on the image grid
    spacing: tuple             # mm, numpy axis order (z, y, x)


def read_slice_cases(root: Path, case_ids: list[str], in_plane_mm: float, thickness_mm: float = DEFAULT_THICKNESS_MM,
                     label_map: dict | None = None) -> Iterator[Case]:
    """One case at a time: PNG slices of a case stacked along z with nominal spacing."""
    import SimpleITK as sitk
    root = Path(root)
    groups = slice_files(root)
    for case in case_ids:
        files = groups.get(case, [])
        if not files:
            raise FileNotFoundError(f"{case}: no slices {root / 'images'}/{case}_sliceNNN.png")
        if len({i for i, _ in files}) != len(files):
            raise ValueError(f"{case}: repeated slice numbers")
        images, masks = [], []
        for _, path in files:
            image, mask = read_slice_pair(root, path, label_map)
            images.append(image)
            masks.append(mask)
            if images[-1].shape != images[0].shape or masks[-1].shape != images[-1].shape:
                raise ValueError(f"{case}: slices/masks differ in size ({path.name})")
        image = sitk.GetImageFromArray(np.stack(images))
        spacing_xyz = (in_plane_mm, in_plane_mm, thickness_mm)
        image.SetSpacing(spacing_xyz)
        yield Case(case, image, np.stack(masks), spacing_xyz[::-1])


def read_volume_cases(root: Path, case_ids: list[str], label_map: dict | None = None) -> Iterator[Case]:
    pairs = volume_pairs(root)
    for case in case_ids:
        image, labels = read_volume_pair(case, *pairs[case], label_map)
        yield Case(case, image, labels, tuple(image.GetSpacing()[::-1]))


def read_cases(root: Path, layout: str, case_ids: list[str], label_map: dict | None = None,
               in_plane_mm: float | None = None, thickness_mm: float = DEFAULT_THICKNESS_MM) -> Iterator[Case]:
    """Whole cases of either layout (slices: in_plane_mm, the nominal PNG pixel size, is required)."""
    _check_layout(layout)
    if layout == "slices":
        return read_slice_cases(root, case_ids, in_plane_mm, thickness_mm, label_map)
    return read_volume_cases(root, case_ids, label_map)


# --- slices on the model grid (training) -------------------------------------------------------------

@dataclass
class SliceSample:
    case: str
    index: int
    image: np.ndarray   # float32 [grid, grid] in [0, 1]
    mask: np.ndarray    # uint8 [grid, grid], labels 0..4


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
    spacing = (config.png_nominal_spacing_mm,) * 2
    for case, files in slice_files(root).items():
        if cases is not None and case not in cases:
            continue
        for index, image_path in files:
            image, mask = read_slice_pair(root, image_path, label_map)
            img, msk = _to_grid(image, mask, spacing, config)
            samples.append(SliceSample(case, index, img, msk))
    if not samples:
        raise FileNotFoundError(f"{root}: no slices found under images/ (expected <case>_slice<NNN>.png)")
    return samples


def read_volume_folder(root: str | Path, config: PreprocessConfig = PreprocessConfig(),
                       label_map: dict[int, int] | None = None, cases: set[str] | None = None) -> list[SliceSample]:
    root = Path(root)
    samples = []
    for case, (image_path, label_path) in volume_pairs(root).items():
        if cases is not None and case not in cases:
            continue
        image, labels = read_volume_pair(case, image_path, label_path, label_map)
        stack = Stack.from_image(image)
        for index, (img, msk) in enumerate(zip(stack.slices, stack.layout(labels))):
            g_img, g_msk = _to_grid(img, np.ascontiguousarray(msk), stack.spacing, config)
            samples.append(SliceSample(case, index, g_img, g_msk))
    if not samples:
        raise FileNotFoundError(f"{root}: no volumes found (images/ + masks/, or <case>_image + <case>_label files)")
    return samples


def read_dataset(root: str | Path, layout: str, **kwargs) -> list[SliceSample]:
    """Every slice of the cases asked for (cases=..., all without it) on the model grid (config=...)."""
    _check_layout(layout)
    return (read_slice_folder if layout == "slices" else read_volume_folder)(root, **kwargs)
