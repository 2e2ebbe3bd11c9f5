"""Accuracy-versus-cost Pareto frontiers and their plots (used by `lsh_bitnet.report.collect`)."""
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

from lsh_bitnet.registry import RULES
from lsh_bitnet.report.plot_labels import point_texts, repel_labels, ringed  # noqa: F401 (repel_labels: API)
from lsh_bitnet.tasks.base import find_task, tasks


# ----------------------------------------------------------------------------- what each task plots (its Task)
def primary_y(metric: object) -> Optional[Tuple[str, bool]]:
    """(column plotted on y, lower is better) for runs of metric.name `metric`: its task's primary field; None
    for a task not registered here (its runs get no frontier)."""
    task = find_task(metric)
    return (task.primary, not task.higher_is_better) if task is not None else None


def primary_y_by_metric() -> Dict[str, Tuple[str, bool]]:
    return {task.name: primary_y(task.name) for task in tasks()}


def extra_y(metric: object) -> List[str]:
    """More panels beside the primary one (e.g. the synthetic task's multiple-choice score)."""
    task = find_task(metric)
    return list(task.extra_y) if task is not None else []


def y_columns() -> Dict[str, Tuple[str, bool]]:
    """Any value column a user may pick with `--metric`: -> (metric.name that reports it, lower is better).
    Where two tasks name one column, the first registered keeps it."""
    out: Dict[str, Tuple[str, bool]] = {}
    for task in tasks():
        for column in task.y_columns:
            out.setdefault(column, (task.name, not task.higher_is_better))
    return out

# Cost axes (`--x`): column -> axis label.
X_AXES: Dict[str, str] = {
    "comparison_ratio": "comparison ratio = q·k scores computed / full causal",
    "mac_ratio": "MAC ratio = (scores × head_dim + hash + selection ops) / (full scores × head_dim)",
    "wall_ratio": "wall-time ratio = eval seconds without compilation / full attention's",
}
X = "comparison_ratio"
# Plot order of a family is its rule's (Rule.family_order); a rule not registered here (a plug-in not installed)
# sorts after every registered one.
UNKNOWN_FAMILY_ORDER = 1000
# A linear x axis squeezes ratios spanning more than this factor into the left edge.
LOG_X_SPREAD = 10.0
# Lower-is-better y (perplexity): the axis runs from the best point to this many times full attention;
# beyond that a sparse variant has failed, and its exact value only squeezes the informative band.
Y_SPAN = 3.0


def family_of(attention: object, hasher: object) -> str:
    """What one frontier is drawn over: the rule's family (Rule.family: <rule>/<hasher> for hashed rules, else
    <rule>); a rule not registered here (a plug-in not installed) is one family per name."""
    rule = RULES.find(attention)
    return str(attention) if rule is None else rule.family(hasher)


def _rule_of(family: object):
    """The registered rule of a family (or rule name) `<rule>[/<hasher>]`, None if not registered here."""
    return RULES.find(str(family).split("/")[0])


def is_full(family: object) -> bool:
    """Whether the family (or rule name) keeps every causal key: the full-attention baseline (Rule.dense)."""
    rule = _rule_of(family)
    return rule is not None and rule.dense


def is_upper_bound(family: object) -> bool:
    """Whether the family chooses by q.k of every key (Rule.oracle): drawn dashed, labelled an upper bound."""
    rule = _rule_of(family)
    return rule is not None and rule.oracle


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
    rule = _rule_of(family)
    return (rule.family_order if rule is not None else UNKNOWN_FAMILY_ORDER, family)


# Point labels (plots, brief table): short names of the knobs, so labels stay on one short line.
ABBREV = {"n_bits": "b", "n_tables": "t", "n_trees": "trees", "max_depth": "depth", "min_candidates": "minc",
          "k": "k", "fraction": "f", "sink_tokens": "sink", "local_window": "w", "min_collisions": "minhit"}


