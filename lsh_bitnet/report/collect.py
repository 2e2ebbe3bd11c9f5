"""Merge every results.json under a directory into per-metric tables, failed-run lists and Pareto plots.

    python -m lsh_bitnet.report.collect multirun/2025-01-01/12-00-00 [--out DIR] [--no-plot] [--metric NAME]
                                 [--x comparison_ratio|mac_ratio|wall_ratio] [--group-seeds]
                                 [--pool-ranges] [--paired-with FAMILY_OR_RUN_DIR] [--gap-closed [--gap-tolerance F]]

Rows and columns come from lsh_bitnet.report.runs; this module aggregates seeds, writes the tables and plots.
"""
import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pandas as pd

from lsh_bitnet.config import SCHEMAS, AttentionConfig
from lsh_bitnet.report.brief import brief_lines
from lsh_bitnet.report.gap import DEFAULT_TOLERANCE, GAP_COLUMNS, add_gap_closed, gap_lines
from lsh_bitnet.report.items import pool_ranges
from lsh_bitnet.report.markdown import pipe_table
from lsh_bitnet.report.paired import PAIRED_COLUMNS, add_paired
from lsh_bitnet.report.pareto import X_AXES, add_pareto, is_full, plot_pareto, primary_y_by_metric, y_columns
from lsh_bitnet.run.results import RESULTS_FILE
from lsh_bitnet.tasks.base import find_task, tasks
from lsh_bitnet.report.runs import (ID_COLUMNS, SETTING_PREFIXES, field_names, natural_key, collect_runs,  # noqa: F401
                             flatten, is_seed_key, keys_read, nonfinite_values, relevant)

# ----------------------------------------------------------------------------- seeds
SEED_SPREAD = ("paired_ratio", "paired_delta", "gap_closed")  # the per-seed figures whose spread a reader wants


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
    # Per-seed figures of --paired-with and --gap-closed: averaged and spread like a metric.
    derived = [c for c in PAIRED_COLUMNS + GAP_COLUMNS if c in ok and pd.api.types.is_numeric_dtype(ok[c])]
    numeric += derived
    spread += [c for c in derived if c in SEED_SPREAD]
    rows = []
    for _, group in ok.groupby("_group", sort=False, dropna=False):
        row = group.iloc[0].to_dict()
        for col in numeric:
            vals = pd.to_numeric(group[col], errors="coerce").astype(float)
            # A per-seed figure missing for one seed (no shared item, no reference in tolerance) leaves the
            # mean empty rather than quietly averaging the other seeds.
            row[col] = vals.mean(skipna=col not in derived)
            if col in spread:
                row[f"{col}_std"] = vals.std(ddof=1) if vals.notna().sum() > 1 else float("nan")
                row[f"{col}_min"], row[f"{col}_max"] = vals.min(), vals.max()
        seeds = [json.loads(s) for s in group["_seeds"]]
        # Each seed key once (it was once per run and key: 1,250 seeds of 8 configs made 37 M json.dumps calls).
        keys = {k for s in seeds for k in s}
        varying = sorted(k for k in keys if len({json.dumps(x.get(k)) for x in seeds}) > 1)
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
TAIL = ["comparison_ratio", "mac_ratio", "selection_ops", "hash_ops", "wall_ratio", "recall_at_k", "mass_recall", "tokens_per_s", "wall_s",
        "compile_s", "engine", "causal", "nonfinite", "pareto"]
# Beside the metric: the run against its baseline on the items both scored (--paired-with), and its share of
# the window-to-oracle gap (--gap-closed).
PAIRED_VIEW = ["paired_ratio", "paired_delta", "paired_gains", "paired_losses", "paired_n", "gap_closed"]
HIDDEN = ("_group", "_seeds", "_setting_extra", "_items")
RUN_DIR_CHARS = 40  # Markdown view only; the CSV has the full path
BRIEF_FILE = "brief.md"  # the short table a sweep prints at its end


def metric_values(metric: Any) -> List[str]:
    """The metrics fields the Markdown table shows for runs of `metric`: its task's (Task.values); for a task not
    registered here, every registered task's."""
    task = find_task(metric)
    if task is not None:
        return list(task.values)
    return list(dict.fromkeys(c for t in tasks() for c in t.values))


def _ordered(df: pd.DataFrame) -> pd.DataFrame:
    head = ["run_dir", "status", "error", "family", *ID_COLUMNS, *df.attrs.get("knobs", {}).values(), "setting", "data",
            "n_seeds", "seeds"]
    values = list(df.attrs.get("values", {}).values())
    tail = ["nonfinite", "pareto", "config_hash", "overrides"]
    rest = [c for c in df.columns if c not in head + values + tail and c not in HIDDEN]
    return df[[c for c in dict.fromkeys(head + rest + values + tail) if c in df.columns]]


