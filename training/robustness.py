"""Noise robustness: Monte Carlo inference under Gaussian or Rician noise at a set SNR.

SNR definition (per case): SNR = S / σ, where S is the mean raw image intensity inside the
reference LV (labels 1–4: blood pool and myocardium, scar included) and σ the standard deviation
of the added Gaussian noise (for Rician noise: of each of the two Gaussian channels). The LV is
used rather than the myocardium alone because in LGE the healthy myocardium is nulled (≈ 0), which
would make a myocardium-based SNR depend on how much scar a case has. Without any reference
label, S falls back to the mean of the non-zero image voxels.

- gaussian: x + σ·n                      (n ~ N(0, 1); negative values are kept)
- rician:   |x + σ·(n₁ + i·n₂)|          (magnitude of a complex signal with noise in both channels,
                                          as in a magnitude MR image; the background becomes Rayleigh)

Noise is added to the raw intensities before ScarNet's own preprocessing (as a noisier scan
would be), so the percentile normalisation sees it exactly as it would in practice.
"""
from __future__ import annotations

import math

import numpy as np

NOISE_TYPES = ("gaussian", "rician")


def signal_level(image: np.ndarray, reference_labels: np.ndarray) -> float:
    """S: mean intensity inside the reference LV (labels 1–4), else of the non-zero voxels."""
    image = np.asarray(image, dtype=np.float64)
    region = (reference_labels >= 1) & (reference_labels <= 4)
    if not region.any():
        region = image != 0
    if not region.any():
        raise ValueError("image is all zero: no signal to define an SNR on")
    return float(image[region].mean())


def add_noise(image: np.ndarray, kind: str, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Return a float32 copy of `image` with noise of standard deviation `sigma` (see module doc)."""
    x = np.asarray(image, dtype=np.float64)
    if kind == "gaussian":
        noisy = x + rng.normal(0.0, sigma, x.shape)
    elif kind == "rician":
        noisy = np.hypot(x + rng.normal(0.0, sigma, x.shape), rng.normal(0.0, sigma, x.shape))
    else:
        raise ValueError(f"noise {kind!r}: choose {' or '.join(NOISE_TYPES)}")
    return noisy.astype(np.float32)


def noise_rng(seed: int, case_index: int, kind: str, snr_index: int, repeat: int) -> np.random.Generator:
    """Independent, reproducible stream per (case, noise type, SNR, repeat), whatever the run order."""
    return np.random.default_rng([seed, case_index, NOISE_TYPES.index(kind), snr_index, repeat])


def _sd(values) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def summarize_runs(runs: list[dict], structures: tuple[str, ...], clean: dict[str, dict] | None = None) -> list[dict]:
    """Aggregate Monte Carlo runs into one row per (noise, SNR, structure).

    runs: dicts with keys case, noise, snr, repeat and `<structure>_dice` (NaN when undefined).
    clean: per case, the noise-free metrics (for the `clean_dice_mean` baseline over the same cases).
    Per structure, only runs with a defined Dice count: the caller sets NaN where the reference
    lacks the structure (scar/MVO Dice over cases whose reference has them, as in the main summary).
      dice_mean, dice_sd   over all (case, repeat) runs: between-case + noise variability
      dice_cv              dice_sd / dice_mean
      within_case_cv       mean over cases of SD/mean across that case's repeats: noise-only
                           variability (NaN with a single repeat)
    """
    rows = []
    keys = sorted({(r["noise"], r["snr"]) for r in runs}, key=lambda k: (NOISE_TYPES.index(k[0]), -k[1]))
    for noise, snr in keys:
        subset = [r for r in runs if r["noise"] == noise and r["snr"] == snr]
        for name in structures:
            per_case: dict[str, list[float]] = {}
            for r in subset:
                value = r[f"{name}_dice"]
                if not math.isnan(value):
                    per_case.setdefault(r["case"], []).append(value)
            values = [v for vs in per_case.values() for v in vs]
            mean = float(np.mean(values)) if values else math.nan
            sd = _sd(values)
            cvs = [_sd(vs) / np.mean(vs) for vs in per_case.values() if len(vs) > 1 and np.mean(vs) > 0]
            baseline = [clean[c][f"{name}_dice"] for c in per_case if clean and c in clean
                        and not math.isnan(clean[c][f"{name}_dice"])]
            rows.append({"noise": noise, "snr": snr, "structure": name, "cases": len(per_case), "runs": len(values),
                         "dice_mean": mean, "dice_sd": sd,
                         "dice_cv": sd / mean if values and mean > 0 else math.nan,
                         "within_case_cv": float(np.mean(cvs)) if cvs else math.nan,
                         "clean_dice_mean": float(np.mean(baseline)) if baseline else math.nan})
    return rows
