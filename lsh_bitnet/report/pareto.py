"""Accuracy-versus-cost Pareto frontiers and their plots (used by `lsh_bitnet.report.collect`)."""
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

# metric.name -> (column plotted on y, lower is better). The first value column each metric reports.
PRIMARY_Y: Dict[str, Tuple[str, bool]] = {
    "perplexity": ("perplexity", True),
    "synthetic_accuracy": ("accuracy", False),
    "passkey_accuracy": ("accuracy", False),
    "lm_eval": ("accuracy", False),  # the tasks' primary metric (metrics.primary_metric says which)
}
# More panels beside the primary one: the synthetic task's multiple-choice score reads differently.
EXTRA_Y: Dict[str, List[str]] = {"synthetic_accuracy": ["choice_accuracy"]}
# Any value column a user may pick with `--metric`: -> (metric.name that reports it, lower is better).
Y_COLUMNS: Dict[str, Tuple[str, bool]] = {
    "perplexity": ("perplexity", True),
    "nll": ("perplexity", True),
    "bits_per_byte": ("perplexity", True),
    "accuracy": ("synthetic_accuracy", False),
    "choice_accuracy": ("synthetic_accuracy", False),
}
# Cost axes (`--x`): column -> axis label.
X_AXES: Dict[str, str] = {
    "comparison_ratio": "comparison ratio = q·k scores computed / full causal",
    "mac_ratio": "MAC ratio = (scores × head_dim + hash + selection ops) / (full scores × head_dim)",
    "wall_ratio": "wall-time ratio = eval seconds without compilation / full attention's",
}
X = "comparison_ratio"
# Plot order and identity of the reference families; every other family is drawn as a solid frontier.
FAMILY_ORDER = ("full", "lsh", "lsh_topk", "lsh_forest", "window", "oracle_topk")
# A linear x axis squeezes ratios spanning more than this factor into the left edge.
LOG_X_SPREAD = 10.0
# Lower-is-better y (perplexity): the axis runs from the best point to this many times full attention;
# beyond that a sparse variant has failed, and its exact value only squeezes the informative band.
Y_SPAN = 3.0


def family_of(attention: object, hasher: object) -> str:
    """full | lsh/<hasher> | lsh_forest/<hasher> | oracle_topk | window: what one frontier is drawn over."""
    if isinstance(attention, str) and attention.startswith("lsh") and isinstance(hasher, str) and hasher:
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


def add_pareto(df: pd.DataFrame, y_by_metric: Dict[str, Tuple[str, bool]], x: str = X) -> pd.DataFrame:
    """Column `pareto`: on the frontier of its (metric, setting, family) group in (x, the metric's y)."""
    out = df.copy()
    out["pareto"] = False
    if out.empty or x not in out:
        return out
    for (metric, _setting, _family), group in out.groupby(["metric", "setting", "family"], dropna=False):
        if metric not in y_by_metric or y_by_metric[metric][0] not in group:
            continue
        y, minimize = y_by_metric[metric]
        out.loc[group.index, "pareto"] = pareto_front(group, x, y, minimize)
    return out


def _family_sort_key(family: str) -> Tuple[int, str]:
    base = family.split("/")[0]
    return (FAMILY_ORDER.index(base) if base in FAMILY_ORDER else len(FAMILY_ORDER), family)


# Point labels on the plot: short names, explained in a footnote, so labels stay on one short line.
ABBREV = {"n_bits": "b", "n_tables": "t", "n_trees": "trees", "max_depth": "depth", "min_candidates": "minc",
          "k": "k", "fraction": "f", "sink_tokens": "sink", "local_window": "w", "min_collisions": "minhit"}


