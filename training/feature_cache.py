"""Frozen-encoder feature cache: the CPU recipe.

With the encoder frozen its output depends only on the (augmented) input slice, so each training
view is encoded once and reused every epoch; only the U-Net pathway, fusion and decoder train.
A cache holds `views` augmented copies of every slice (view 0 unaugmented) as .npy files. Drawn
views can be augmented again on the fly (`augment_cached`): the geometry then moves the cached
feature map with the image, so a few encoded views yield fresh training samples every epoch.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .augment import AugmentConfig, augment, augment_cached


def build_cache(model, samples, out_dir: str | Path, views: int, seed: int, augment_cfg: AugmentConfig,
                batch_size: int = 8, dtype: torch.dtype | None = None, log=print) -> Path:
    """Write view_<k>/{images,masks,features}.npy for k < views; existing complete views are kept.

    dtype: the autocast dtype of the run (None: fp32).
    """
    out_dir = Path(out_dir)
    device = next(model.parameters()).device
    model.eval()
    for view in range(views):
        folder = out_dir / f"view_{view}"
        done = folder / "done.json"
        if done.is_file() and {s.case for s in samples} <= set(json.loads(done.read_text())["cases"]):
            continue  # complete and covers every case asked for (extra cases are filtered when read)
        folder.mkdir(parents=True, exist_ok=True)
        n = len(samples)
        images = np.zeros((n, *samples[0].image.shape), np.float16)
        masks = np.zeros((n, *samples[0].mask.shape), np.uint8)
        features = None
        for start in range(0, n, batch_size):
            batch = samples[start:start + batch_size]
            for i, s in enumerate(batch):
                rng = np.random.default_rng([seed, view, start + i])
                img, msk = (s.image, s.mask) if view == 0 else augment(s.image, s.mask, rng, augment_cfg)
                images[start + i], masks[start + i] = img, msk
            x = torch.from_numpy(images[start:start + len(batch)].astype(np.float32))[:, None].to(device)
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32,
                                                        enabled=dtype is not None):
                f = model.encode(x).float().cpu().numpy().astype(np.float16)
            if features is None:
                features = np.lib.format.open_memmap(folder / "features.npy", "w+", np.float16, (n, *f.shape[1:]))
            features[start:start + len(batch)] = f
            if log and (start // batch_size) % 10 == 0:
                log(f"cache view {view}: {start + len(batch)}/{n}")
        features.flush()
        np.save(folder / "images.npy", images)
        np.save(folder / "masks.npy", masks)
        (folder / "done.json").write_text(json.dumps({"cases": [s.case for s in samples], "count": n}))
    return out_dir


class CachedViews(torch.utils.data.Dataset):
    """Training samples from a feature cache: each epoch draws one random view per slice.

    With `augment` set, the drawn view is augmented on the fly; randomness depends on
    (seed, epoch, index) only, so a resumed run sees the same samples as an uninterrupted one.
    """

    def __init__(self, cache_dir: str | Path, seed: int = 0, cases: set[str] | None = None,
                 augment: AugmentConfig | None = None):
        self.views = []
        cached_cases = None
        for folder in sorted(Path(cache_dir).glob("view_*")):
            if (folder / "done.json").is_file():
                self.views.append({name: np.load(folder / f"{name}.npy", mmap_mode="r")
                                   for name in ("images", "masks", "features")})
                cached_cases = json.loads((folder / "done.json").read_text())["cases"]
        if not self.views:
            raise FileNotFoundError(f"{cache_dir}: no complete cached views")
        # a cache may hold more cases than the split now allows: use only the allowed ones
        self.indices = [i for i, c in enumerate(cached_cases) if cases is None or c in cases]
        self.cases = [cached_cases[i] for i in self.indices]
        self.seed, self.epoch, self.augment = seed, 0, augment

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, index):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        number = int(rng.integers(len(self.views)))
        view, index = self.views[number], self.indices[index]
        image = view["images"][index].astype(np.float32)
        mask = np.asarray(view["masks"][index])
        features = view["features"][index].astype(np.float32)  # a copy: the cache is read-only
        if self.augment is not None:
            # view 0 is the plain slice; later views were intensity-augmented before encoding
            image, mask, features = augment_cached(image, mask, features, rng, self.augment, intensity=number == 0)
        return {"image": torch.from_numpy(np.ascontiguousarray(image))[None],
                "mask": torch.from_numpy(mask.astype(np.int64)),
                "features": torch.from_numpy(features)}
