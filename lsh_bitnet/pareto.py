"""Accuracy-versus-comparison-ratio Pareto frontiers and their plots (used by `lsh_bitnet.collect`)."""
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

# metric.name -> (column plotted on y, lower is better). The first value column each metric reports.
PRIMARY_Y: Dict[str, Tuple[str, bool]] = {
    "perplexity": ("perplexity", True),
    "synthetic_accuracy": ("accuracy", False),
}
# Any value column a user may pick with `--metric`: -> (metric.name that reports it, lower is better).
Y_COLUMNS: Dict[str, Tuple[str, bool]] = {
    "perplexity": ("perplexity", True),
    "nll": ("perplexity", True),
    "bits_per_byte": ("perplexity", True),
    "accuracy": ("synthetic_accuracy", False),
    "choice_accuracy": ("synthetic_accuracy", False),
}
X = "comparison_ratio"
# Plot order and identity of the reference families; every other family is drawn as a solid frontier.
FAMILY_ORDER = ("full", "lsh", "lsh_forest", "window", "oracle_topk")
# A linear x axis squeezes ratios spanning more than this factor into the left edge.
LOG_X_SPREAD = 10.0


def family_of(attention: object, hasher: object) -> str:
    """full | lsh/<hasher> | lsh_forest/<hasher> | oracle_topk | window: what one frontier is drawn over."""
    if attention in ("lsh", "lsh_forest") and isinstance(hasher, str) and hasher:
        return f"{attention}/{hasher}"
    return str(attention)


def pareto_front(df: pd.DataFrame, x: str, y: str, minimize_y: bool) -> pd.Series:
    """True for rows no other row dominates in (x lower-is-better, y lower or higher as asked).

    Row a dominates b when a is at least as good in both and strictly better in one, so exact ties
    (same x and y) are all kept, and a row with the same y as a cheaper row is dropped. Rows with NaN
    in x or y are never on the front.
    """
    xs = pd.to_numeric(df[x], errors="coerce").to_numpy(dtype=float)
    ys = pd.to_numeric(df[y], errors="coerce").to_numpy(dtype=float)
    if not minimize_y:
        ys = -ys  # one code path: both objectives minimised
    valid = ~(np.isnan(xs) | np.isnan(ys))
    xv, yv = xs[valid], ys[valid]
    # (n, n) pairwise test; sweeps hold hundreds of runs, not millions, so O(n^2) memory is fine.
    no_worse = (xv[:, None] <= xv[None, :]) & (yv[:, None] <= yv[None, :])  # row a vs column b
    better = (xv[:, None] < xv[None, :]) | (yv[:, None] < yv[None, :])
    dominated = (no_worse & better).any(axis=0)
    front = np.zeros(len(df), dtype=bool)
    front[np.flatnonzero(valid)[~dominated]] = True
    return pd.Series(front, index=df.index, name="pareto")


def add_pareto(df: pd.DataFrame, y_by_metric: Dict[str, Tuple[str, bool]]) -> pd.DataFrame:
    """Column `pareto`: on the frontier of its (metric, setting, family) group."""
    out = df.copy()
    out["pareto"] = False
    if out.empty:
        return out
    for (metric, _setting, _family), group in out.groupby(["metric", "setting", "family"], dropna=False):
        if metric not in y_by_metric or y_by_metric[metric][0] not in group:
            continue
        y, minimize = y_by_metric[metric]
        out.loc[group.index, "pareto"] = pareto_front(group, X, y, minimize)
    return out


def _family_sort_key(family: str) -> Tuple[int, str]:
    base = family.split("/")[0]
    return (FAMILY_ORDER.index(base) if base in FAMILY_ORDER else len(FAMILY_ORDER), family)


# Point labels on the plot: short names, explained in a footnote, so labels stay on one short line.
ABBREV = {"n_bits": "b", "n_tables": "t", "n_trees": "trees", "max_depth": "depth", "min_candidates": "minc",
          "k": "k", "fraction": "f", "sink_tokens": "sink", "local_window": "w"}


def _label(row: pd.Series, cols: List[str]) -> str:
    return " ".join(f"{ABBREV.get(c, c)}={_short(row[c])}" for c in cols if pd.notna(row[c]))


def _drop_overlapping(fig, annotations: list) -> None:
    """Keep the first of any overlapping labels: a readable subset beats an unreadable pile."""
    renderer = fig.canvas.get_renderer()
    kept = []
    for ann in annotations:
        box = ann.get_window_extent(renderer).expanded(1.05, 1.1)
        if any(box.overlaps(other) for other in kept):
            ann.remove()
        else:
            kept.append(box)


