"""The held-out T = 4096 perplexity against comparisons and against counted work, every family side by side.

    python benchmarks/plot_work_front.py docs/data/heldout_4096.csv docs/pareto_work_4096.png

The CSV (one row per run: variant, family, comparison_ratio, mac_ratio, x_full, x_full_low, x_full_high) holds
the figures of docs/FINDINGS.md sections 2 and 6 (paired ratios to full attention with their 95% intervals over
the 4 held-out windows); earlier rows were transcribed from the tables, as their run directories were not kept.
Two panels share the y axis: x = comparison_ratio, x = mac_ratio (log). The dotted line is full attention (1.0 on
both axes); on each panel the runs that no other run beats on both axes are joined (the work front).
"""
import csv
import sys
from pathlib import Path

Y_MAX = 1.32  # the forest (1.96x) is drawn as an arrow at the top edge


def front(points):
    """Indices of the points no other point beats on both x and y (lower is better on both)."""
    keep = []
    for i, (x, y) in enumerate(points):
        if not any((x2 <= x and y2 <= y) and (x2 < x or y2 < y) for x2, y2 in points):
            keep.append(i)
    return sorted(keep, key=lambda i: points[i][0])


def main(src, dst):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(src)))
    families = list(dict.fromkeys(r["family"] for r in rows))
    colors = {f: plt.get_cmap("tab10")(i % 10) for i, f in enumerate(families)}
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.2), sharey=True)
    for ax, x, title in ((axes[0], "comparison_ratio", "comparisons computed / full"),
                         (axes[1], "mac_ratio", "counted work (multiply-adds) / full, log scale")):
        pts = [(float(r[x]), float(r["x_full"])) for r in rows]
        for r, (px, py) in zip(rows, pts):
            lo, hi = float(r["x_full_low"]), float(r["x_full_high"])
            oracle = r["family"].startswith("oracle")
            ax.errorbar(px, py, yerr=[[py - lo], [hi - py]], fmt="D" if oracle else "o", ms=6,
                        color=colors[r["family"]], mfc="none" if oracle else colors[r["family"]], capsize=3,
                        label=r["family"])
            if py > Y_MAX:  # off the chart (the forest): an arrow at the top edge with its value
                ax.annotate(f"{r['variant']} ({py:.2f}x)", (px, Y_MAX), xytext=(px, Y_MAX - 0.03), fontsize=7,
                            arrowprops=dict(arrowstyle="->", color=colors[r["family"]]))
            else:
                ax.annotate(r["variant"], (px, py), textcoords="offset points", xytext=(5, 4), fontsize=7)
        mine = [i for i, r in enumerate(rows) if not r["family"].startswith("oracle")]
        f = [mine[i] for i in front([pts[i] for i in mine])]
        ax.plot([pts[i][0] for i in f], [pts[i][1] for i in f], "-", color="0.6", lw=1, zorder=0,
                label="front (no oracle)")
        ax.axhline(1.0, ls=":", color="0.4")
        ax.axhline(1.05, ls="--", color="0.75", lw=0.8)
        ax.set_xlabel(f"{x}: {title}")
        ax.set_title(f"held-out T = 4096 (windows 2-5), x = {x}", fontsize=10)
        if x == "mac_ratio":
            ax.set_xscale("log")
            ax.axvline(0.5, ls="--", color="0.75", lw=0.8)
        else:
            ax.axvline(0.10, ls="--", color="0.75", lw=0.8)
    axes[0].set_ylabel("perplexity / full (paired, 95% interval over windows)")
    axes[0].set_ylim(0.98, Y_MAX)
    handles, labels = axes[1].get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    axes[1].legend(seen.values(), seen.keys(), fontsize=7.5, loc="upper right")
    fig.text(0.01, 0.005, "Dashed: the issue-27 targets (1.05x; ratio 0.10 / mac_ratio 0.5). Open diamonds: oracles "
             "(q.k of every key, not counted as comparisons). Grey line: runs that no non-oracle run beats on both "
             "axes.", fontsize=7.5, color="0.35")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(dst, dpi=130)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
