"""A quick-look PNG: every slice of the stack with the segmentation drawn over the LGE image."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..labels import CLASS_NAMES
from ..pipeline.preprocessing import normalize_intensity
from ..pipeline.stack import LabelStack
from .files import atomic_path

# blood pool, healthy myocardium, scar, MVO (background transparent)
COLOURS = {1: (0.85, 0.25, 0.25), 2: (0.35, 0.55, 0.95), 3: (1.0, 0.85, 0.1), 4: (0.6, 0.1, 0.6)}


def write_overlay(segmentation: LabelStack, path: str | Path, title: str = "") -> Path:
    """Each slice of the segmentation's image with its labels drawn over it, in a grid."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    img, lab, spacing = segmentation.stack.slices, segmentation.labels, segmentation.stack.spacing
    n = len(img)
    cols = min(n, 5)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows + 0.6), squeeze=False)
    aspect = spacing[0] / spacing[1]  # rows/columns in mm, so the heart is not distorted
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(normalize_intensity(img[i]), cmap="gray", aspect=aspect, interpolation="nearest")
        rgba = np.zeros((*lab[i].shape, 4))
        for value, colour in COLOURS.items():
            rgba[lab[i] == value] = (*colour, 0.45)
        ax.imshow(rgba, aspect=aspect, interpolation="nearest")
        # label inside the panel: titles above panels collide with the row above at tight spacing
        ax.text(0.02, 0.98, f"slice {i}", transform=ax.transAxes, va="top", color="white", fontsize=9,
                bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "linewidth": 0})
    fig.legend(handles=[Patch(color=c, label=CLASS_NAMES[v]) for v, c in COLOURS.items()], loc="lower center",
               ncol=4, fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return Path(path)