def _with_interval(table: pd.DataFrame, col: str) -> pd.Series:
    """`24.1 [22.3, 26.0]` from `<col>_ci_low/_ci_high`, or `24.1 ± 1.3` over seeds; the CSV keeps the parts."""
    def cell(value, lo, hi, sd):
        if pd.isna(value):
            return None
        if lo is not None and hi is not None and pd.notna(lo) and pd.notna(hi):
            return f"{_cell(value)} [{float(lo):.3g}, {float(hi):.3g}]"
        if sd is not None and pd.notna(sd):
            return f"{_cell(value)} ± {float(sd):.2g}"
        return value

    if table.empty:
        return table[col]
    # Column by column, not table.apply(axis=1): a row Series per run (and a deep copy of the frame's attrs
    # for each) took seconds at 10,000 runs.
    parts = [table[c].tolist() if c in table else [None] * len(table)
             for c in (col, f"{col}_ci_low", f"{col}_ci_high", f"{col}_std")]
    return pd.Series([cell(*values) for values in zip(*parts)], index=table.index)


def _compact(table: pd.DataFrame, metric: str, swept: List[str], y: Optional[str], x: str) -> pd.DataFrame:
    """The Markdown view: what identifies a run, what it scored (with its interval), what it cost."""
    knobs: Dict[str, str] = table.attrs.get("knobs", {})
    base = field_names([AttentionConfig])  # shared fields (sinks, window) show only when swept
    own = {f"attention.{n}" for cls in SCHEMAS["attention"].values()
           for n in cls.__dict__.get("__annotations__", {}) if n not in base} | {"hasher.n_bits"}
    shown = {knobs.get(k, ID_COLUMNS.get(k, k)) for k in swept} | {knobs[k] for k in own if k in knobs}
    short_id = {d: c for c, d in ID_COLUMNS.items()}
    shown |= {short_id[k] for k in swept if k in short_id}
    cols = ["run_dir", "family", *[c for c in ID_COLUMNS if c in shown and c not in ("attention", "hasher")]]
    cols += [c for c in knobs.values() if c in shown]
    cols += [c for c in table.columns if c in shown and c not in cols and c not in ("attention", "hasher")]
    cols += ["n_seeds", "seeds"] if "n_seeds" in table else []
    cols += ["pooled_runs", "pooled_partial", "items"] if "pooled_runs" in table else []
    metric_cols = [y] + metric_values(metric)
    cols += metric_cols + PAIRED_VIEW + [x] + TAIL
    view = table[[c for c in dict.fromkeys(cols) if c in table.columns]]
    for col in metric_cols + ["paired_ratio", "paired_delta", x]:
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
    return pipe_table(cells)  # our number formatting kept (tabulate's disable_numparse layout)


def _sorted(df: pd.DataFrame, x: str) -> pd.DataFrame:
    """By the cost axis within each (metric, setting): rows of different settings never interleave."""
    order = {d: i for i, d in enumerate(sorted(df["run_dir"], key=natural_key))}
    settings = {v: i for i, v in enumerate(sorted(df["setting"].fillna("").unique(), key=natural_key))}
    keyed = df.assign(_k=df["run_dir"].map(order), _s=df["setting"].fillna("").map(settings))
    by = ["metric", "_s"] + ([x] if x in df else []) + ["_k"]  # natural order: seq_len=512 before seq_len=1024
    return keyed.sort_values(by, na_position="last", kind="stable").drop(columns=["_k", "_s"])


def _label_columns(df: pd.DataFrame, swept: List[str]) -> List[str]:
    """The swept knobs that tell points of one family apart (family and setting are shown otherwise), in
    the knobs' own order (hash bits, tables, the rule's fields, then sinks and window), not alphabetical."""
    knobs = df.attrs.get("knobs", {})
    order = {k: i for i, k in enumerate(knobs)}  # runs.collect_runs orders the knobs
    keys = sorted((k for k in swept if not k.startswith(SETTING_PREFIXES)), key=lambda k: (order.get(k, len(order)), k))
    cols = [knobs.get(k, k) for k in keys]
    return [c for c in dict.fromkeys(cols) if c not in ("attention.name", "hasher.name", "attention", "hasher")]


