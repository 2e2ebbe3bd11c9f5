"""Runs as sets of scored items (samples.jsonl): which items two runs share, and one row for the runs of one
config over different item ranges (`lsh-bitnet-collect DIR --pool-ranges`).

A long evaluation is often run in pieces: samples 0-34 one day, `eval.batch_offset=35 dataset.n_samples=50`
the next. Every piece is the same config but for the keys in RANGE_KEYS, and its samples.jsonl holds each
item's outcome and cost, so the pieces pool into one row with the metric and its interval recomputed over
the union of their items (lsh_bitnet.run.samples.summarize, as a finished run computes them).
"""
import json
import numbers
from pathlib import Path
from typing import Any, Dict, List, Optional

import pandas as pd

from lsh_bitnet.report.runs import ID_COLUMNS, SETTING_IGNORED, SETTING_PREFIXES, log
from lsh_bitnet.run.samples import COST_KEYS, DECODE_COST_KEYS, SAMPLES_FILE, summarize
from lsh_bitnet.tasks.base import RecordKind, record_kind

# Keys that choose which items of a dataset a run scores, not what an item is.
RANGE_KEYS = ("eval.batch_offset", "eval.max_batches", "dataset.n_samples")
Items = Dict[int, Dict[str, Any]]  # index -> samples.jsonl record


def read_items(run_path: Path) -> Items:
    """index -> record of a run's samples.jsonl; {} without one. A line cut short by a kill is skipped."""
    path = Path(run_path) / SAMPLES_FILE
    if not path.is_file():
        return {}
    items: Items = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            items[int(record["index"])] = record
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return items


def kind_of(metric: Any, items: Optional[Items]) -> Optional[RecordKind]:
    """The record kind of a run of `metric` (its task's; for a task not registered here, read from its items)."""
    return record_kind(metric, (items or {}).values())


def same_item(a: Dict[str, Any], b: Dict[str, Any], kind: Optional[RecordKind] = None) -> bool:
    """Whether two records with one index scored the same window or sample (of the same dataset)."""
    kind = kind or record_kind(None, [a])
    return kind is not None and kind.same_item(a, b)


def same_outcome(a: Dict[str, Any], b: Dict[str, Any], kind: Optional[RecordKind] = None) -> bool:
    """One config scoring one item twice: deterministic runs agree (NLL to float32 summation noise)."""
    kind = kind or record_kind(None, [a])
    return kind is not None and kind.same_outcome(a, b)


def shared_items(*runs: Items, kind: Optional[RecordKind] = None) -> List[int]:
    """Indices every run scored, as the same item in all of them."""
    if not runs:
        return []
    common = set(runs[0]).intersection(*runs[1:])
    return sorted(i for i in common if all(same_item(runs[0][i], other[i], kind) for other in runs[1:]))


def primary_value(items: Items, indices: List[int], kind: Optional[RecordKind] = None) -> Optional[float]:
    """The table's metric over some items, as the task's record kind pools it (perplexity exp(sum NLL / sum
    predicted), mean accuracy); None where the kind is unknown."""
    records = [items[i] for i in indices]
    kind = kind or record_kind(None, records)
    return kind.value(records) if kind is not None else None


def item_ranges(indices) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
    runs: List[List[int]] = []  # [first, last] of each run of consecutive indices
    for i in sorted(indices):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def setting_label(row: pd.Series, swept: List[str], skip=()) -> str:
    """The collector's `setting` (what a frontier is drawn over), leaving out the keys in skip."""
    head = [f"{c}={row[c]}" for c in ("model", "dataset", "seq_len") if row.get(c) is not None and not pd.isna(row[c])]
    extra = [f"{k}={row.get(k)}" for k in swept if k.startswith(SETTING_PREFIXES) and k not in ID_COLUMNS.values()
             and k not in SETTING_IGNORED and k not in skip]
    return ", ".join(head + extra)