def _short(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _label(row: pd.Series, cols: List[str]) -> str:
    return " ".join(f"{ABBREV.get(c, c.rsplit('.', 1)[-1])}={_short(row[c])}" for c in cols if pd.notna(row[c]))


def repel_labels(ax, annotations: list, points_px: np.ndarray) -> int:
    """Move each label to the first nearby offset where it overlaps no placed label, no data point and
    stays inside the axes; labels that find no free spot keep the farthest try with a leader line.
    Nothing is dropped. Returns how many labels needed a leader line."""
    renderer = ax.figure.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    offsets = [(dx * r, dy * r) for r in (1, 2, 3.2, 4.5) for dx, dy in
               ((5, 4), (5, -10), (-5, 4), (-5, -10), (0, 10), (0, -14), (9, -3), (-9, -3))]
    placed, leaders = [], 0
    for ann in annotations:
        for i, (dx, dy) in enumerate(offsets):
            ann.set_position((dx, dy))
            ann.set_horizontalalignment("left" if dx >= 0 else "right")
            box = ann.get_window_extent(renderer).expanded(1.04, 1.08)
            hits_point = len(points_px) and ((points_px[:, 0] > box.x0 - 3) & (points_px[:, 0] < box.x1 + 3)
                                              & (points_px[:, 1] > box.y0 - 3) & (points_px[:, 1] < box.y1 + 3)).any()
            fits = inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1
            if fits and not hits_point and not any(box.overlaps(other) for other in placed):
                break
        else:
            leaders += 1
        if i >= 8:  # moved away from its point: a thin line says which point it names
            ax.annotate("", xy=ann.xy, xytext=(dx, dy), textcoords="offset points",
                        arrowprops=dict(arrowstyle="-", color=ann.get_color(), lw=0.5, alpha=0.6))
        placed.append(ann.get_window_extent(renderer).expanded(1.04, 1.08))
    return leaders


def _styles(families) -> Dict[str, Tuple[tuple, str]]:
    """family -> (colour, marker), fixed over all panels of a figure so a family reads the same everywhere."""
    import matplotlib.pyplot as plt

    colors, markers = plt.get_cmap("tab10").colors, "osDv<>Ph*X"  # no ^: it marks points above the axis
    ordered = sorted(set(families), key=_family_sort_key)
    return {f: (colors[i % len(colors)], markers[i % len(markers)]) for i, f in enumerate(ordered)}


def error_bounds(runs: pd.DataFrame, y: str) -> Optional[Tuple[pd.Series, pd.Series]]:
    """(low, high) for y's error bars, per row: the run's 95% interval, else min..max over its seeds."""
    nan = pd.Series(np.nan, index=runs.index)
    col = lambda name: pd.to_numeric(runs[name], errors="coerce") if name in runs else nan  # noqa: E731
    low = col(f"{y}_ci_low").fillna(col(f"{y}_min"))
    high = col(f"{y}_ci_high").fillna(col(f"{y}_max"))
    return (low, high) if (low.notna() & high.notna()).any() else None


def y_limits(runs: pd.DataFrame, y: str, minimize: bool) -> Optional[Tuple[float, float]]:
    """Lower-is-better: from the best value (or its interval) to Y_SPAN x full attention; None = all fit."""
    values = pd.to_numeric(runs[y], errors="coerce").dropna()
    if not minimize or values.empty:
        return None
    full = values[runs.loc[values.index, "family"] == "full"]
    ref = full.min() if len(full) else values.min()
    top = ref * Y_SPAN
    if values.max() <= top:
        top = values.max()
    bounds = error_bounds(runs, y)
    low = min(values.min(), bounds[0].min()) if bounds is not None and bounds[0].notna().any() else values.min()
    pad = (top - low) * 0.06 or abs(top) * 0.05 or 1.0
    return low - pad, top + pad


def _draw_panel(ax, runs: pd.DataFrame, x: str, y: str, minimize: bool, label_cols: List[str],
                styles: Dict[str, Tuple[tuple, str]], chance: Optional[float] = None,
                primary: bool = True) -> Tuple[List[str], Dict]:
    """Draw one panel; returns (label columns used for the footnote, plotted data by family for tests)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter

    runs = runs[pd.to_numeric(runs[y], errors="coerce").notna() & pd.to_numeric(runs[x], errors="coerce").notna()]
    runs = runs.assign(**{x: pd.to_numeric(runs[x]), y: pd.to_numeric(runs[y], errors="coerce").astype(float)})
    if primary and "pareto" in runs:  # the collector's frontier (the table's stars)
        runs = runs.assign(_front=runs["pareto"].astype(bool))
    else:  # another y of the same runs: its own frontier
        front = [pareto_front(grp, x, y, minimize) for _, grp in runs.groupby("family")]
        runs = runs.assign(_front=pd.concat(front) if front else False)
    limits = y_limits(runs, y, minimize)
    annotations, used, plotted = [], [], {}
    bounds = error_bounds(runs, y)
    for family in sorted(runs["family"].unique(), key=_family_sort_key):
        fam = runs[runs["family"] == family].sort_values(x)
        color, marker = styles[family]
        clipped = fam[y].clip(upper=limits[1]) if limits else fam[y]
        out = fam[y] > clipped
        front = fam[fam["_front"]]
        if bounds is not None:
            lo, hi = bounds[0].loc[fam.index], bounds[1].loc[fam.index]
            ok = lo.notna() & hi.notna() & ~out
            if ok.any():
                yerr = np.vstack([(fam[y] - lo)[ok].clip(lower=0), (hi - fam[y])[ok].clip(lower=0)])
                ax.errorbar(fam[x][ok], fam[y][ok], yerr=yerr, fmt="none", ecolor=color, elinewidth=0.9,
                            capsize=2.5, alpha=0.55, zorder=2)
        plotted[family] = {"x": fam[x].tolist(), "y": fam[y].tolist(),
                           "err": None if bounds is None else [bounds[0].loc[fam.index].tolist(),
                                                              bounds[1].loc[fam.index].tolist()],
                           "clipped": out.tolist(), "noncausal": _noncausal(fam).tolist()}
        if out.any():  # off the top: at the edge, marked, with the real value beside it
            ax.scatter(fam[x][out], clipped[out], color=color, marker="^", s=50, zorder=4, clip_on=False,
                       edgecolors="black", linewidths=0.8)
            varying = [c for c in label_cols if c in fam and fam[c].nunique() > 1]
            for _, row in fam[out].iterrows():  # moved apart with the labels below
                xv, text = row[x], f"{row[y]:,.0f}" if row[y] >= 1000 else f"{row[y]:.3g}"
                text += f" ({_label(row, varying)})" if _label(row, varying) else ""
                annotations.append(ax.annotate(text, (xv, limits[1]), textcoords="offset points",
                                               xytext=(5, -10), fontsize=6.5, color=color, annotation_clip=False))
        if family == "full":
            best = fam[y].min() if minimize else fam[y].max()
            ax.axhline(best, color=color, lw=1.2, ls=":", zorder=1)
            ax.scatter(fam[x], fam[y], color=color, marker=marker, s=60, zorder=3,
                       label=f"full attention ({y} = {best:.4g})")
            continue
        oracle = family == "oracle_topk"
        inside = fam[~out]
        ax.scatter(inside[x], inside[y], color=color, marker=marker, s=22, alpha=0.3, zorder=2)
        ax.plot(front[x], front[y].clip(upper=limits[1]) if limits else front[y], color=color, marker=marker,
                ms=6, lw=1.6, zorder=3, ls="--" if oracle else "-",
                label=f"{family}{' (upper bound)' if oracle else ''}  [{len(front)}/{len(fam)} on front]")
        varying = [c for c in label_cols if c in fam and fam[c].nunique() > 1]  # constants say nothing
        used += [c for c in varying if c not in used]
        for _, row in front[~(front[y] > (limits[1] if limits else np.inf))].iterrows():
            if _label(row, varying):
                annotations.append(ax.annotate(_label(row, varying), (row[x], row[y]), textcoords="offset points",
                                               xytext=(5, 4), fontsize=7, color=color))
    acausal = _noncausal(runs)
    if acausal.any():  # e.g. hashers centred on the whole prompt: each query saw later tokens' statistics
        ys = runs[y].clip(upper=limits[1]) if limits else runs[y]
        ax.scatter(runs[x][acausal], ys[acausal], s=170, facecolors="none", edgecolors="black", linewidths=1.0,
                   zorder=5, label="not causal (cost.causal = false)")
    if chance is not None:
        ax.axhline(chance, color="0.5", lw=1.0, ls="-.", zorder=1, label=f"chance ({chance:.3g})")
    xs = runs[x][runs[x] > 0]
    if len(xs) and xs.max() / xs.min() > LOG_X_SPREAD:
        ax.set_xscale("log")
        ticks = [m * 10.0 ** e for e in range(-6, 3) for m in (1, 2, 3, 5)]
        ax.xaxis.set_major_locator(FixedLocator([t for t in ticks if xs.min() / 1.5 <= t <= xs.max() * 1.5]))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    if limits:
        ax.set_ylim(*limits)
        ax.yaxis.set_major_locator(MaxNLocator(nbins=8, steps=[1, 2, 2.5, 5, 10]))
    elif runs[y].between(0, 1).all():
        ax.set_ylim(-0.03, 1.03)
        ax.yaxis.set_major_locator(FixedLocator(np.linspace(0, 1, 11)))
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    ax.set_xlabel(f"{X_AXES.get(x, x)}  (lower = cheaper)", fontsize=8.5)
    clip_note = f"; ▲ = above {Y_SPAN:g}× full, value beside" if limits and runs[y].max() > limits[1] else ""
    ax.set_ylabel(f"{y} ({'lower' if minimize else 'higher'} is better{clip_note})", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax.figure.canvas.draw()  # positions are known only after a draw
    points = ax.transData.transform(np.column_stack([runs[x], runs[y].clip(upper=limits[1]) if limits else runs[y]]))
    repel_labels(ax, annotations, points)
    return used, plotted


def _noncausal(runs: pd.DataFrame) -> pd.Series:
    """Rows whose cost record says the run was not causal (`causal` false); missing means causal."""
    if "causal" not in runs:
        return pd.Series(False, index=runs.index)
    return runs["causal"].map(lambda v: v is False or v is np.False_ or str(v).lower() == "false")


def panel_title(panel: pd.DataFrame) -> str:
    """Model, data (file/split), how many windows (of which seq_len) or samples: what the panel measured."""
    first = panel.iloc[0]
    parts = [str(first.get("model"))] if pd.notna(first.get("model")) else []
    if pd.notna(first.get("data", None)):
        parts.append(str(first["data"]))
    for count, what in (("n_windows", "windows"), ("n_samples", "samples")):
        if count in panel and pd.to_numeric(panel[count], errors="coerce").notna().any():
            n = sorted(set(int(v) for v in pd.to_numeric(panel[count], errors="coerce").dropna()))
            text = f"{'/'.join(map(str, n))} {what}"
            if what == "windows" and "seq_len" in panel and panel["seq_len"].notna().any():
                text += f" of {int(pd.to_numeric(panel['seq_len'], errors='coerce').dropna().iloc[0])} tokens"
            parts.append(text)
            break
    extra = first.get("_setting_extra")  # swept dataset./eval./metric. keys that make this panel's setting
    return " · ".join(parts + ([str(extra)] if isinstance(extra, str) and extra else []))


def plot_pareto(df: pd.DataFrame, metric: str, y: str, minimize: bool, path: Path,
                label_cols: Optional[List[str]] = None, title: str = "", x: str = X,
                formats: Tuple[str, ...] = ("png", "pdf", "svg")) -> List[Path]:
    """One figure per metric, written as PNG, PDF and SVG: a row of panels per setting, a column per y
    (the metric's primary value, plus e.g. choice_accuracy for the synthetic task). Returns the paths;
    the plotted numbers are kept on the function (`plot_pareto.last_data`) for tests."""
    import matplotlib

    matplotlib.use("Agg")  # no display on compute nodes; also keeps tests headless
    import matplotlib.pyplot as plt

    ys = [y] + [c for c in EXTRA_Y.get(metric, []) if c != y and c in df and pd.to_numeric(df[c], errors="coerce").notna().any()]
    settings = list(dict.fromkeys(df["setting"].fillna("")))
    width = 10.5 if len(ys) == 1 else 8.0  # legends sit right of each panel
    fig, axes = plt.subplots(len(settings), len(ys), figsize=(width * len(ys), 5.6 * len(settings)), squeeze=False)
    used: List[str] = []
    styles = _styles(df["family"])
    data: Dict[str, Dict] = {}
    for r, setting in enumerate(settings):
        panel = df[df["setting"].fillna("") == setting]
        for c, col in enumerate(ys):
            chance = None
            if col == "choice_accuracy" and "chance_choice_accuracy" in panel:
                chance = pd.to_numeric(panel["chance_choice_accuracy"], errors="coerce").mean()
            cols_used, plotted = _draw_panel(axes[r, c], panel, x, col, minimize if col == y else False,
                                             label_cols or [], styles, None if pd.isna(chance) else chance,
                                             primary=col == y)
            used += [u for u in cols_used if u not in used]
            data[f"{setting}|{col}"] = plotted
            axes[r, c].set_title(panel_title(panel) or title, fontsize=9)
    what = y if y == metric else f"{metric}: {y}"
    fig.suptitle(f"{what} vs {x} ({len(df)} runs; lines join each family's Pareto front; "
                 f"bars: 95% interval or seed range)", fontsize=11)
    note = "Faded points: off their family's front. Labels: " + ", ".join(
        f"{ABBREV.get(c, c.rsplit('.', 1)[-1])} = {c}" for c in used)
    fig.text(0.01, 0.005, note if used else note.split(" Labels")[0], fontsize=7.5, color="0.35")
    fig.tight_layout(rect=(0, 0.025, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        out = path.with_suffix(f".{fmt}")
        fig.savefig(out, dpi=150, metadata={"Date": None} if fmt == "svg" else None)
        paths.append(out)
    plt.close(fig)
    plot_pareto.last_data = data
    return paths
