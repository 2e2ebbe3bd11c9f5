"""Merge every results.json under a directory into per-metric tables, failed-run lists and Pareto plots.

    python -m lsh_bitnet.collect multirun/2025-01-01/12-00-00 [--out DIR] [--no-plot] [--metric NAME]
"""
import argparse
import json
import re
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pandas as pd

from lsh_bitnet.pareto import PRIMARY_Y, X, Y_COLUMNS, add_pareto, family_of, plot_pareto
from lsh_bitnet.results import HASH_EXCLUDED_KEYS, RESULTS_FILE

# Fixed columns: short name -> dotted config key. Where the variant ignores a key, the cell is left empty.
CONFIG_COLUMNS = {
    "model": "model.name", "attention": "attention.name", "hasher": "hasher.name", "n_bits": "hasher.n_bits",
    "n_tables": "attention.n_tables", "n_trees": "attention.n_trees", "max_depth": "attention.max_depth",
    "min_candidates": "attention.min_candidates", "k": "attention.k", "fraction": "attention.fraction",
    "sink_tokens": "attention.sink_tokens", "local_window": "attention.local_window",
    "include_self": "attention.include_self", "dataset": "dataset.name", "metric": "metric.name",
    "seq_len": "eval.seq_len",
}
SHORT_NAME = {dotted: short for short, dotted in CONFIG_COLUMNS.items()}
VALUE_COLUMNS = {  # section of results.json -> keys copied as columns
    "metrics": ["perplexity", "nll", "bits_per_byte", "tokens", "accuracy", "choice_accuracy", "n_samples"],
    "cost": ["comparison_ratio", "comparisons", "full_comparisons", "hash_ops", "is_oracle", "engine"],  # engine: flex branch
    "diagnostics": ["recall_at_k", "mass_recall"],
    "timing": ["wall_s", "load_s", "tokens_per_s", "compile_s"],  # compile_s: flex branch
    "memory": ["peak_rss_bytes"],
}
INT_COLUMNS = ["n_bits", "n_tables", "n_trees", "max_depth", "min_candidates", "k", "sink_tokens", "local_window",
               "seq_len", "tokens", "n_samples", "comparisons", "full_comparisons", "hash_ops", "peak_rss_bytes",
               "recall_k"]
HASHED = ("lsh", "lsh_forest")
# Keys only some variants read (SPEC section 3): elsewhere their (default) value would mislead.
ONLY_FOR = {"hasher.": HASHED, "attention.n_tables": ("lsh",), "attention.n_trees": ("lsh_forest",),
            "attention.max_depth": ("lsh_forest",), "attention.min_candidates": ("lsh_forest",),
            "attention.k": ("oracle_topk",), "attention.fraction": ("oracle_topk",)}
NOT_FOR = {"hasher.n_bits": ("lsh_forest",),  # a forest tree hashes attention.max_depth bits instead
           "attention.": ("full",)}  # full attention reads no attention knob (diagnostics aside)
# Swept keys that define *what* is measured: runs differing here are never on one frontier.
SETTING_PREFIXES = ("model.", "dataset.", "eval.", "metric.")
SETTING_IGNORED = ("eval.batch_size", "model.device")  # change speed, not the numbers


def flatten(node: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(node, dict):
        out: Dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: json.dumps(node) if isinstance(node, list) else node}  # lists are not hashable


def relevant(dotted: str, attention: Optional[str]) -> bool:
    if dotted.startswith("attention.diagnostics") or dotted == "attention.name":
        return True
    for prefix, variants in ONLY_FOR.items():
        if dotted.startswith(prefix) and attention not in variants:
            return False
    return not any(dotted.startswith(p) and attention in v for p, v in NOT_FOR.items())


