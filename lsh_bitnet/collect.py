"""Merge every results.json under a directory into per-metric tables, failed-run lists and Pareto plots.

    python -m lsh_bitnet.collect multirun/2025-01-01/12-00-00 [--out DIR] [--no-plot] [--metric NAME]
                                 [--x comparison_ratio|mac_ratio|wall_ratio] [--group-seeds]

Which config keys a variant reads comes from the schema dataclasses (lsh_bitnet.config), so a new
variant or field gets its columns without an edit here; value columns are every scalar the runs report.
"""
import argparse
import json
import logging
import math
import os
import re
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

import pandas as pd

from lsh_bitnet.config import SCHEMAS, AttentionConfig
from lsh_bitnet.pareto import PRIMARY_Y, X_AXES, Y_COLUMNS, add_pareto, family_of, plot_pareto
from lsh_bitnet.results import HASH_EXCLUDED_KEYS, RESULTS_FILE

log = logging.getLogger("lsh_bitnet.collect")

# Identity columns: short name -> dotted config key (what was run, on what). Knob columns come from the schemas.
ID_COLUMNS = {"model": "model.name", "attention": "attention.name", "hasher": "hasher.name",
              "dataset": "dataset.name", "metric": "metric.name", "seq_len": "eval.seq_len"}
# results.json sections whose scalar values become columns, in this order.
VALUE_SECTIONS = ("metrics", "cost", "diagnostics", "timing", "memory")
# Swept keys that define *what* is measured: runs differing here are never on one frontier.
SETTING_PREFIXES = ("model.", "dataset.", "eval.", "metric.")
SETTING_IGNORED = ("eval.batch_size", "model.device")  # change speed, not the numbers
NONFINITE_STRINGS = {"nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}


# ----------------------------------------------------------------------------- what a variant reads
def _variant_schemas() -> Dict[str, type]:
    """attention.name -> its schema dataclass (the `name` field's default), for every registered variant."""
    out = {}
    for cls in SCHEMAS["attention"].values():
        name = next(f.default for f in fields(cls) if f.name == "name")
        if isinstance(name, str):
            out[name] = cls
    return out


def _field_names(classes) -> Set[str]:
    return {f.name for cls in classes for f in fields(cls)}


def keys_read(variant: Any) -> Optional[Set[str]]:
    """The dotted attention./hasher. keys `variant` reads, derived from its schema; None = unknown variant.

    - attention: the fields of the variant's dataclass; a variant that declares nothing of its own
      (full) reads none of the shared sparse-attention fields, only the diagnostics (a measurement).
    - hasher: read by the LSH variants (named lsh*, SPEC section 3); a variant with a `max_depth` field
      hashes that many bits per tree instead of hasher.n_bits.
    """
    cls = _variant_schemas().get(variant)
    if cls is None:
        return None
    names = _field_names([cls])
    if not set(cls.__dict__.get("__annotations__", {})) - {"name"}:
        names = {"name"} | {n for n in names if n.startswith("diagnostics")}
    keys = {f"attention.{n}" for n in names}
    if str(variant).startswith("lsh"):
        hasher = {f"hasher.{n}" for n in _field_names(SCHEMAS["hasher"].values())}
        keys |= hasher - ({"hasher.n_bits"} if "max_depth" in names else set())
    return keys


def _declared() -> Set[str]:
    return ({f"attention.{n}" for n in _field_names(SCHEMAS["attention"].values())}
            | {f"hasher.{n}" for n in _field_names(SCHEMAS["hasher"].values())})


def relevant(dotted: str, attention: Optional[str], windows: bool = True) -> bool:
    """Does a run of this variant read `dotted`? `windows`: the metric cuts the text into eval.seq_len windows."""
    if dotted == "eval.seq_len":
        return windows
    if not dotted.startswith(("attention.", "hasher.")) or dotted == "attention.name":
        return True
    read = keys_read(attention)
    if read is None:  # a variant no schema declares: do not hide what we cannot judge
        return True
    if dotted not in _declared():  # a field no schema declares (an older run): shown where its group is read
        return dotted.startswith("attention.") or any(k.startswith("hasher.") for k in read)
    return dotted in read


def _uses_windows(record: Optional[Dict[str, Any]]) -> bool:
    """eval.seq_len matters only to a metric that evaluates windows (perplexity reports n_windows)."""
    metrics = _section(record or {}, "metrics")
    return not metrics or "n_windows" in metrics or "n_samples" not in metrics


# ----------------------------------------------------------------------------- loading
def flatten(node: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(node, dict):
        out: Dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: json.dumps(node) if isinstance(node, list) else node}  # lists are not hashable


def _one_line(text: Any, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _error_line(record: Dict[str, Any]) -> str:
    err = record.get("error")
    if isinstance(err, dict):
        msg = str(err.get("message") or "").strip().splitlines()
        return _one_line(err.get("summary") or f"{err.get('type', 'Error')}: {msg[0] if msg else ''}")
    return _one_line(err) if err else f"status {record.get('status')}, no error recorded"


def _is_nonfinite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    return isinstance(value, str) and value.strip().lower() in NONFINITE_STRINGS


def nonfinite_values(record: Dict[str, Any]) -> List[str]:
    """`section.key=value` for every NaN/inf number (or its string spelling) in the value sections."""
    found = []
    for section in VALUE_SECTIONS:
        for key, value in flatten(_section(record, section)).items():
            values = json.loads(value) if isinstance(value, str) and value.startswith("[") else [value]
            bad = [v for v in values if _is_nonfinite(v)] if isinstance(values, list) else []
            if bad:
                found.append(f"{section}.{key}={bad[0]}")
    return found


def _missing_fields(record: Dict[str, Any], x: str) -> List[str]:
    """What an `ok` run must hold for its table row; a row without these would be silently wrong."""
    flat = flatten(_section(record, "config"))
    need = [f"config.{k}" for k in ("attention.name", "metric.name") if flat.get(k) is None]
    metric = flat.get("metric.name")
    for section, key in [("cost", x)] + ([("metrics", PRIMARY_Y[metric][0])] if metric in PRIMARY_Y else []):
        if _section(record, section).get(key) is None:
            need.append(f"{section}.{key}")
    return need


def _load(path: Path) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """(record, None) for a usable ok run, else (record or None, one-line reason it counts as failed)."""
    try:
        record = json.loads(path.read_text())  # Python's parser accepts bare NaN: flagged below
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, _one_line(f"unreadable results.json: {type(exc).__name__}: {exc}")
    if not isinstance(record, dict):
        return None, f"unreadable results.json: top level is {type(record).__name__}, not an object"
    status = record.get("status")
    if status in ("failed", "interrupted"):
        return record, _error_line(record)
    if status == "running":
        started = (record.get("provenance") or {}).get("started_at")
        return record, f"status is 'running' (started {started}): the job died before finishing, or still runs"
    if status != "ok":
        return record, f"unknown status {status!r} (expected ok | failed | interrupted | running)"
    missing = _missing_fields(record, "comparison_ratio")
    if missing:
        return record, f"status ok but missing fields: {', '.join(missing)}"
    bad_metrics = [v for v in nonfinite_values(record) if v.startswith("metrics.")]
    if bad_metrics:  # an ok run with a NaN metric is a failure that was not caught (issue 10)
        return record, f"status ok but non-finite metrics: {', '.join(bad_metrics)}"
    return record, None


def _natural_key(text: str) -> List[Any]:
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", text)]  # 2_x before 10_x


def _section(record: Dict[str, Any], name: str) -> Dict[str, Any]:
    return record[name] if isinstance(record.get(name), dict) else {}  # null in failed / running runs


def _model_label(record: Dict[str, Any], flat: Dict[str, Any]) -> Any:
    """What ran: the model record's description (e.g. the GGUF's name and quantisation) over the option name."""
    info = _section(record, "model_info")
    if info.get("description"):
        return info["description"]
    if flat.get("model.name") == "hf":  # the option name says nothing; the checkpoint does
        return flat.get("model.name_or_path") or "hf"
    return flat.get("model.name")


def _data_label(flat: Dict[str, Any], windows: bool) -> str:
    """`wikitext2 valid.txt (test split)`: the dataset option, the file behind it, the split where text is split."""
    label = str(flat.get("dataset.name"))
    if flat.get("dataset.path"):
        label += f" {Path(str(flat['dataset.path'])).name}"
    # A file (text_file, enwik8) is read whole; a hub dataset or a wikitext directory is read by split.
    if windows and flat.get("dataset.split") and not Path(str(flat.get("dataset.path") or "")).suffix:
        label += f" ({flat['dataset.split']} split)"
    return label


def _value_columns(records: List[Dict[str, Any]], taken: Set[str]) -> Dict[Tuple[str, str], str]:
    """(section, key) -> column name for every scalar any run reports; a name clash gets `section.key`."""
    seen: Dict[Tuple[str, str], None] = {}
    for record in records:
        for section in VALUE_SECTIONS:
            for key, value in _section(record, section).items():
                if not isinstance(value, (dict, list)):
                    seen.setdefault((section, key), None)
    counts: Dict[str, int] = {}
    for _, key in seen:
        counts[key] = counts.get(key, 0) + 1
    return {(s, k): (k if counts[k] == 1 and k not in taken else f"{s}.{k}") for s, k in seen}


def _short_names(keys: List[str]) -> Dict[str, str]:
    """Dotted knob key -> column name: its leaf when no other key shares the leaf, else the dotted key."""
    leaves: Dict[str, int] = {}
    for key in keys:
        leaves[key.rsplit(".", 1)[-1]] = leaves.get(key.rsplit(".", 1)[-1], 0) + 1
    reserved = set(ID_COLUMNS)
    return {k: (k.rsplit(".", 1)[-1] if leaves[k.rsplit(".", 1)[-1]] == 1 and k.rsplit(".", 1)[-1] not in reserved
                else k) for k in keys}


def _fingerprint(record: Dict[str, Any]) -> str:
    """What a run measured, for telling whether a varied key changed anything."""
    return json.dumps([_section(record, "metrics"), _section(record, "cost").get("comparisons")],
                      sort_keys=True, default=str)


def _no_effect(swept: List[str], loaded: list) -> List[str]:
    """Swept keys that changed nothing measured: every pair of ok runs differing only there measured the same."""
    out = []
    ok = [(flat, record) for _, record, error, flat in loaded if error is None and record]
    for key in swept:
        groups: Dict[str, Dict[str, Set[str]]] = {}
        for flat, record in ok:
            rest = json.dumps({k: v for k, v in flat.items() if k != key}, sort_keys=True, default=str)
            groups.setdefault(rest, {}).setdefault(json.dumps(flat.get(key), default=str), set()).add(
                _fingerprint(record))
        pairs = [g for g in groups.values() if len(g) > 1]
        if pairs and all(len(set().union(*g.values())) == 1 for g in pairs):
            out.append(key)
    return out


def _knob_order(dotted: str) -> Tuple[int, str]:
    """hasher fields, then each variant's own fields, then the shared ones, in schema declaration order."""
    own = [f"attention.{n}" for cls in SCHEMAS["attention"].values() for n in cls.__dict__.get("__annotations__", {})]
    schema = list(dict.fromkeys([f"hasher.{f.name}" for cls in SCHEMAS["hasher"].values() for f in fields(cls)] + own
                                + [f"attention.{f.name}" for cls in SCHEMAS["attention"].values() for f in fields(cls)]))
    return (schema.index(dotted), "") if dotted in schema else (len(schema), dotted)


def is_seed_key(dotted: str) -> bool:
    return dotted.rsplit(".", 1)[-1].endswith("seed")


def collect_runs(root: Path) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """(ok runs, failed runs): one row per results.json under root.

    attrs: `swept` (keys that vary and change something), `no_effect` (keys that vary and change
    nothing measured, e.g. a seed nothing reads), `knobs` (dotted key -> column), `values`
    ((section, key) -> column), `nonfinite` (run_dir -> flagged values).
    """
    root = Path(root)
    paths = sorted(root.rglob(RESULTS_FILE), key=lambda p: _natural_key(str(p.relative_to(root))))
    loaded = []
    for path in paths:
        record, error = _load(path)
        config = _section(record, "config") if record else {}
        flat = {k: v for k, v in flatten(config).items() if not k.startswith(HASH_EXCLUDED_KEYS)}
        loaded.append((str(path.parent.relative_to(root)) or ".", record, error, flat))
    # A key is swept when its value (missing counts as a value) differs between two readable runs whose
    # variant reads it: forest runs all at max_depth=16 beside lsh runs without one are no max_depth sweep.
    ctx = [(flat, flat.get("attention.name"), _uses_windows(record)) for _, record, _, flat in loaded if flat]
    keys = sorted({k for flat, _, _ in ctx for k in flat}, key=_natural_key)
    varied = [k for k in keys if len({json.dumps(flat.get(k), default=str) for flat, att, win in ctx
                                      if relevant(k, att, win)}) > 1]
    no_effect = _no_effect(varied, loaded)
    swept = [k for k in varied if k not in no_effect]
    knob_keys = [k for k in keys if k.startswith(("attention.", "hasher.")) and k not in ("attention.name", "hasher.name")
                 and any(relevant(k, att, win) for _, att, win in ctx)]
    knobs = _short_names(sorted(knob_keys, key=_knob_order))
    records = [r for _, r, _, _ in loaded if r]
    values = _value_columns(records, set(ID_COLUMNS) | set(knobs.values()))
    rows, flagged = [], {}
    for run_dir, record, error, flat in loaded:
        record = record or {}
        attention, windows = flat.get("attention.name"), _uses_windows(record)
        row: Dict[str, Any] = {"run_dir": run_dir, "status": record.get("status", "unreadable"), "error": error}
        row.update({c: flat.get(d) if relevant(d, attention, windows) else None for c, d in ID_COLUMNS.items()})
        row["model"] = _model_label(record, flat) if flat else None
        row["family"] = family_of(attention, row["hasher"]) if attention else None
        row.update({c: flat.get(d) if relevant(d, attention, windows) else None for d, c in knobs.items()})
        for key in swept + no_effect:  # other swept keys (dataset.*, eval.*, seed) get a column too
            if key not in ID_COLUMNS.values() and key not in knobs:
                row[key] = flat.get(key) if relevant(key, attention, windows) else None
        setting = [f"{c}={row[c]}" for c in ("model", "dataset", "seq_len") if row.get(c) is not None]
        extra = [f"{k}={flat.get(k)}" for k in swept if k.startswith(SETTING_PREFIXES)
                 and k not in ID_COLUMNS.values() and k not in SETTING_IGNORED]
        row["setting"], row["_setting_extra"] = ", ".join(setting + extra), ", ".join(extra)
        row["data"] = _data_label(flat, windows) if flat else None
        for (section, key), col in values.items():
            value = _section(record, section).get(key)
            row[col] = None if _is_nonfinite(value) else value
        bad = nonfinite_values(record) if record else []
        row["nonfinite"] = ", ".join(bad) or None
        if bad:
            flagged[run_dir] = bad
            log.warning("%s: non-finite values in results.json: %s", run_dir, ", ".join(bad))
        row["config_hash"] = record.get("config_hash")
        row["overrides"] = _section(record, "job").get("override_dirname")
        row["_group"] = json.dumps({k: v for k, v in flat.items() if not is_seed_key(k)}, sort_keys=True, default=str)
        row["_seeds"] = json.dumps({k: v for k, v in flat.items() if is_seed_key(k)}, sort_keys=True, default=str)
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame(columns=["run_dir", "status", "error", *ID_COLUMNS, "setting", "_group", "_seeds"])
    for col in df.columns:  # whole-number columns read as integers, not 8.0
        values_ = [v for v in df[col] if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if values_ and all(isinstance(v, int) and not isinstance(v, bool) for v in values_):
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    failed = df["error"].notna()
    ok, bad = df[~failed].reset_index(drop=True), df[failed].reset_index(drop=True)
    ok = ok.drop(columns=["error"])
    for frame in (ok, bad):
        frame.attrs.update(swept=swept, no_effect=no_effect, knobs=knobs, values=values, nonfinite=flagged)
    return ok, bad


# ----------------------------------------------------------------------------- seeds
def group_seeds(ok: pd.DataFrame) -> pd.DataFrame:
    """One row per set of runs that differ only in seed keys: means, plus `<m>_std/_min/_max` for every
    metric and cost ratio, `n_seeds` and `seeds` (the seed values seen). A group of several runs has no
    `_ci_` interval (its seed spread replaces it); a group of one keeps its own."""
    if ok.empty:
        return ok.assign(n_seeds=pd.Series(dtype="Int64"))
    values: Dict[Tuple[str, str], str] = ok.attrs.get("values", {})
    numeric = [c for (s, _), c in values.items() if c in ok and pd.api.types.is_numeric_dtype(ok[c])
               and not pd.api.types.is_bool_dtype(ok[c])]
    spread = [c for (s, k), c in values.items() if c in numeric and not re.search(r"_ci_(low|high)$", k)
              and (s == "metrics" or k.endswith("_ratio")) and not pd.api.types.is_integer_dtype(ok[c])]
    rows = []
    for _, group in ok.groupby("_group", sort=False, dropna=False):
        row = group.iloc[0].to_dict()
        for col in numeric:
            vals = pd.to_numeric(group[col], errors="coerce").astype(float)
            row[col] = vals.mean()
            if col in spread:
                row[f"{col}_std"] = vals.std(ddof=1) if vals.notna().sum() > 1 else float("nan")
                row[f"{col}_min"], row[f"{col}_max"] = vals.min(), vals.max()
        seeds = [json.loads(s) for s in group["_seeds"]]
        varying = sorted({k for s in seeds for k in s if len({json.dumps(x.get(k)) for x in seeds}) > 1})
        row["seeds"] = "; ".join(f"{k}={','.join(str(s.get(k)) for s in seeds)}" for k in varying) or None
        row["n_seeds"] = len(group)
        if len(group) > 1:
            row["run_dir"] = f"{row['run_dir']} (+{len(group) - 1})"
            # One run's interval says nothing about the mean of several: the seed spread replaces it.
            row.update({c: float("nan") for c in row if re.search(r"_ci_(low|high)$", str(c))})
        rows.append(row)
    out = pd.DataFrame(rows)
    out.attrs.update(ok.attrs)
    out.attrs["grouped"] = True
    return out


# ----------------------------------------------------------------------------- tables and report
METRIC_VALUES = {"perplexity": ["perplexity", "bits_per_byte"],
                 "synthetic_accuracy": ["accuracy", "choice_accuracy", "n_samples"]}
TAIL = ["comparison_ratio", "mac_ratio", "wall_ratio", "recall_at_k", "mass_recall", "tokens_per_s", "wall_s",
        "compile_s", "engine", "causal", "nonfinite", "pareto"]
HIDDEN = ("_group", "_seeds", "_setting_extra")
RUN_DIR_CHARS = 40  # Markdown view only; the CSV has the full path


def _ordered(df: pd.DataFrame) -> pd.DataFrame:
    head = ["run_dir", "status", "error", "family", *ID_COLUMNS, *df.attrs.get("knobs", {}).values(), "setting", "data",
            "n_seeds", "seeds"]
    values = list(df.attrs.get("values", {}).values())
    tail = ["nonfinite", "pareto", "config_hash", "overrides"]
    rest = [c for c in df.columns if c not in head + values + tail and c not in HIDDEN]
    return df[[c for c in dict.fromkeys(head + rest + values + tail) if c in df.columns]]


def _with_interval(table: pd.DataFrame, col: str) -> pd.Series:
    """`24.1 [22.3, 26.0]` from `<col>_ci_low/_ci_high`, or `24.1 ± 1.3` over seeds; the CSV keeps the parts."""
    def cell(row):
        value = row[col]
        if pd.isna(value):
            return None
        lo, hi, sd = row.get(f"{col}_ci_low"), row.get(f"{col}_ci_high"), row.get(f"{col}_std")
        if lo is not None and hi is not None and pd.notna(lo) and pd.notna(hi):
            return f"{_cell(value)} [{float(lo):.3g}, {float(hi):.3g}]"
        if sd is not None and pd.notna(sd):
            return f"{_cell(value)} ± {float(sd):.2g}"
        return value
    return table.apply(cell, axis=1)


def _compact(table: pd.DataFrame, metric: str, swept: List[str], y: Optional[str], x: str) -> pd.DataFrame:
    """The Markdown view: what identifies a run, what it scored (with its interval), what it cost."""
    knobs: Dict[str, str] = table.attrs.get("knobs", {})
    base = _field_names([AttentionConfig])  # shared fields (sinks, window) show only when swept
    own = {f"attention.{n}" for cls in SCHEMAS["attention"].values()
           for n in cls.__dict__.get("__annotations__", {}) if n not in base} | {"hasher.n_bits"}
    shown = {knobs.get(k, ID_COLUMNS.get(k, k)) for k in swept} | {knobs[k] for k in own if k in knobs}
    short_id = {d: c for c, d in ID_COLUMNS.items()}
    shown |= {short_id[k] for k in swept if k in short_id}
    cols = ["run_dir", "family", *[c for c in ID_COLUMNS if c in shown and c not in ("attention", "hasher")]]
    cols += [c for c in knobs.values() if c in shown]
    cols += [c for c in table.columns if c in shown and c not in cols and c not in ("attention", "hasher")]
    cols += ["n_seeds", "seeds"] if "n_seeds" in table else []
    metric_cols = [y] + METRIC_VALUES.get(metric, [c for keys in METRIC_VALUES.values() for c in keys])
    cols += metric_cols + [x] + TAIL
    view = table[[c for c in dict.fromkeys(cols) if c in table.columns]]
    for col in metric_cols + [x]:
        if col in view:
            view = view.assign(**{col: _with_interval(table, col)})
    view = view.dropna(axis=1, how="all")
    # Hydra names a job dir `<num>_<overrides>` (or, with job_dirname, just the overrides); the overrides
    # are the columns beside it, so keep the number, or the head and tail of a long name.
    run_dir = view["run_dir"].str.replace(r"(^|/)(\d+)_[^/]*=[^/]*", r"\1\2_…", regex=True)
    run_dir = run_dir.map(lambda d: d if len(d) <= RUN_DIR_CHARS else f"{d[:RUN_DIR_CHARS - 14]}…{d[-13:]}")
    return view.assign(run_dir=run_dir)


def _cell(value: Any) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.4g}"
    return str(value)


def to_markdown(df: pd.DataFrame) -> str:
    if df.empty:
        return "(none)"
    cells = df.astype(object).map(lambda v: _cell(v).replace("|", "\\|"))  # a bare | would split the cell
    if "pareto" in cells:
        cells["pareto"] = cells["pareto"].replace({"yes": "★", "no": ""})
    return cells.to_markdown(index=False, disable_numparse=True)  # keep our number formatting


def _sorted(df: pd.DataFrame, x: str) -> pd.DataFrame:
    """By the cost axis within each (metric, setting): rows of different settings never interleave."""
    order = {d: i for i, d in enumerate(sorted(df["run_dir"], key=_natural_key))}
    settings = {v: i for i, v in enumerate(sorted(df["setting"].fillna("").unique(), key=_natural_key))}
    keyed = df.assign(_k=df["run_dir"].map(order), _s=df["setting"].fillna("").map(settings))
    by = ["metric", "_s"] + ([x] if x in df else []) + ["_k"]  # natural order: seq_len=512 before seq_len=1024
    return keyed.sort_values(by, na_position="last", kind="stable").drop(columns=["_k", "_s"])


def _label_columns(df: pd.DataFrame, swept: List[str]) -> List[str]:
    """The swept knobs that tell points of one family apart (family and setting are shown otherwise)."""
    knobs = df.attrs.get("knobs", {})
    cols = [knobs.get(k, k) for k in swept if not k.startswith(SETTING_PREFIXES)]
    return [c for c in dict.fromkeys(cols) if c not in ("attention.name", "hasher.name", "attention", "hasher")]


def add_wall_ratio(ok: pd.DataFrame) -> pd.DataFrame:
    """wall_ratio = eval seconds / the full-attention run's eval seconds in the same (metric, setting)."""
    time_col = "eval_s" if "eval_s" in ok else "wall_s" if "wall_s" in ok else None
    if ok.empty or time_col is None:
        return ok
    out = ok.copy()
    seconds = pd.to_numeric(out[time_col], errors="coerce")
    full = out[out["attention"] == "full"].assign(_t=seconds).groupby(["metric", "setting"], dropna=False)["_t"].min()
    base = out.apply(lambda r: full.get((r["metric"], r["setting"]), float("nan")), axis=1)
    out["wall_ratio"] = seconds / pd.to_numeric(base, errors="coerce")
    out.attrs.update(ok.attrs)
    return out


def write_summary(root: Path, out_dir: Optional[Path] = None, plot: bool = True, metric: Optional[str] = None,
                  x: str = "comparison_ratio", group: bool = False) -> Dict[str, Path]:
    """Collect root and write summary.csv/.md, summary_<metric>.csv/.md, failed.csv and pareto_<metric>.{png,pdf,svg}.

    `metric`: a metric.name (only that table) or a value column from pareto.Y_COLUMNS (that table, with
    the column as the frontier's y). `x`: the cost axis of frontiers, sorting and plots. `group`: one
    row per set of runs differing only in seeds. Returns {file name: path} of everything written.
    """
    root = Path(root)
    out = Path(out_dir) if out_dir is not None else root
    ok, failed = collect_runs(root)
    if ok.empty and failed.empty:
        raise FileNotFoundError(f"no {RESULTS_FILE} under {root}: point the collector at a run or sweep directory")
    y_by_metric = dict(PRIMARY_Y)
    if metric in Y_COLUMNS:
        y_by_metric[Y_COLUMNS[metric][0]] = (metric, Y_COLUMNS[metric][1])
    only = Y_COLUMNS[metric][0] if metric in Y_COLUMNS else metric
    if only is not None:
        ok = ok[ok["metric"] == only]
    swept, attrs = ok.attrs.get("swept", []), dict(ok.attrs)
    if group:
        ok = group_seeds(ok)
        swept = [k for k in swept if not is_seed_key(k)]
    ok = add_wall_ratio(ok)
    if x not in ok and not ok.empty:
        raise ValueError(f"--x {x}: no run reports it (columns: {', '.join(c for c in X_AXES if c in ok) or 'none'})")
    ok = _sorted(add_pareto(ok, y_by_metric, x), x)
    ok.attrs.update(attrs)
    out.mkdir(parents=True, exist_ok=True)
    written: Dict[str, Path] = {}

    def save_csv(frame: pd.DataFrame, name: str) -> None:
        frame.to_csv(out / name, index=False)
        written[name] = out / name

    save_csv(_ordered(ok), "summary.csv")
    fail_cols = ["run_dir", "status", "error", "family", *ID_COLUMNS, *[s for s in swept if s in failed]]
    failed = failed[[c for c in dict.fromkeys(fail_cols) if c in failed.columns]]
    save_csv(failed, "failed.csv")
    no_effect = attrs.get("no_effect", [])
    lines = [f"# lsh-bitnet results: {root}", "",
             f"{len(ok)} {'seed groups of ' if group else ''}ok runs, {len(failed)} failed. "
             f"Swept: {', '.join(swept) or '(nothing)'}."
             + (f" Varied without changing any metric: {', '.join(no_effect)}." if no_effect else ""), "",
             f"Model: {'; '.join(str(m) for m in ok['model'].dropna().unique()) or '(none ok)'}.", ""]
    if attrs.get("nonfinite"):
        lines += [f"**Non-finite values** (NaN/inf) in {len(attrs['nonfinite'])} run(s); see the `nonfinite` "
                  f"column: " + "; ".join(f"{d}: {', '.join(v)}" for d, v in attrs["nonfinite"].items()), ""]
    for name in sorted(ok["metric"].dropna().unique()):
        table = ok[ok["metric"] == name].dropna(axis=1, how="all")
        table.attrs.update(attrs)
        save_csv(_ordered(table), f"summary_{name}.csv")
        y, minimize = y_by_metric.get(name, (None, True))
        md = to_markdown(_compact(table, name, swept, y, x))
        (out / f"summary_{name}.md").write_text(md + "\n")
        written[f"summary_{name}.md"] = out / f"summary_{name}.md"
        lines += [f"## {name} ({len(table)} rows, sorted by {x}; [95% interval] or ± spread over seeds; all columns"
                  f" in summary_{name}.csv; ★ = on its family's Pareto front"
                  + (f" in {y} {'lower' if minimize else 'higher'}-is-better and {x})" if y else ")"), "", md, ""]
        if plot and y in table:
            files = plot_pareto(table, name, y, minimize, out / f"pareto_{name}.png",
                                label_cols=_label_columns(table, swept), x=x)
            written.update({f.name: f for f in files})
            lines += [f"Plot: {', '.join(f.name for f in files)}", ""]
    lines += [f"## Failed runs ({len(failed)})", "",
              to_markdown(failed[["run_dir", "status", "error"]]) if len(failed) else "(none)", ""]
    (out / "summary.md").write_text("\n".join(lines))
    written["summary.md"] = out / "summary.md"
    return written


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="lsh-bitnet-collect", description=__doc__.strip().splitlines()[0])
    parser.add_argument("dir", type=Path, help="a run or sweep directory; searched recursively for results.json")
    parser.add_argument("--out", type=Path, default=None, help="where to write tables and plots (default: DIR)")
    parser.add_argument("--no-plot", action="store_true", help="skip the Pareto plots")
    allowed = sorted(set(PRIMARY_Y) | set(Y_COLUMNS))
    parser.add_argument("--metric", default=None, choices=allowed, metavar="NAME",
                        help=f"only this metric's table; a value column also sets the frontier's y "
                             f"({', '.join(allowed)})")
    parser.add_argument("--x", default="comparison_ratio", choices=list(X_AXES),
                        help="cost axis for frontiers and plots: q·k scores (comparison_ratio), multiply-adds "
                             "with hashing and selection (mac_ratio), or seconds vs full attention (wall_ratio)")
    parser.add_argument("--group-seeds", action="store_true",
                        help="one row per set of runs differing only in seeds (hasher.seed, seed, ...): mean, "
                             "std/min/max and n_seeds")
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.dir.is_dir():
        print(f"lsh-bitnet-collect: {args.dir} is not a directory", file=sys.stderr)
        return 2
    try:
        written = write_summary(args.dir, args.out, plot=not args.no_plot, metric=args.metric, x=args.x,
                                group=args.group_seeds)
    except (FileNotFoundError, ValueError) as exc:
        print(f"lsh-bitnet-collect: {exc}", file=sys.stderr)
        return 2
    try:
        print(written["summary.md"].read_text())
        print(f"wrote {len(written)} files to {written['summary.md'].parent}: {', '.join(sorted(written))}")
        sys.stdout.flush()
    except BrokenPipeError:  # `lsh-bitnet-collect DIR | head`: the files are written, the reader left
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
