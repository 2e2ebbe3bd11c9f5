"""How much of the window-to-oracle gap a run closes at its comparison ratio: `lsh-bitnet-collect --gap-closed`.

The two reference baselines bracket what a selection rule can do at a budget: a sinks-plus-local window
(no information about the query) and the exact top-k by q.k (all of it). A rule's place between them at
the same comparison ratio,

    gap_closed = (metric(run) - metric(window)) / (metric(oracle) - metric(window)),

is 0 at the window and 1 at the oracle, for perplexity and accuracy alike (both differences change sign
together). All three are read over the items (windows, samples) the three runs share, where samples.jsonl
gives them (`gap_n`), otherwise from the runs' own metrics. References are matched, not interpolated: a window or oracle run of the same setting whose
comparison ratio is within `tolerance` (relative) of the run's. Where several match, the best-scoring one
of each family is used: the stronger window and the stronger oracle both make the figure smaller, so it
errs low. Where either family has no match, the columns stay empty. Size the
references to a rule's ratio before running them (docs/FINDINGS.md does: `attention.local_window`,
`attention.fraction`).
"""
from pathlib import Path
from typing import Any, Dict, List, Optional

import pandas as pd

from lsh_bitnet.registry import RULES
from lsh_bitnet.report.items import comparable_key, items_of, kind_of, primary_value, shared_items
from lsh_bitnet.report.pareto import is_full, primary_y

GAP_COLUMNS = ["gap_closed", "gap_n", "gap_window", "gap_window_run", "gap_oracle", "gap_oracle_run"]
# Rule.reference -> the columns of that bracket: the lower (a window, which knows nothing of the query) and the
# upper (the oracle, which knows every score).
BRACKETS = {"lower": "gap_window", "upper": "gap_oracle"}


def references() -> Dict[str, str]:
    """family -> gap column prefix of every registered rule that is a reference (Rule.reference)."""
    return {name: BRACKETS[rule.reference] for name, rule in RULES.items() if rule.reference in BRACKETS}


# A window and an oracle sized to a rule's ratio land within a few percent of it (docs/FINDINGS.md:
# 0.1653 and 0.1631 for m-of-L's 0.1678, 1.5% and 2.8%); 5% takes those and refuses looser pairings.
DEFAULT_TOLERANCE = 0.05


def _best(candidates: pd.DataFrame, y: str, minimize: bool) -> Optional[pd.Series]:
    scored = candidates[pd.to_numeric(candidates[y], errors="coerce").notna()]
    if scored.empty:
        return None
    values = pd.to_numeric(scored[y])
    return scored.loc[values.idxmin() if minimize else values.idxmax()]


def add_gap_closed(ok: pd.DataFrame, root: Path, tolerance: float = DEFAULT_TOLERANCE) -> pd.DataFrame:
    """ok with GAP_COLUMNS for every run that is neither a reference nor full attention."""
    if not 0 < tolerance < 1:
        raise ValueError(f"--gap-tolerance {tolerance}: give a relative tolerance in (0, 1), e.g. 0.05")
    out = ok.reset_index(drop=True).copy()
    for col in GAP_COLUMNS:
        out[col] = None
    if out.empty or "comparison_ratio" not in out:
        return out
    swept = ok.attrs.get("swept", [])
    keys = out.apply(lambda r: comparable_key(r, swept), axis=1)
    ratio = pd.to_numeric(out["comparison_ratio"], errors="coerce")
    items: Dict[int, Any] = {}

    def items_at(pos: int):
        if pos not in items:
            items[pos] = items_of(out.iloc[pos], root) or {}
        return items[pos]

    reference = references()
    for pos in range(len(out)):
        family, metric = out["family"].iat[pos], out["metric"].iat[pos]
        if family in reference or is_full(family) or primary_y(metric) is None or pd.isna(ratio.iat[pos]):
            continue
        y, minimize = primary_y(metric)
        refs: Dict[str, int] = {}
        for prefix in BRACKETS.values():
            near = out[out["family"].isin([f for f, p in reference.items() if p == prefix]) & (keys == keys.iat[pos])
                       & ((ratio - ratio.iat[pos]).abs() <= tolerance * ratio.iat[pos])]
            best = _best(near, y, minimize)
            if best is not None:
                refs[prefix] = int(best.name)
        if len(refs) < 2:
            continue
        runs = [items_at(pos)] + [items_at(p) for p in refs.values()]
        kind = kind_of(metric, runs[0])
        if all(runs) and kind is not None:  # the three over the items all of them scored
            shared = shared_items(*runs, kind=kind)
            if not shared:
                continue  # different items: no comparison
            values = [primary_value(r, shared, kind) for r in runs]
            out.loc[pos, "gap_n"] = len(shared)
        else:
            values = [pd.to_numeric(pd.Series([out[y].iat[p]]), errors="coerce").iat[0] for p in [pos, *refs.values()]]
            if any(pd.isna(v) for v in values):
                continue
        run_value, window, oracle = values
        for (prefix, p), value in zip(refs.items(), (window, oracle)):
            out.loc[pos, prefix], out.loc[pos, f"{prefix}_run"] = value, out["run_dir"].iat[p]
        out.loc[pos, "gap_closed"] = (run_value - window) / (oracle - window) if oracle != window else None
    for col in ("gap_closed", "gap_window", "gap_oracle"):
        out[col] = pd.to_numeric(out[col], errors="coerce")
    out["gap_n"] = pd.to_numeric(out["gap_n"], errors="coerce").astype("Int64")
    out.attrs.update(ok.attrs)
    return out


def gap_lines(tolerance: float) -> List[str]:
    """The collector's summary.md note for the columns."""
    return [f"`gap_closed` = (run - window) / (oracle - window) in the table's metric, against the best window and "
            f"oracle_topk runs of the same setting within {tolerance:.0%} of the run's comparison ratio "
            f"(`gap_window_run`, `gap_oracle_run` in the CSV), over the `gap_n` items the three share; empty where "
            f"either reference has no such run.", ""]
