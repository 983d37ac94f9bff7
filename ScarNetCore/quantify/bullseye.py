"""AHA 17-segment bullseye plots (scar extent and transmurality), drawn with matplotlib.

Standard display (Cerqueira 2002): seen from the apex, anterior (1, 7, 13) at the top, septum
(2-3, 8-9, 14) on the left, inferior at the bottom, lateral on the right; basal ring outside,
apex (17) in the centre. Uses the object-oriented API with the Agg canvas so it never touches
pyplot's global state or needs a display (safe inside Slicer and on servers).
"""
from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Wedge

CMAP = "YlOrRd"
NO_DATA = "#d9d9d9"
# (inner radius, outer radius, first segment, number of sectors, centre angle of the first sector)
RINGS = ((3.0, 4.0, 1, 6, 90.0), (2.0, 3.0, 7, 6, 90.0), (1.0, 2.0, 13, 4, 90.0))


def segment_wedges() -> dict[int, tuple[float, float, float, float]]:
    """segment -> (inner radius, outer radius, start angle°, end angle°) in plot coordinates."""
    wedges = {}
    for inner, outer, first, count, start_centre in RINGS:
        width = 360.0 / count
        for k in range(count):
            # counter-clockwise on screen = counter-clockwise seen from the apex
            centre = start_centre + k * width
            wedges[first + k] = (inner, outer, centre - width / 2, centre + width / 2)
    wedges[17] = (0.0, 1.0, 0.0, 360.0)
    return wedges


def draw_bullseye(ax, values: dict[int, float | None], title: str, cmap_name: str = CMAP,
                  vmax: float = 100.0, unit: str = "%") -> ScalarMappable:
    cmap, norm = colormaps[cmap_name], Normalize(0.0, vmax)
    for seg, (inner, outer, start, end) in segment_wedges().items():
        value = values.get(seg)
        known = value is not None and np.isfinite(value)
        face = cmap(norm(value)) if known else NO_DATA
        ax.add_patch(Wedge((0, 0), outer, start, end, width=outer - inner, facecolor=face,
                           edgecolor="black", linewidth=1.2, hatch=None if known else "///"))
        mid_r = 0.0 if seg == 17 else (inner + outer) / 2
        angle = np.radians((start + end) / 2)
        x, y = mid_r * np.cos(angle), mid_r * np.sin(angle)
        dark = known and norm(value) > 0.6
        text = f"{seg}\n{value:.0f}{unit}" if known else f"{seg}\nn/a"
        ax.text(x, y, text, ha="center", va="center", fontsize=8.5, linespacing=1.1,
                color="white" if dark else "black", fontweight="bold",
                bbox=None if known else dict(boxstyle="round,pad=0.15", facecolor=NO_DATA, edgecolor="none"))
    for label, (x, y, rot) in {"Anterior": (0, 4.35, 0), "Inferior": (0, -4.35, 0),
                               "Septal": (-4.35, 0, 90), "Lateral": (4.35, 0, -90)}.items():
        ax.text(x, y, label, ha="center", va="center", rotation=rot, fontsize=9, style="italic")
    ax.set_xlim(-4.8, 4.8)
    ax.set_ylim(-4.8, 4.8)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title, fontsize=11)
    return ScalarMappable(norm=norm, cmap=cmap)


def bullseye_figure(per_segment: list[dict], title: str = "", notes: list[str] | None = None) -> Figure:
    """Two bullseyes: scar extent (% of segment) and mean transmurality (% of wall along chords)."""
    extent = {row["segment"]: row.get("scar_extent_percent") for row in per_segment}
    trans = {row["segment"]: row.get("transmurality_mean_percent") for row in per_segment}
    fig = Figure(figsize=(12.0, 6.0), dpi=120)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, values, label in ((axes[0], extent, "Scar extent (% of segment volume)"),
                              (axes[1], trans, "Mean scar transmurality (% of wall)")):
        mappable = draw_bullseye(ax, values, label)
        bar = fig.colorbar(mappable, ax=ax, fraction=0.045, pad=0.02, ticks=[0, 25, 50, 75, 100])
        bar.set_label("%")
    if title:
        fig.suptitle(title, fontsize=13, fontweight="bold")
    footer = list(notes or [])
    footer.append("AHA 17-segment model (Cerqueira 2002), viewed from the apex; grey = no myocardium in segment")
    fig.text(0.5, 0.02, "\n".join(footer), ha="center", va="bottom", fontsize=8.5)
    fig.subplots_adjust(left=0.02, right=0.95, top=0.86, bottom=0.12, wspace=0.2)
    return fig