def comparable_key(row: pd.Series, swept: List[str]) -> str:
    """Runs with equal keys measured the same thing up to their item range: metric and setting without RANGE_KEYS."""
    return json.dumps([row.get("metric"), setting_label(row, swept, skip=RANGE_KEYS)], default=str)


def _pool_group(group: pd.DataFrame, root: Path, values: Dict) -> Dict[str, Any]:
    """One row for runs of one config over different ranges; see pool_ranges."""
    pooled: Items = {}
    taken: Dict[str, float] = {}  # run_dir -> full comparisons of the items taken from it
    whole: Dict[str, float] = {}  # run_dir -> full comparisons of all its items
    duplicates = 0
    kind: Optional[RecordKind] = None  # one config: one metric, one kind
    for run_dir in group["run_dir"]:
        items = read_items(Path(root) / run_dir)
        kind = kind or kind_of(group["metric"].iat[0] if "metric" in group else None, items)
        whole[run_dir] = float(sum(r.get("full_comparisons", 0) for r in items.values()))
        taken[run_dir] = 0.0
        for index, rec in items.items():
            if index in pooled:
                duplicates += 1
                if not (same_item(pooled[index], rec, kind) and same_outcome(pooled[index], rec, kind)):
                    log.warning("%s: item %d differs from the one pooled before it (another item, or another "
                                "outcome of one config); the first is kept", run_dir, index)
                continue
            pooled[index] = rec
            taken[run_dir] += rec.get("full_comparisons", 0)
    records = [pooled[i] for i in sorted(pooled)]
    row = group.iloc[0].to_dict()
    total_taken = sum(taken.values())
    share = {d: (taken[d] / whole[d] if whole[d] else 0.0) for d in taken}  # part of a run's own totals pooled

    def combine(col: str, section: str, key: str) -> Any:
        vals = list(group[col])
        reporting = [(v, d) for v, d in zip(vals, group["run_dir"]) if isinstance(v, numbers.Number)
                     and not isinstance(v, bool) and not pd.isna(v)]  # (value, run_dir) of the runs reporting it
        numeric = [v for v, _ in reporting]
        if section == "memory":
            return max(numeric) if numeric else None
        if (key.endswith("_ratio") or section == "diagnostics") and section in ("cost", "diagnostics"):
            # rates: weighted by the work pooled, over the runs that report one (an interrupted run has no cost)
            work = sum(taken[d] for _, d in reporting)
            return sum(v * taken[d] for v, d in reporting) / work if work else None
        if len(numeric) == len(vals) and total_taken and section == "cost":
            return sum(v * share[d] for v, d in zip(numeric, group["run_dir"]))  # counts: each run's pooled part
        if section == "timing" and key.endswith("_s") and not key.endswith("_per_s") and len(numeric) == len(vals):
            return sum(v * share[d] for v, d in zip(numeric, group["run_dir"]))
        same = {json.dumps(v, default=str) for v in vals}
        return vals[0] if len(same) == 1 else None  # e.g. chance_accuracy; first_sample differs: dropped

    for (section, key), col in values.items():
        row[col] = combine(col, section, key)
    seed = json.loads(row.get("_seeds") or "{}").get("seed", 0)  # the bootstrap seed a single run would use
    metrics = summarize(records, seed=seed if isinstance(seed, int) else 0, kind=kind)
    if records and "prompt_tokens" in records[0]:
        lengths = [r["prompt_tokens"] for r in records]
        metrics.update(mean_prompt_tokens=sum(lengths) / len(lengths), min_prompt_tokens=min(lengths),
                       max_prompt_tokens=max(lengths))
    if records and all(k in r for r in records for k in COST_KEYS):
        comparisons, full = (sum(r[k] for r in records) for k in COST_KEYS)
        metrics.update(comparisons=comparisons, full_comparisons=full, comparison_ratio=comparisons / full if full else None)
        if all(k in r for r in records for k in DECODE_COST_KEYS):  # apply_to=decode: the sparse phase's ratio
            comparisons, full = (sum(r[k] for r in records) for k in DECODE_COST_KEYS)
            metrics.update(decode_comparisons=comparisons, decode_full_comparisons=full,
                           comparison_ratio=comparisons / full if full else None)
    columns = {key: col for (section, key), col in values.items() if section in ("metrics", "cost")}
    for key, value in metrics.items():
        row[columns.get(key, key)] = value
    if len(group) > 1:
        row["run_dir"] = f"{row['run_dir']} (+{len(group) - 1})"
    partial = int(group["_partial"].sum()) if "_partial" in group else 0
    row.update(pooled_runs=len(group), pooled_partial=partial, pooled_duplicates=duplicates,
               items=item_ranges(pooled), _items=pooled, status="partial" if partial else row.get("status"))
    for key in RANGE_KEYS:
        if key in row:
            row[key] = None  # `items` says which were scored
    return row


