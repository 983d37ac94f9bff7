"""Agreement statistics and figures for evaluation (as the ScarNet paper's Figures 6–7).

- correlation: predicted vs reference value per case, Pearson r, identity line;
- Bland–Altman: difference (predicted − reference) against the mean of the two, with the bias
  (mean difference) and the 95 % limits of agreement bias ± 1.96·SD (SD of the differences, ddof 1).
"""
from __future__ import annotations

import math

import numpy as np

from ScarNetCore.io.files import atomic_path


def agreement(pred, ref) -> dict:
    """Pearson r, bias and limits of agreement over the pairs where both values are finite."""
    pred, ref = np.asarray(pred, dtype=float), np.asarray(ref, dtype=float)
    keep = np.isfinite(pred) & np.isfinite(ref)
    p, r = pred[keep], ref[keep]
    n = int(keep.sum())
    diff = p - r
    bias = float(diff.mean()) if n else math.nan
    sd = float(diff.std(ddof=1)) if n > 1 else math.nan
    # r is undefined for fewer than 2 pairs or a constant series
    pearson = float(np.corrcoef(p, r)[0, 1]) if n > 1 and p.std() > 0 and r.std() > 0 else math.nan
    return {"n": n, "pearson_r": pearson, "bias": bias, "sd_difference": sd,
            "loa_low": bias - 1.96 * sd, "loa_high": bias + 1.96 * sd}


def _figure():
    import matplotlib
    matplotlib.use("Agg")  # files only; never needs a display
    from matplotlib.figure import Figure
    fig = Figure(figsize=(5, 4.5), dpi=120)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig, path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")


def correlation_plot(pred, ref, path, quantity: str = "scar % of LV myocardium") -> dict:
    stats = agreement(pred, ref)
    pred, ref = np.asarray(pred, float), np.asarray(ref, float)
    keep = np.isfinite(pred) & np.isfinite(ref)
    fig, ax = _figure()
    ax.scatter(ref[keep], pred[keep], s=22, alpha=0.8, edgecolors="none")
    hi = max([1.0, *ref[keep], *pred[keep]]) * 1.05
    lo = min([0.0, *ref[keep], *pred[keep]]) - 0.02 * hi  # a margin keeps points at 0 visible
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="identity")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel(f"reference {quantity}")
    ax.set_ylabel(f"predicted {quantity}")
    r = stats["pearson_r"]
    ax.set_title(f"Pearson r = {r:.3f} (n = {stats['n']})" if not math.isnan(r) else f"n = {stats['n']}")
    ax.legend(loc="upper left", frameon=False)
    _save(fig, path)
    return stats


def bland_altman_plot(pred, ref, path, quantity: str = "scar % of LV myocardium") -> dict:
    fig, ax = _figure()
    stats = _bland_altman(ax, pred, ref, quantity, "Bland–Altman")
    _save(fig, path)
    return stats


def bland_altman_comparison(models: dict[str, tuple], path, quantity: str = "scar % of LV myocardium") -> dict:
    """One Bland–Altman panel per model ({name: (pred, ref)}), side by side on the same axes."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(5 * len(models), 4.5), dpi=120)
    axes = fig.subplots(1, len(models), sharex=True, sharey=True, squeeze=False)[0]
    stats = {name: _bland_altman(ax, pred, ref, quantity, name) for ax, (name, (pred, ref)) in zip(axes, models.items())}
    _save(fig, path)
    return stats


def _bland_altman(ax, pred, ref, quantity: str, title: str) -> dict:
    stats = agreement(pred, ref)
    pred, ref = np.asarray(pred, float), np.asarray(ref, float)
    keep = np.isfinite(pred) & np.isfinite(ref)
    mean, diff = (pred[keep] + ref[keep]) / 2, pred[keep] - ref[keep]
    ax.scatter(mean, diff, s=22, alpha=0.8, edgecolors="none")
    if stats["n"]:
        ax.axhline(stats["bias"], color="k", lw=1, label=f"bias {stats['bias']:+.2f}")
    if not math.isnan(stats["sd_difference"]):
        for value, text in ((stats["loa_high"], "+1.96 SD"), (stats["loa_low"], "−1.96 SD")):
            ax.axhline(value, color="k", ls="--", lw=1)
            ax.annotate(f"{text}: {value:+.2f}", (1.0, value), xycoords=("axes fraction", "data"),
                        ha="right", va="bottom", fontsize=8)
    ax.axhline(0, color="0.7", lw=0.8)
    ax.set_xlabel(f"mean of predicted and reference {quantity}")
    ax.set_ylabel(f"predicted − reference {quantity}")
    ax.set_title(f"{title} (n = {stats['n']})")
    if stats["n"]:
        ax.legend(loc="upper left", frameon=False)
    return stats


def robustness_plot(rows: list[dict], path) -> None:
    """Mean ± SD Dice against SNR, one panel per structure, one line per noise type."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    structures = list(dict.fromkeys(r["structure"] for r in rows))
    fig = Figure(figsize=(4 * len(structures), 3.6), dpi=120)
    axes = fig.subplots(1, len(structures), squeeze=False)[0]
    for ax, name in zip(axes, structures):
        mine = [r for r in rows if r["structure"] == name]
        for noise in dict.fromkeys(r["noise"] for r in mine):
            line = sorted((r for r in mine if r["noise"] == noise), key=lambda r: r["snr"])
            ax.errorbar([r["snr"] for r in line], [r["dice_mean"] for r in line],
                        yerr=[0 if math.isnan(r["dice_sd"]) else r["dice_sd"] for r in line],
                        marker="o", capsize=3, label=noise)
        clean = [r["clean_dice_mean"] for r in mine if not math.isnan(r["clean_dice_mean"])]
        if clean:
            ax.axhline(float(np.mean(clean)), color="k", ls="--", lw=1, label="no noise")
        ax.set_xscale("log")
        snrs = sorted({r["snr"] for r in mine})
        ax.set_xticks(snrs, [f"{v:g}" for v in snrs])
        ax.minorticks_off()
        ax.set_xlabel("SNR (mean LV intensity / noise SD)")
        ax.set_ylabel("Dice")
        ax.set_ylim(0, 1)
        ax.set_title(name)
        ax.legend(frameon=False, fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