def _styles(families) -> Dict[str, Tuple[tuple, str]]:
    """family -> (colour, marker), fixed over all panels of a figure so a family reads the same everywhere."""
    import matplotlib.pyplot as plt

    colors, markers = plt.get_cmap("tab10").colors, "osD^v<>Ph*X"
    ordered = sorted(set(families), key=_family_sort_key)
    return {f: (colors[i % len(colors)], markers[i % len(markers)]) for i, f in enumerate(ordered)}


def _draw_setting(ax, runs: pd.DataFrame, y: str, minimize: bool, label_cols: List[str],
                  styles: Dict[str, Tuple[tuple, str]]) -> List[str]:
    """Draw one panel; returns the label columns used (for the footnote)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    runs = runs[pd.to_numeric(runs[y], errors="coerce").notna()]
    annotations, used = [], []
    for family in sorted(runs["family"].unique(), key=_family_sort_key):
        fam = runs[runs["family"] == family].sort_values(X)
        color, marker = styles[family]
        front = fam[fam["pareto"].astype(bool)]
        if family == "full":
            best = fam[y].min() if minimize else fam[y].max()
            ax.axhline(best, color=color, lw=1.2, ls=":", zorder=1)
            ax.scatter(fam[X], fam[y], color=color, marker=marker, s=60, zorder=3,
                       label=f"full attention ({y} = {best:.4g})")
            continue
        oracle = family == "oracle_topk"
        ax.scatter(fam[X], fam[y], color=color, marker=marker, s=22, alpha=0.3, zorder=2)
        ax.plot(front[X], front[y], color=color, marker=marker, ms=6, lw=1.6, zorder=3,
                ls="--" if oracle else "-", label=f"{family}{' (upper bound)' if oracle else ''}"
                f"  [{len(front)}/{len(fam)} on front]")
        varying = [c for c in label_cols if c in fam and fam[c].nunique() > 1]  # constants say nothing
        used += [c for c in varying if c not in used]
        for _, row in front.iterrows():
            if _label(row, varying):
                annotations.append(ax.annotate(_label(row, varying), (row[X], row[y]), textcoords="offset points",
                                               xytext=(5, 4), fontsize=7, color=color))
    xs = runs[X][runs[X] > 0]
    if len(xs) and xs.max() / xs.min() > LOG_X_SPREAD:
        ax.set_xscale("log")
        ticks = [m * 10.0 ** e for e in range(-6, 2) for m in (1, 2, 5)]
        ax.xaxis.set_major_locator(FixedLocator([t for t in ticks if xs.min() / 1.5 <= t <= xs.max() * 1.5]))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    if minimize and (runs[y] > 0).all():
        ax.set_yscale("log")
        ax.yaxis.set_minor_formatter(plt.matplotlib.ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.6)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    elif runs[y].between(0, 1).all():
        ax.set_ylim(-0.03, 1.03)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    ax.set_xlabel("comparison ratio = q·k scores computed / full causal  (lower = cheaper)")
    better = "lower is better" if minimize else "higher is better"
    ax.set_ylabel(f"{y} ({'log scale, ' if ax.get_yscale() == 'log' else ''}{better})")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    _drop_overlapping(ax.figure, annotations)
    return used


def _short(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def plot_pareto(df: pd.DataFrame, metric: str, y: str, minimize: bool, path: Path,
                label_cols: Optional[List[str]] = None, title: str = "") -> Path:
    """One PNG per metric; one panel per setting (model/dataset/eval combination) in the table."""
    import matplotlib

    matplotlib.use("Agg")  # no display on compute nodes; also keeps tests headless
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys(df["setting"].fillna("")))
    ncols = 1 if len(settings) <= 3 else 2  # stacked panels share the reader's x-axis habit
    nrows = (len(settings) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(11.5 * ncols, 6.2 * nrows), squeeze=False)
    used: List[str] = []
    styles = _styles(df["family"])
    for ax, setting in zip(axes.flat, settings):
        panel = df[df["setting"].fillna("") == setting]
        for col in _draw_setting(ax, panel, y, minimize, label_cols or [], styles):
            used += [col] if col not in used else []
        ax.set_title(setting or title, fontsize=9)
    for ax in list(axes.flat)[len(settings):]:
        ax.set_visible(False)
    what = y if y == metric else f"{metric}: {y}"
    fig.suptitle(f"{what} vs comparison ratio ({len(df)} runs; lines join each family's Pareto front)",
                 fontsize=11)
    note = "Faded points: off their family's front. Labels: " + ", ".join(f"{ABBREV.get(c, c)} = {c}" for c in used)
    fig.text(0.01, 0.005, note if used else note.split(" Labels")[0], fontsize=7.5, color="0.35")
    fig.tight_layout(rect=(0, 0.025, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
