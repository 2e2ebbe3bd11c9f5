"""Each run against a baseline run on the items both scored: `lsh-bitnet-collect DIR --paired-with full`.

Windows and samples differ among themselves far more than two variants differ on one of them: over the
four held-out 4096-token windows of docs/FINDINGS.md full attention's perplexity has the interval
[11.1, 17.3], while a variant's paired ratio to it is [1.037, 1.056]. A run's own interval is mostly
that spread; the paired figure compares run and baseline item by item. Items are matched by `index` in
the runs' samples.jsonl, and only where they are the same item in both (a window's tokens, predicted
tokens and bytes; a sample's target and prompt length), so runs over different ranges of one dataset
(`eval.batch_offset`, `eval.max_batches`, `dataset.n_samples`) pair on their overlap.

The statistic is the record kind's (Task.record.paired, lsh_bitnet/tasks/_records.py). Columns added
(docs/RESULTS.md, "The collector"):
  paired_with                           the baseline run's directory
  paired_n                              items both runs scored
  paired_ratio, _ci_low, _ci_high       perplexity: the run's over the baseline's on those windows
  paired_delta, _ci_low, _ci_high       accuracy: the run's minus the baseline's on those samples
  paired_gains, paired_losses           accuracy: samples only the run, or only the baseline, answered
"""
from pathlib import Path
from typing import Any, Dict, List, Optional

import pandas as pd

from lsh_bitnet.report.items import Items, comparable_key, items_of, kind_of, same_item
from lsh_bitnet.report.runs import log
from lsh_bitnet.tasks.base import RecordKind

PAIRED_COLUMNS = ["paired_with", "paired_n", "paired_ratio", "paired_ratio_ci_low", "paired_ratio_ci_high",
                  "paired_delta", "paired_delta_ci_low", "paired_delta_ci_high", "paired_gains", "paired_losses"]


def _compare(run: Items, base: Items, seed: int, kind: Optional[RecordKind]) -> Dict[str, Any]:
    if kind is None:  # records of a kind nothing here knows: no item is matched
        return {"paired_n": 0}
    shared = sorted(i for i in run.keys() & base.keys() if same_item(run[i], base[i], kind))
    out: Dict[str, Any] = {"paired_n": len(shared)}
    if shared:
        out.update(kind.paired([run[i] for i in shared], [base[i] for i in shared], seed=seed))
    return out


def add_paired(ok: pd.DataFrame, root: Path, baseline: str, seed: int = 0) -> pd.DataFrame:
    """ok with PAIRED_COLUMNS: each run against a baseline run of the same metric, model and data.

    `baseline`: a family (`full`, `window`, `oracle_topk`, `lsh/simhash`, ...) or one run directory as the
    collector names it. Where several baseline runs qualify, the one sharing the most items is taken
    (the first in natural order on a tie); a run with no shared item keeps empty columns."""
    if ok.empty:
        return ok.assign(**{c: None for c in PAIRED_COLUMNS})
    is_base = (ok["family"] == baseline) | (ok["attention"] == baseline) | (ok["run_dir"] == baseline)
    if not is_base.any():
        families = ", ".join(sorted(str(f) for f in ok["family"].dropna().unique()))
        raise ValueError(f"--paired-with {baseline}: no ok run has that family or run directory; "
                         f"families here: {families or 'none'}")
    swept = ok.attrs.get("swept", [])
    keys = ok.apply(lambda r: comparable_key(r, swept), axis=1)
    items = [items_of(ok.iloc[p], root) or {} for p in range(len(ok))]  # pooled rows carry theirs
    rows: List[Dict[str, Any]] = []
    unpaired: List[str] = []
    for pos in range(len(ok)):
        row: Dict[str, Any] = {c: None for c in PAIRED_COLUMNS}
        mine = items[pos]
        kind = kind_of(ok["metric"].iat[pos], mine) if mine else None
        best: Optional[Dict[str, Any]] = None
        for other in [p for p in range(len(ok)) if is_base.iat[p] and keys.iat[p] == keys.iat[pos]]:
            found = _compare(mine, items[other], seed, kind) if mine else {"paired_n": 0}
            if found["paired_n"] and (best is None or found["paired_n"] > best["paired_n"]):
                best = {**found, "paired_with": ok["run_dir"].iat[other]}
        if best is not None:
            row.update(best)
        elif mine:
            unpaired.append(ok["run_dir"].iat[pos])
        rows.append(row)
    if unpaired:  # one line, not one per run: a directory of many sweeps has many such runs
        log.info("%d run(s) share no item with a %s run of their setting; their paired columns stay empty: %s%s",
                 len(unpaired), baseline, ", ".join(unpaired[:3]), " ..." if len(unpaired) > 3 else "")
    columns = list(dict.fromkeys(PAIRED_COLUMNS + [c for row in rows for c in row]))  # + a plug-in kind's own
    out = pd.concat([ok.reset_index(drop=True), pd.DataFrame(rows, columns=columns)], axis=1)
    for col in ("paired_n", "paired_gains", "paired_losses"):
        out[col] = pd.to_numeric(out[col], errors="coerce").astype("Int64")
    out.attrs.update(ok.attrs)
    out.attrs["paired_with"] = baseline
    return out