def add_wall_ratio(ok: pd.DataFrame) -> pd.DataFrame:
    """wall_ratio = eval seconds / the full-attention run's eval seconds in the same (metric, setting).

    Flex compilation (compile_s) is taken out of both: it is paid once per graph and process, so it would
    make a short run look slower than the same rule over a long one."""
    time_col = "eval_s" if "eval_s" in ok else "wall_s" if "wall_s" in ok else None
    if ok.empty or time_col is None:
        return ok
    out = ok.copy()
    seconds = pd.to_numeric(out[time_col], errors="coerce")
    if "compile_s" in out:
        seconds = seconds - pd.to_numeric(out["compile_s"], errors="coerce").fillna(0.0)
    full = out[out["attention"].map(is_full).astype(bool)].assign(_t=seconds)
    full = full.groupby(["metric", "setting"], dropna=False)["_t"].min()
    base = pd.Series([full.get((m, s), float("nan")) for m, s in zip(out["metric"], out["setting"])], index=out.index)
    out["wall_ratio"] = seconds / pd.to_numeric(base, errors="coerce")
    out.attrs.update(ok.attrs)
    return out


def write_summary(root: Path, out_dir: Optional[Path] = None, plot: bool = True, metric: Optional[str] = None,
                  x: str = "comparison_ratio", group: bool = False, paired_with: Optional[str] = None,
                  pool: bool = False, gap: bool = False, gap_tolerance: float = DEFAULT_TOLERANCE
                  ) -> Dict[str, Path]:
    """Collect root and write summary.csv/.md, summary_<metric>.csv/.md, failed.csv and pareto_<metric>.{png,pdf,svg}.

    `metric`: a metric.name (only that table) or a value column from pareto.y_columns() (that table, with
    the column as the frontier's y). `x`: the cost axis of frontiers, sorting and plots. `group`: one
    row per set of runs differing only in seeds. `paired_with`: a family or run directory; each run gets
    lsh_bitnet.report.paired's columns against it. `pool`: one row per set of runs differing only in the item
    range (lsh_bitnet.report.items.pool_ranges). `gap`: each run's share of the window-to-oracle gap at its
    ratio (lsh_bitnet.report.gap). Returns {file name: path} of everything written.
    """
    if gap and not 0 < gap_tolerance < 1:  # before reading any run
        raise ValueError(f"--gap-tolerance {gap_tolerance}: give a relative tolerance in (0, 1), e.g. 0.05")
    root = Path(root)
    out = Path(out_dir) if out_dir is not None else root
    ok, failed = collect_runs(root)
    if ok.empty and failed.empty:
        raise FileNotFoundError(f"no {RESULTS_FILE} under {root}: point the collector at a run or sweep directory")
    # Jobs running now (their lock is held) are neither ok nor failed yet: listed apart.
    now = failed["running"].fillna(False).astype(bool) if "running" in failed else pd.Series(False, index=failed.index)
    running, failed = failed[now], failed[~now]
    y_by_metric, by_column = primary_y_by_metric(), y_columns()
    if metric in by_column:
        y_by_metric[by_column[metric][0]] = (metric, by_column[metric][1])
    only = by_column[metric][0] if metric in by_column else metric
    if only is not None:
        ok = ok[ok["metric"] == only]
    if pool:  # interrupted runs' finished items pool too; they stay in the failed list
        stopped = failed[(failed["status"] == "interrupted") & ((failed["metric"] == only) if only else True)]
        ok = pool_ranges(ok, root, interrupted=stopped)
    swept, attrs = ok.attrs.get("swept", []), dict(ok.attrs)
    # Item by item, each seed's run on its own: with --group-seeds these become a figure per seed, then a
    # mean and spread over seeds, as every other metric.
    if paired_with is not None:
        ok = add_paired(ok, root, paired_with)
    if gap:
        ok = add_gap_closed(ok, root, gap_tolerance)
    if group:
        ok = group_seeds(ok)
        swept = [k for k in swept if not is_seed_key(k)]
    ok = add_wall_ratio(ok)
    if not ok.empty and (x not in ok or pd.to_numeric(ok[x], errors="coerce").isna().all()):
        why = " (wall_ratio divides by a full-attention run of the same setting)" if x == "wall_ratio" else ""
        raise ValueError(f"--x {x}: no run reports it{why}; available: "
                         f"{', '.join(c for c in X_AXES if c in ok and ok[c].notna().any()) or 'none'}")
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
             f"{len(ok)} {'seed groups of ' if group else ''}ok runs, {len(failed)} failed"
             + (f", {len(running)} running now (not counted as failed; collect again when they end)" if len(running)
                else "") + ". "
             f"Swept: {', '.join(swept) or '(nothing)'}."
             + (f" Varied without changing any metric: {', '.join(no_effect)}." if no_effect else ""), "",
             *(["Runs of one config over different item ranges pooled (`--pool-ranges`): `items` lists the "
                "windows or samples each row scored, `pooled_runs` how many runs they came from, `pooled_partial` "
                "how many of those were interrupted (their finished items count; they stay in the failed list).", ""]
               if pool else []),
             *([f"Paired with `{paired_with}`: `paired_ratio` (perplexity, run / baseline) or `paired_delta` "
                f"(accuracy, run - baseline, with `paired_gains` / `paired_losses`: samples only the run / only the "
                f"baseline answered) over the `paired_n` items each run shares with its {paired_with} run "
                f"(`paired_with` in the CSV)."
                + (" With seeds grouped: each seed's run is paired on its own, then averaged (`± std` over seeds)."
                   if group else ""), ""] if paired_with is not None else []),
             *(gap_lines(gap_tolerance) if gap else []),
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
    # What a sweep prints at its end: a short line per run (lsh_bitnet.report.brief); the tables above keep all.
    brief = brief_lines(ok, y_by_metric, _label_columns(ok, swept), x) if not ok.empty else []
    (out / BRIEF_FILE).write_text("\n".join(brief) + "\n")
    written[BRIEF_FILE] = out / BRIEF_FILE
    lines += [f"## Failed runs ({len(failed)})", "",
              to_markdown(failed[["run_dir", "status", "error"]]) if len(failed) else "(none)", ""]
    if len(running):
        lines += [f"## Running now ({len(running)})", "", to_markdown(running[["run_dir", "error"]]), ""]
    (out / "summary.md").write_text("\n".join(lines))
    written["summary.md"] = out / "summary.md"
    return written


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="lsh-bitnet-collect", description=__doc__.strip().splitlines()[0])
    parser.add_argument("dir", type=Path, help="a run or sweep directory; searched recursively for results.json")
    parser.add_argument("--out", type=Path, default=None, help="where to write tables and plots (default: DIR)")
    parser.add_argument("--no-plot", action="store_true", help="skip the Pareto plots")
    allowed = sorted(set(primary_y_by_metric()) | set(y_columns()))
    parser.add_argument("--metric", default=None, choices=allowed, metavar="NAME",
                        help=f"only this metric's table; a value column also sets the frontier's y "
                             f"({', '.join(allowed)})")
    parser.add_argument("--x", default="comparison_ratio", choices=list(X_AXES),
                        help="cost axis for frontiers and plots: q·k scores (comparison_ratio), multiply-adds "
                             "with hashing and selection (mac_ratio), or seconds vs full attention (wall_ratio)")
    parser.add_argument("--group-seeds", action="store_true",
                        help="one row per set of runs differing only in seeds (hasher.seed, seed, ...): mean, "
                             "std/min/max and n_seeds; with --paired-with / --gap-closed, of the per-seed figures")
    parser.add_argument("--pool-ranges", action="store_true",
                        help="one row per set of runs differing only in the items they scored (eval.batch_offset, "
                             "eval.max_batches, dataset.n_samples): metrics and intervals over the pooled items")
    parser.add_argument("--paired-with", default=None, metavar="FAMILY_OR_RUN_DIR",
                        help="compare every run with a baseline run (a family such as full, window, oracle_topk, "
                             "or one run directory) on the windows or samples both scored: paired perplexity ratio "
                             "or accuracy difference with a 95%% interval")
    parser.add_argument("--gap-closed", action="store_true",
                        help="each run's share of the gap between a window and an oracle_topk run of the same "
                             "setting at its comparison ratio: 0 = the window, 1 = the oracle")
    parser.add_argument("--gap-tolerance", type=float, default=DEFAULT_TOLERANCE, metavar="F",
                        help=f"how near (relative) a reference's comparison ratio must be (default {DEFAULT_TOLERANCE})")
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.dir.is_dir():
        print(f"lsh-bitnet-collect: {args.dir} is not a directory", file=sys.stderr)
        return 2
    try:
        written = write_summary(args.dir, args.out, plot=not args.no_plot, metric=args.metric, x=args.x,
                                group=args.group_seeds, paired_with=args.paired_with, pool=args.pool_ranges,
                                gap=args.gap_closed, gap_tolerance=args.gap_tolerance)
    except (FileNotFoundError, ValueError) as exc:
        print(f"lsh-bitnet-collect: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a read-only run dir (another user's, a read-only mount), a full disk
        where = exc.filename or (args.out or args.dir)
        print(f"lsh-bitnet-collect: cannot write {where} ({exc.strerror or exc}): pass --out DIR to write the "
              f"tables and plots to a directory you can write", file=sys.stderr)
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