def pool_ranges(ok: pd.DataFrame, root: Path, interrupted: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """One row per set of ok runs that differ only in RANGE_KEYS, their items pooled by index.

    `interrupted`: runs stopped part-way (status `interrupted`: a signal, a time limit); their finished
    items pool too (`pooled_partial` counts such runs, and the row's status is `partial`). They have no
    cost section, so the pooled cost ratios come from the other runs and the counts stay empty.

    Metrics and intervals are recomputed over the pooled items, and so are `comparisons` and the
    comparison ratio (from each item's counts). Other cost and diagnostic ratios are the runs' values
    weighted by the full comparisons of the items each contributed, counts (hash_ops, selection_ops) and
    seconds the runs' values times the part of each run pooled, memory the largest. An index two runs
    both scored is taken from the first in natural order (`pooled_duplicates` counts them); a warning
    says where the two records disagree. Runs without samples.jsonl pool only with themselves."""
    attrs = dict(ok.attrs)
    if interrupted is not None and not interrupted.empty:
        pieces = interrupted[[(Path(root) / d / SAMPLES_FILE).is_file() and bool(read_items(Path(root) / d))
                              for d in interrupted["run_dir"]]]
        ok = pd.concat([ok.assign(_partial=False), pieces.drop(columns=["error"], errors="ignore").assign(_partial=True)],
                       ignore_index=True)
    if ok.empty:
        return ok
    values = attrs.get("values", {})
    swept = attrs.get("swept", [])

    def key(pos: int) -> str:
        config = {k: v for k, v in json.loads(ok["_group"].iat[pos]).items() if k not in RANGE_KEYS}
        has_items = (Path(root) / ok["run_dir"].iat[pos] / SAMPLES_FILE).is_file()
        return json.dumps([config, ok["_seeds"].iat[pos], has_items or ok["run_dir"].iat[pos]], sort_keys=True)

    keys = [key(p) for p in range(len(ok))]
    rows = []
    for k in dict.fromkeys(keys):
        group = ok[[x == k for x in keys]]
        row = _pool_group(group, root, values) if json.loads(k)[2] is True else \
            {**group.iloc[0].to_dict(), "pooled_runs": 1, "items": None, "_items": None}
        row["setting"] = setting_label(pd.Series(row), swept, skip=RANGE_KEYS)
        row["_group"] = json.dumps(json.loads(k)[0], sort_keys=True, default=str)  # --group-seeds joins pooled rows
        rows.append(row)
    out = pd.DataFrame(rows)
    for col in ("pooled_runs", "pooled_partial", "pooled_duplicates"):
        out[col] = pd.to_numeric(out.get(col), errors="coerce").astype("Int64")
    out = out.drop(columns=["_partial"], errors="ignore")
    out.attrs.update(attrs)
    out.attrs["swept"] = [k for k in swept if k not in RANGE_KEYS]
    out.attrs["pooled"] = True
    return out


def items_of(row: pd.Series, root: Path) -> Optional[Items]:
    """A row's items: pooled ones where pool_ranges made the row, else its run's samples.jsonl."""
    pooled = row.get("_items") if "_items" in row else None
    if isinstance(pooled, dict):
        return pooled
    return read_items(Path(root) / row["run_dir"])
