"""Direct labels for the Pareto plots: what each point is called, where its label goes, and which
points sit on top of each other. Used by lsh_bitnet.report.pareto.plot_pareto; matplotlib is imported
by the caller."""
from typing import List, Optional, Sequence

import numpy as np
import pandas as pd

# Candidate label offsets (points) around a point: nearest rings first, 12 directions each.
RINGS_PT = (6, 11, 18, 27, 38, 52, 70, 92)
DIRECTIONS = [(np.cos(a), np.sin(a)) for a in np.deg2rad([30, -30, 150, -150, 90, -90, 0, 180, 60, -60, 120, -120])]
LEADER_PT = 12  # a label farther than this from its point gets a thin line to it
NEAR_PX = 5.0  # markers closer than this (pixels) would hide each other: the later one is drawn as a ring


def point_texts(table: pd.DataFrame, label_cols: List[str]) -> pd.Series:
    """Each point's label: its variant (the `+variant=` name it ran, else its family) and the knobs that
    vary within that variant. A variant of several points names itself once, on its first point, and the
    others say only their knobs: `lsh/simhash b=2`, `b=4`, `b=8`."""
    from lsh_bitnet.report.brief import variant_parts

    parts = variant_parts(table, label_cols)
    texts = pd.Series("", index=table.index, dtype=object)
    for name, rows in parts.groupby("name", sort=False):
        first = rows.index[0]
        for i, knobs in rows["knobs"].items():
            texts[i] = f"{name} {knobs}".strip() if i == first or not knobs else knobs
    return texts


def ringed(points_px: np.ndarray) -> np.ndarray:
    """True for each point within NEAR_PX of an earlier one: drawn as a larger open ring around it, so two
    runs with (nearly) the same cost and score both show at their true place."""
    out = np.zeros(len(points_px), dtype=bool)
    for i in range(1, len(points_px)):
        out[i] = bool((np.hypot(*(points_px[:i] - points_px[i]).T) < NEAR_PX).any())
    return out


def repel_labels(ax, annotations: list, points_px: np.ndarray, soft_px: Optional[np.ndarray] = None) -> int:
    """Put each label at the nearest offset where it overlaps no placed label, no data point (points_px)
    and no error bar (soft_px: points along the bars) and stays inside the axes; where no offset is free,
    at the one that costs least (another label weighs most, then leaving the axes, a marker, a bar).
    Labels moved beyond LEADER_PT get a thin line to their point. Nothing is dropped. Returns how many
    needed a line."""
    renderer = ax.figure.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    points_px = np.asarray(points_px, dtype=float).reshape(-1, 2)
    soft_px = np.zeros((0, 2)) if soft_px is None else np.asarray(soft_px, dtype=float).reshape(-1, 2)
    offsets = [(r * dx, r * dy) for r in RINGS_PT for dx, dy in DIRECTIONS]
    placed, leaders = [], 0
    for ann in annotations:
        best = None
        for dx, dy in offsets:
            ann.set_position((dx, dy))
            ann.set_horizontalalignment("left" if dx > 0.5 else "right" if dx < -0.5 else "center")
            ann.set_verticalalignment("bottom" if dy > 0.5 else "top" if dy < -0.5 else "center")
            box = ann.get_window_extent(renderer).expanded(1.06, 1.12)
            cost = (100.0 * _overlap(box, placed) + _outside(box, inside) + 400.0 * _points_inside(box, points_px)
                    + 40.0 * _points_inside(box, soft_px))
            if best is None or cost < best[0] - 1e-9:
                best = (cost, dx, dy)
            if cost == 0:
                break
        _, dx, dy = best
        ann.set_position((dx, dy))
        ann.set_horizontalalignment("left" if dx > 0.5 else "right" if dx < -0.5 else "center")
        ann.set_verticalalignment("bottom" if dy > 0.5 else "top" if dy < -0.5 else "center")
        if np.hypot(dx, dy) > LEADER_PT:  # away from its point: a thin line says which point it names
            leaders += 1
            ax.annotate("", xy=ann.xy, xycoords=ann.xycoords, xytext=(dx, dy), textcoords="offset points",
                        arrowprops=dict(arrowstyle="-", color=ann.get_color(), lw=0.4, alpha=0.6,
                                        shrinkA=0, shrinkB=2))
        placed.append(ann.get_window_extent(renderer).expanded(1.06, 1.12))
    return leaders


def _overlap(box, others: Sequence) -> float:
    """Overlapping area (px²) of box with the placed label boxes."""
    total = 0.0
    for other in others:
        w = min(box.x1, other.x1) - max(box.x0, other.x0)
        h = min(box.y1, other.y1) - max(box.y0, other.y0)
        total += max(w, 0.0) * max(h, 0.0)
    return total


def _points_inside(box, points_px: np.ndarray) -> int:
    if not len(points_px):
        return 0
    x, y = points_px[:, 0], points_px[:, 1]
    return int(((x > box.x0 - 3) & (x < box.x1 + 3) & (y > box.y0 - 3) & (y < box.y1 + 3)).sum())


def _outside(box, inside) -> float:
    """Area (px²) of the label outside the axes, weighted so a label inside always wins."""
    w, h = box.x1 - box.x0, box.y1 - box.y0
    cut_w = max(inside.x0 - box.x0, 0) + max(box.x1 - inside.x1, 0)
    cut_h = max(inside.y0 - box.y0, 0) + max(box.y1 - inside.y1, 0)
    return 1000.0 * (min(cut_w, w) * h + min(cut_h, h) * w)
