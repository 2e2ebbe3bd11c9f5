"""The table a sweep ends with: one short line per run, the columns a reader compares first (as lm-eval
prints its results), most expensive first. Every other column stays in summary.md / summary_<metric>.csv.

    variant                          | accuracy [95% CI]    | comparisons | MACs  | wall  | n
    full                             | 0.967 [0.833, 0.994] | 1           | 1     | 1     | 30
    window sink=4 w=32               | 0 [0, 0.114]         | 0.282       | 0.282 | 0.93  | 30
"""
import re
from typing import Dict, List, Optional

import pandas as pd

from lsh_bitnet.report.markdown import pipe_table
from lsh_bitnet.report.pareto import is_full

# (column, header): the cost ratios, each against full attention on the same tokens.
RATIOS = (("comparison_ratio", "comparisons"), ("mac_ratio", "MACs"), ("wall_ratio", "wall"))
# Keys of a job's overrides that name the variant it ran (conf/variant/).
VARIANT = re.compile(r"(?:^|,)\+?variant=([^,]+)")


def _num(value) -> str:
    if value is None or pd.isna(value):
        return "–"
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 1e6 else f"{value:.3g}"


def metric_cell(row, y: str) -> str:
    """`0.967 [0.833, 0.994]`, or `0.95 ± 0.02` over seeds, or the bare value."""
    text = _num(row.get(y))
    lo, hi, sd = row.get(f"{y}_ci_low"), row.get(f"{y}_ci_high"), row.get(f"{y}_std")
    if lo is not None and hi is not None and pd.notna(lo) and pd.notna(hi):
        return f"{text} [{_num(lo)}, {_num(hi)}]"
    if sd is not None and pd.notna(sd):
        return f"{text} ± {_num(sd)}"
    return text


def variant_parts(table: pd.DataFrame, label_cols: List[str]) -> pd.DataFrame:
    """Columns `name` (the `+variant=` name a row was started with, else its family) and `knobs` (the label
    columns that vary among the rows of that name, `b=4 t=2`; empty when none do)."""
    from lsh_bitnet.report.pareto import point_label

    overrides = table["overrides"] if "overrides" in table else pd.Series(None, index=table.index)
    names = pd.Series([m.group(1) if isinstance(o, str) and (m := VARIANT.search(o)) else str(f)
                       for o, f in zip(overrides, table["family"])], index=table.index)
    knobs = {}
    bare = table.copy(deep=False)
    bare.attrs = {}
    for _, rows in bare.groupby(names, sort=False):
        varying = [c for c in label_cols if c in rows and rows[c].astype(str).nunique() > 1]
        # rows as dicts of the varying columns: iterrows builds a Series per row and a Series item assignment
        # per label (seconds at 10,000 runs)
        for i, row in zip(rows.index, rows[varying].to_dict("records")):
            knobs[i] = point_label(row, varying)
    return pd.DataFrame({"name": names, "knobs": pd.Series(knobs, index=table.index, dtype=object).fillna("")})


def variant_labels(table: pd.DataFrame, label_cols: List[str]) -> pd.Series:
    """What each row ran, short: `oracle10`, `lsh/simhash b=4 t=2`, so no two rows of a table read the same."""
    parts = variant_parts(table, label_cols)
    return (parts["name"] + " " + parts["knobs"]).str.strip()


def brief_table(table: pd.DataFrame, y: str, label_cols: List[str], x: str = "comparison_ratio") -> str:
    """The rows of one metric (one setting or several), as a Markdown table sorted by cost, highest first."""
    rows = table.assign(_label=variant_labels(table, label_cols))
    cost = pd.to_numeric(rows[x], errors="coerce") if x in rows else pd.Series(float("nan"), index=rows.index)
    rows = rows.assign(_cost=cost).sort_values("_cost", ascending=False, na_position="last", kind="stable")
    rows.attrs = {}
    n_col = next((c for c in ("n", "n_samples", "n_windows", "n_seeds") if c in rows), None)
    cells = [c for c in (y, f"{y}_ci_low", f"{y}_ci_high", f"{y}_std") if c in rows]
    out = pd.DataFrame({
        "variant": rows["_label"],
        f"{y} [95% CI]": [metric_cell(r, y) for r in rows[cells].to_dict("records")],  # dicts: no Series per row
        **{header: [_num(v) for v in rows[col]] if col in rows else "–" for col, header in RATIOS},
        "n": [_num(v) for v in rows[n_col]] if n_col else "–",
    })
    return pipe_table(out, colalign=["left"] + ["right"] * 5)


def brief_lines(ok: pd.DataFrame, y_by_metric: Dict[str, tuple], label_cols: List[str],
                x: str = "comparison_ratio") -> List[str]:
    """Every metric and setting of a collected sweep: a heading, its table, and a note where it has no
    full-attention run to read the ratios and accuracies against."""
    lines: List[str] = []
    for metric in sorted(ok["metric"].dropna().unique()):
        by_metric = ok[ok["metric"] == metric]
        y = y_by_metric.get(metric, (None,))[0]
        if y is None or y not in by_metric:
            continue
        for setting, rows in by_metric.groupby(by_metric["setting"].fillna(""), sort=False):
            lines += [f"## {metric}" + (f" ({setting})" if setting else ""), brief_table(rows, y, label_cols, x)]
            note = no_reference_note(rows)
            if note:
                lines.append(note)
    return lines


def no_reference_note(rows: pd.DataFrame) -> Optional[str]:
    if rows["family"].map(is_full).astype(bool).any():
        return None
    return ("[lsh-bitnet] no full-attention run in this setting: nothing to read these values against, and "
            "no wall ratio; add +baselines=true to the sweep (full attention, plus window and oracle references)")