def _short(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def point_label(row, cols: List[str]) -> str:
    """`b=8 t=4 sink=4 w=32`: the row's values of cols (in the order given), short names from ABBREV; row a Series
    or a dict."""
    return " ".join(f"{ABBREV.get(c, c.rsplit('.', 1)[-1])}={_short(row[c])}" for c in cols
                    if c in row and pd.notna(row[c]))


# The default figure fits one column of a two-column paper: panels stacked, labels on the points.
COLUMN_IN, PANEL_IN, NOTE_IN = 3.4, 2.6, 0.34
# A panel of more runs than this labels its Pareto-front points only (the tables name every run).
MAX_LABELS = 24
# Short x-axis names for the one-column figure (X_AXES has the long ones).
X_SHORT = {"comparison_ratio": "comparison ratio (q·k scores / full)", "mac_ratio": "MAC ratio (to full attention)",
           "wall_ratio": "wall-time ratio (to full attention)"}


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
    full = values[runs.loc[values.index, "family"].map(is_full).astype(bool)]
    ref = full.min() if len(full) else values.min()
    top = ref * Y_SPAN
    if values.max() <= top:
        top = values.max()
    bounds = error_bounds(runs, y)
    low = min(values.min(), bounds[0].min()) if bounds is not None and bounds[0].notna().any() else values.min()
    pad = (top - low) * 0.06 or abs(top) * 0.05 or 1.0
    return low - pad, top + pad


def _draw_panel(ax, runs: pd.DataFrame, x: str, y: str, minimize: bool, styles: Dict[str, Tuple[tuple, str]],
                chance: Optional[float] = None, primary: bool = True) -> Tuple[Dict, Dict[str, bool]]:
    """Draw one panel with a label on each point (`_text`) instead of a legend. Returns (plotted data by
    family, for tests; what was drawn, for the figure's note)."""
    runs = runs[pd.to_numeric(runs[y], errors="coerce").notna() & pd.to_numeric(runs[x], errors="coerce").notna()]
    runs = runs.assign(**{x: pd.to_numeric(runs[x]), y: pd.to_numeric(runs[y], errors="coerce").astype(float)})
    if primary and "pareto" in runs:  # the collector's frontier (the table's stars)
        runs = runs.assign(_front=runs["pareto"].astype(bool))
    else:  # another y of the same runs: its own frontier
        front = [pareto_front(grp, x, y, minimize) for _, grp in runs.groupby("family")]
        runs = runs.assign(_front=pd.concat(front) if front else False)
    limits = y_limits(runs, y, minimize)  # the axes were set up from the same runs (_set_axes)
    drawn = {"line": False, "faded": False, "bars": False, "clipped": False, "ringed": False, "noncausal": False,
             "front_only": len(runs) > MAX_LABELS}
    shown = runs[y].clip(upper=limits[1]) if limits else runs[y]
    order = runs.sort_values(["_front", x], ascending=[False, True]).index  # front points claim their spot first
    px = ax.transData.transform(np.column_stack([runs.loc[order, x], shown[order]]))
    ring = pd.Series(ringed(px), index=order)
    bounds, plotted, annotations, bars_px = error_bounds(runs, y), {}, [], []
    for family in sorted(runs["family"].unique(), key=_family_sort_key):
        fam = runs[runs["family"] == family].sort_values(x)
        color, marker = styles[family]
        out = fam[y] > shown[fam.index]
        if bounds is not None:
            lo, hi = bounds[0].loc[fam.index], bounds[1].loc[fam.index]
            ok = lo.notna() & hi.notna() & ~out
            if ok.any():
                yerr = np.vstack([(fam[y] - lo)[ok].clip(lower=0), (hi - fam[y])[ok].clip(lower=0)])
                ax.errorbar(fam[x][ok], fam[y][ok], yerr=yerr, fmt="none", ecolor=color, elinewidth=0.7,
                            capsize=1.5, alpha=0.5, zorder=2)
                drawn["bars"] = True
                for xv, a, b in zip(fam[x][ok], lo[ok], hi[ok]):  # labels keep off the bars too
                    bars_px.append(ax.transData.transform(np.column_stack([np.full(7, xv), np.linspace(a, b, 7)])))
        plotted[family] = {"x": fam[x].tolist(), "y": fam[y].tolist(),
                           "err": None if bounds is None else [bounds[0].loc[fam.index].tolist(),
                                                              bounds[1].loc[fam.index].tolist()],
                           "clipped": out.tolist(), "noncausal": _noncausal(fam).tolist()}
        front = fam[fam["_front"]]
        if is_full(family):
            ax.axhline(fam[y].min() if minimize else fam[y].max(), color=color, lw=0.8, ls=":", zorder=1)
        elif len(front) > 1:  # a front of one point is a point, not a line
            ax.plot(front[x], shown[front.index], color=color, lw=1.1, zorder=3,
                    ls="--" if is_upper_bound(family) else "-")
            drawn["line"] = True
        for i, row in fam.iterrows():
            on_front, clipped = bool(row["_front"]) or is_full(family), bool(out[i])
            alpha = 1.0 if on_front else 0.45
            drawn["faded"] |= not on_front
            drawn["clipped"] |= clipped
            drawn["ringed"] |= bool(ring[i])
            size = 20 if not ring[i] else 55
            ax.scatter([row[x]], [shown[i]], s=size, marker="^" if clipped else marker, zorder=4 if on_front else 3,
                       clip_on=False, alpha=alpha, linewidths=0.8 if ring[i] or clipped else 0.0,
                       facecolors="none" if ring[i] else [color], edgecolors="black" if clipped else [color])
            text = str(row.get("_text") or family)
            if clipped:  # off the top: at the edge, its real value written
                text += f" ({row[y]:,.0f})" if row[y] >= 1000 else f" ({row[y]:.3g})"
            if text and (on_front or not drawn["front_only"]):
                annotations.append(ax.annotate(text, (row[x], shown[i]), textcoords="offset points", xytext=(5, 4),
                                               fontsize=5.5, color=color, alpha=1.0 if on_front else 0.7, zorder=6))
    acausal = _noncausal(runs)
    if acausal.any():  # e.g. hashers centred on the whole prompt: each query saw later tokens' statistics
        ax.scatter(runs[x][acausal], shown[acausal], s=110, facecolors="none", edgecolors="black", linewidths=0.7,
                   zorder=5)
        drawn["noncausal"] = True
    if chance is not None:
        ax.axhline(chance, color="0.5", lw=0.7, ls="-.", zorder=1)
        annotations.insert(0, ax.annotate(f"chance {chance:.2g}", (ax.get_xlim()[1], chance), xytext=(-2, 2),
                                          textcoords="offset points", fontsize=5.5, color="0.4", ha="right"))
    ax.figure.canvas.draw()  # label sizes are known only after a draw
    repel_labels(ax, annotations, px, np.vstack(bars_px) if bars_px else None)
    renderer = ax.figure.canvas.get_renderer()
    drawn["labels"] = [(a.get_text(), tuple(a.get_window_extent(renderer).bounds)) for a in annotations]
    return plotted, drawn


def _set_axes(ax, runs: pd.DataFrame, x: str, y: str, minimize: bool) -> None:
    """Scales, limits, ticks and axis labels, before the figure's layout and before any point is placed, so
    pixel positions (rings, labels) are final when the labels are placed."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter

    runs = runs[pd.to_numeric(runs[y], errors="coerce").notna() & pd.to_numeric(runs[x], errors="coerce").notna()]
    runs = runs.assign(**{x: pd.to_numeric(runs[x]), y: pd.to_numeric(runs[y], errors="coerce").astype(float)})
    limits = y_limits(runs, y, minimize)

    xs = runs[x][runs[x] > 0]
    if len(xs) and xs.max() / xs.min() > LOG_X_SPREAD:
        ax.set_xscale("log")
        ticks = [m * 10.0 ** e for e in range(-6, 3) for m in (1, 2, 5)]
        ax.xaxis.set_major_locator(FixedLocator([t for t in ticks if xs.min() / 1.5 <= t <= xs.max() * 1.5]))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    if len(xs):  # room on the right for labels of the most expensive points (full attention at 1)
        log_x = ax.get_xscale() == "log"
        ax.set_xlim(xs.min() / 1.6 if log_x else 0, xs.max() * (1.6 if log_x else 1.15))
    if limits:
        ax.set_ylim(*limits)
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
    elif runs[y].between(0, 1).all():
        ax.set_ylim(-0.05, 1.08)
        ax.yaxis.set_major_locator(FixedLocator(np.linspace(0, 1, 6)))
    ax.grid(True, which="major", alpha=0.3, lw=0.5)
    ax.tick_params(labelsize=6, length=2)
    ax.set_xlabel(X_SHORT.get(x, x), fontsize=6.5)
    ax.set_ylabel(f"{y} ({'lower' if minimize else 'higher'} is better)", fontsize=6.5)


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
    """One figure per metric, one column wide (COLUMN_IN), written as PNG, PDF and SVG: a panel per setting
    and y (the metric's primary value, plus e.g. choice_accuracy for the synthetic task), stacked. Every
    point is labelled where it is (variant and knobs), no legend. Returns the paths; the plotted numbers are
    kept on the function for tests (`plot_pareto.last_data`; `last_figure`: size, legends, note, labels)."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")  # no display on compute nodes; also keeps tests headless
    import matplotlib.pyplot as plt

    ys = [y] + [c for c in extra_y(metric) if c != y and c in df and pd.to_numeric(df[c], errors="coerce").notna().any()]
    settings = list(dict.fromkeys(df["setting"].fillna("")))
    panels = [(s, c) for s in settings for c in ys]
    height = PANEL_IN * len(panels) + 0.3 * len(settings) + NOTE_IN
    fig, axes = plt.subplots(len(panels), 1, figsize=(COLUMN_IN, height), squeeze=False)
    df = df.assign(_text=point_texts(df, label_cols or []))
    df.attrs = {}  # iterrows below copies the attrs into every row: seconds for a plot of 10,000 runs
    styles, data, drawn, labels = _styles(df["family"]), {}, {}, {}
    for ax, (setting, col) in zip(axes[:, 0], panels):  # first the frames: the layout depends on them
        panel = df[df["setting"].fillna("") == setting]
        if col == ys[0]:  # once per setting
            ax.set_title(textwrap.fill(panel_title(panel) or title, 62), fontsize=6, loc="left")
        _set_axes(ax, panel, x, col, minimize if col == y else False)
    fig.tight_layout(rect=(0, NOTE_IN / height, 1, 1), h_pad=0.6)
    for ax, (setting, col) in zip(axes[:, 0], panels):  # then points and labels, at their final pixels
        panel = df[df["setting"].fillna("") == setting]
        chance = None
        if col == "choice_accuracy" and "chance_choice_accuracy" in panel:
            chance = pd.to_numeric(panel["chance_choice_accuracy"], errors="coerce").mean()
        plotted, what = _draw_panel(ax, panel, x, col, minimize if col == y else False, styles,
                                    None if chance is None or pd.isna(chance) else chance, primary=col == y)
        data[f"{setting}|{col}"] = plotted
        labels[f"{setting}|{col}"] = {"labels": what.pop("labels"), "axes": tuple(ax.get_window_extent().bounds)}
        drawn = {k: drawn.get(k, False) or v for k, v in what.items()}
    note = figure_note(drawn, len(df))
    fig.text(0.01, 0.005, textwrap.fill(note, 95), fontsize=5, color="0.35", va="bottom")
    path.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        out = path.with_suffix(f".{fmt}")
        fig.savefig(out, dpi=200, metadata={"Date": None} if fmt == "svg" else None)
        paths.append(out)
    plot_pareto.last_figure = {"size_in": tuple(fig.get_size_inches()), "legends": sum(a.get_legend() is not None
                                                                                   for a in axes[:, 0]),
                               "note": note, "labels": labels}
    plt.close(fig)
    plot_pareto.last_data = data
    return paths


def figure_note(drawn: Dict[str, bool], n_runs: int) -> str:
    """What the marks mean, only for the marks the figure has (no promise of lines a figure lacks)."""
    parts = [f"{n_runs} runs; dotted: full attention"]
    if drawn.get("line"):
        parts.append("lines join a family's Pareto-front points (dashed: oracle, an upper bound)")
    if drawn.get("faded"):
        parts.append("faded: off its family's front")
    if drawn.get("bars"):
        parts.append("bars: 95% interval or seed range")
    if drawn.get("ringed"):
        parts.append("open ring: a run on top of another")
    if drawn.get("clipped"):
        parts.append(f"▲: above {Y_SPAN:g}× full, value in brackets")
    if drawn.get("noncausal"):
        parts.append("circled: not causal (cost.causal = false)")
    if drawn.get("front_only"):
        parts.append(f"over {MAX_LABELS} runs: front points labelled, all in summary.md")
    return "; ".join(parts) + "."