def _one_line(text: Any, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _error_line(record: Dict[str, Any]) -> str:
    err = record.get("error")
    if isinstance(err, dict):
        msg = str(err.get("message") or "").strip().splitlines()
        return _one_line(err.get("summary") or f"{err.get('type', 'Error')}: {msg[0] if msg else ''}")
    return _one_line(err) if err else "status failed, no error recorded"


def _missing_fields(record: Dict[str, Any]) -> List[str]:
    """What an `ok` run must hold for its table row; a row without these would be silently wrong."""
    flat = flatten(_section(record, "config"))
    need = [f"config.{k}" for k in ("attention.name", "metric.name") if flat.get(k) is None]
    metric = flat.get("metric.name")
    for section, key in [("cost", X)] + ([("metrics", PRIMARY_Y[metric][0])] if metric in PRIMARY_Y else []):
        if _section(record, section).get(key) is None:
            need.append(f"{section}.{key}")
    return need


def _load(path: Path) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """(record, None) for a usable ok run, else (record or None, one-line reason it counts as failed)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, _one_line(f"unreadable results.json: {type(exc).__name__}: {exc}")
    if not isinstance(record, dict):
        return None, f"unreadable results.json: top level is {type(record).__name__}, not an object"
    status = record.get("status")
    if status == "failed":
        return record, _error_line(record)
    if status == "running":
        started = (record.get("provenance") or {}).get("started_at")
        return record, f"status is 'running' (started {started}): the job died before finishing, or still runs"
    if status != "ok":
        return record, f"unknown status {status!r} (expected ok | failed | running)"
    missing = _missing_fields(record)
    return (record, f"status ok but missing fields: {', '.join(missing)}") if missing else (record, None)


def _natural_key(text: str) -> List[Any]:
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", text)]  # 2_x before 10_x


def _section(record: Dict[str, Any], name: str) -> Dict[str, Any]:
    return record[name] if isinstance(record.get(name), dict) else {}  # null in failed / running runs


def _row(record: Optional[Dict[str, Any]], flat: Dict[str, Any]) -> Dict[str, Any]:
    attention = flat.get("attention.name")
    row: Dict[str, Any] = {}
    for short, dotted in CONFIG_COLUMNS.items():
        row[short] = flat.get(dotted) if relevant(dotted, attention) else None
    if flat.get("model.name") == "hf":  # the option name says nothing; the checkpoint does
        row["model"] = flat.get("model.name_or_path") or "hf"
    record = record or {}
    for section, keys in VALUE_COLUMNS.items():
        row.update({key: _section(record, section).get(key) for key in keys})
    row["recall_k"] = _section(record, "diagnostics").get("k")
    row["family"] = family_of(attention, row["hasher"]) if attention else None
    row["config_hash"] = record.get("config_hash")
    row["overrides"] = _section(record, "job").get("override_dirname")
    return row


def collect_runs(root: Path) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """(ok runs, failed runs): one row per results.json under root; `ok.attrs["swept"]` lists swept keys."""
    root = Path(root)
    paths = sorted(root.rglob(RESULTS_FILE), key=lambda p: _natural_key(str(p.relative_to(root))))
    loaded = []
    for path in paths:
        record, error = _load(path)
        config = _section(record, "config") if record else {}
        flat = {k: v for k, v in flatten(config).items() if not k.startswith(HASH_EXCLUDED_KEYS)}
        run_dir = str(path.parent.relative_to(root)) or "."
        loaded.append((run_dir, record, error, flat))
    # A key is swept when its value (missing counts as a value) differs between two readable runs whose
    # variant reads it: forest runs all at max_depth=16 beside lsh runs without one are no max_depth sweep.
    flats = [flat for _, _, _, flat in loaded if flat]
    keys = sorted({k for flat in flats for k in flat}, key=_natural_key)
    swept = [k for k in keys if len({json.dumps(flat.get(k), default=str) for flat in flats
                                     if relevant(k, flat.get("attention.name"))}) > 1]
    rows = []
    for run_dir, record, error, flat in loaded:
        status = (record or {}).get("status") if record else "unreadable"
        row = {"run_dir": run_dir, "status": status, "error": error, **_row(record, flat)}
        attention = flat.get("attention.name")
        for key in swept:
            if key not in SHORT_NAME:  # fixed columns already show it
                row[key] = flat.get(key) if relevant(key, attention) else None
        setting = [f"{c}={row[c]}" for c in ("model", "dataset", "seq_len") if row.get(c) is not None]
        setting += [f"{k}={flat.get(k)}" for k in swept if k.startswith(SETTING_PREFIXES)
                    and k not in SHORT_NAME and k not in SETTING_IGNORED]
        row["setting"] = ", ".join(setting)
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame(columns=["run_dir", "status", "error", *CONFIG_COLUMNS, "setting"])
    for col in INT_COLUMNS:
        if col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    failed = df["error"].notna()
    ok, bad = df[~failed].reset_index(drop=True), df[failed].reset_index(drop=True)
    ok = ok.drop(columns=["error"])
    for frame in (ok, bad):
        frame.attrs["swept"] = swept
    return ok, bad


# ----------------------------------------------------------------------------- tables and report
KNOBS = ["n_bits", "n_tables", "n_trees", "max_depth", "min_candidates", "k", "fraction"]  # define a variant
METRIC_VALUES = {"perplexity": ["perplexity", "bits_per_byte"],
                 "synthetic_accuracy": ["accuracy", "choice_accuracy", "n_samples"]}
TAIL = [X, "recall_at_k", "mass_recall", "tokens_per_s", "wall_s", "pareto"]


def _ordered(df: pd.DataFrame) -> pd.DataFrame:
    head = ["run_dir", "status", "error", "family", *CONFIG_COLUMNS, "setting"]
    values = [k for keys in VALUE_COLUMNS.values() for k in keys] + ["recall_k", "pareto", "config_hash", "overrides"]
    swept = [c for c in df.columns if c not in head and c not in values]
    return df[[c for c in head + swept + values if c in df.columns]]


def _compact(table: pd.DataFrame, metric: str, swept: List[str], y: Optional[str]) -> pd.DataFrame:
    """The Markdown view: what identifies a run, what it scored, what it cost. The CSV has the rest."""
    shown = {SHORT_NAME.get(k, k) for k in swept}
    cols = ["run_dir", "family"]
    cols += [c for c in CONFIG_COLUMNS if c in KNOBS or (c in shown and c not in ("attention", "hasher"))]
    cols += [c for c in table.columns if c in shown and c not in CONFIG_COLUMNS]
    cols += [y] + METRIC_VALUES.get(metric, [c for keys in METRIC_VALUES.values() for c in keys]) + TAIL
    view = table[[c for c in dict.fromkeys(cols) if c in table.columns]].dropna(axis=1, how="all")
    # Hydra names a job dir `<num>_<overrides>`; the overrides are the columns beside it, so keep the number.
    return view.assign(run_dir=view["run_dir"].str.replace(r"(^|/)(\d+)_[^/]*=[^/]*", r"\1\2_…", regex=True))


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


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    """By comparison_ratio within each (metric, setting): rows of different settings never interleave."""
    order = {d: i for i, d in enumerate(sorted(df["run_dir"], key=_natural_key))}
    settings = {v: i for i, v in enumerate(sorted(df["setting"].fillna("").unique(), key=_natural_key))}
    keyed = df.assign(_k=df["run_dir"].map(order), _s=df["setting"].fillna("").map(settings))
    by = ["metric", "_s", X, "_k"]  # natural order: seq_len=512 before seq_len=1024
    return keyed.sort_values(by, na_position="last", kind="stable").drop(columns=["_k", "_s"])


def _label_columns(swept: List[str]) -> List[str]:
    """The swept knobs that tell points of one family apart (family and setting are shown otherwise)."""
    cols = [SHORT_NAME.get(k, k) for k in swept if not k.startswith(SETTING_PREFIXES)]
    cols = [c for c in CONFIG_COLUMNS if c in cols] + [c for c in cols if c not in CONFIG_COLUMNS]  # n_bits first
    return [c for c in cols if c not in ("attention", "hasher")]


def write_summary(root: Path, out_dir: Optional[Path] = None, plot: bool = True,
                  metric: Optional[str] = None) -> Dict[str, Path]:
    """Collect root and write summary.csv/.md, summary_<metric>.csv/.md, failed.csv, pareto_<metric>.png.

    `metric`: a metric.name (only that table) or a value column from pareto.Y_COLUMNS (that table, with
    the column as the frontier's y). Returns {file name: path} of everything written.
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
    swept = ok.attrs.get("swept", [])
    ok = _sorted(add_pareto(ok, y_by_metric))
    out.mkdir(parents=True, exist_ok=True)
    written: Dict[str, Path] = {}

    def save_csv(frame: pd.DataFrame, name: str) -> None:
        frame.to_csv(out / name, index=False)
        written[name] = out / name

    save_csv(_ordered(ok), "summary.csv")
    fail_cols = ["run_dir", "status", "error", "family", *CONFIG_COLUMNS, *[s for s in swept if s in failed]]
    failed = failed[[c for c in dict.fromkeys(fail_cols) if c in failed.columns]]
    save_csv(failed, "failed.csv")
    lines = [f"# lsh-bitnet results: {root}", "",
             f"{len(ok)} ok runs, {len(failed)} failed. Swept: {', '.join(swept) or '(nothing)'}.", ""]
    for name in sorted(ok["metric"].dropna().unique()):
        table = ok[ok["metric"] == name].dropna(axis=1, how="all")
        save_csv(_ordered(table), f"summary_{name}.csv")
        y, minimize = y_by_metric.get(name, (None, True))
        md = to_markdown(_compact(table, name, swept, y))
        (out / f"summary_{name}.md").write_text(md + "\n")
        written[f"summary_{name}.md"] = out / f"summary_{name}.md"
        lines += [f"## {name} ({len(table)} runs, sorted by {X}; full paths and all columns in summary_{name}.csv;"
                  f" ★ = on its family's Pareto front"
                  + (f" in {y} {'lower' if minimize else 'higher'}-is-better and {X})" if y else ")"), "", md, ""]
        if plot and y in table:
            png = plot_pareto(table, name, y, minimize, out / f"pareto_{name}.png",
                              label_cols=_label_columns(swept))
            written[png.name] = png
            lines += [f"Plot: {png.name}", ""]
    lines += [f"## Failed runs ({len(failed)})", "",
              to_markdown(failed[["run_dir", "status", "error"]]) if len(failed) else "(none)", ""]
    (out / "summary.md").write_text("\n".join(lines))
    written["summary.md"] = out / "summary.md"
    return written


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="lsh-bitnet-collect", description=__doc__.strip().splitlines()[0])
    parser.add_argument("dir", type=Path, help="a run or sweep directory; searched recursively for results.json")
    parser.add_argument("--out", type=Path, default=None, help="where to write tables and plots (default: DIR)")
    parser.add_argument("--no-plot", action="store_true", help="skip the Pareto PNGs")
    allowed = sorted(set(PRIMARY_Y) | set(Y_COLUMNS))
    parser.add_argument("--metric", default=None, choices=allowed, metavar="NAME",
                        help=f"only this metric's table; a value column also sets the frontier's y "
                             f"({', '.join(allowed)})")
    args = parser.parse_args(argv)
    if not args.dir.is_dir():
        print(f"lsh-bitnet-collect: {args.dir} is not a directory", file=sys.stderr)
        return 2
    try:
        written = write_summary(args.dir, args.out, plot=not args.no_plot, metric=args.metric)
    except FileNotFoundError as exc:
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
