"""Read every results.json under a directory into rows: which config keys each variant reads
(derived from the schema dataclasses in lsh_bitnet.config, so a new variant or field needs no edit
here), every scalar value the runs report, which keys were swept, and which values are not finite.
`lsh_bitnet.report.collect` turns the rows into tables and plots.
"""
import json
import logging
import math
import re
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import pandas as pd

from lsh_bitnet.config import SCHEMAS
from lsh_bitnet.console import one_line
from lsh_bitnet.registry import RULES
from lsh_bitnet.run.jobs import LOCK_FILE, job_busy
from lsh_bitnet.report.pareto import family_of, primary_y
from lsh_bitnet.run.results import HASH_EXCLUDED_KEYS, RESULTS_FILE
from lsh_bitnet.tasks.base import find_task

log = logging.getLogger("lsh_bitnet.report.collect")  # what the collector CLI reports

# Identity columns: short name -> dotted config key (what was run, on what). Knob columns come from the schemas.
ID_COLUMNS = {"model": "model.name", "attention": "attention.name", "hasher": "hasher.name",
              "dataset": "dataset.name", "metric": "metric.name", "seq_len": "eval.seq_len"}
# results.json sections whose scalar values become columns, in this order.
VALUE_SECTIONS = ("metrics", "cost", "diagnostics", "timing", "memory")
# Swept keys that define *what* is measured: runs differing here are never on one frontier.
# attention.apply_to is the protocol (all sparse, or dense prefill / sparse decode): a setting, not a knob.
SETTING_PREFIXES = ("model.", "dataset.", "eval.", "metric.", "attention.apply_to")
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


def field_names(classes) -> Set[str]:
    return {f.name for cls in classes for f in fields(cls)}


def keys_read(variant: Any) -> Optional[Set[str]]:
    """The dotted attention./hasher. keys `variant` reads, derived from its schema; None = unknown variant.

    - attention: the fields of the variant's dataclass; a variant that declares nothing of its own
      (full) reads none of the shared sparse-attention fields, only the diagnostics (a measurement).
    - hasher: read by the hashed rules (Rule.hashed); a rule with its own code width (Rule.bits_key, the
      forest's attention.max_depth) does not read hasher.n_bits. A rule not registered here (a plug-in not
      installed) reads no hasher key as far as we can tell.
    """
    cls = _variant_schemas().get(variant)
    if cls is None:
        return None
    names = field_names([cls])
    if not set(cls.__dict__.get("__annotations__", {})) - {"name"}:
        names = {"name"} | {n for n in names if n.startswith("diagnostics")}
    keys = {f"attention.{n}" for n in names}
    rule = RULES.find(variant)
    if rule is not None and rule.hashed:
        hasher = {f"hasher.{n}" for n in field_names(SCHEMAS["hasher"].values())}
        keys |= hasher - ({"hasher.n_bits"} if getattr(rule, "bits_key", None) else set())
    return keys


def _declared() -> Set[str]:
    return ({f"attention.{n}" for n in field_names(SCHEMAS["attention"].values())}
            | {f"hasher.{n}" for n in field_names(SCHEMAS["hasher"].values())})


def relevant(dotted: str, attention: Optional[str], windows: bool = True) -> bool:
    """Does a run of this variant read `dotted`? `windows`: the metric cuts the text into eval.seq_len windows."""
    return _relevant(dotted, attention, windows, keys_read, _declared)


def _relevant(dotted: str, attention: Any, windows: bool, read_of: Callable[[Any], Optional[Set[str]]],
              declared: Callable[[], Set[str]]) -> bool:
    if dotted == "eval.seq_len":
        return windows
    if dotted == "attention.apply_to":  # the protocol: full attention's row of each protocol is its baseline
        return True
    if not dotted.startswith(("attention.", "hasher.")) or dotted == "attention.name":
        return True
    read = read_of(attention)
    if read is None:  # a variant no schema declares: do not hide what we cannot judge
        return True
    if dotted not in declared():  # a field no schema declares (an older run): shown where its group is read
        return dotted.startswith("attention.") or any(k.startswith("hasher.") for k in read)
    return dotted in read


class Relevance:
    """`relevant` for one collector call: each variant's keys_read, the declared keys and every (key, variant,
    windows) answer derived once. The collector asks for every key of every run: derived from the schemas each
    time, 10,010 runs made 7.3 million dataclasses.fields calls. One per call, not per process: a plug-in may
    register a variant between two calls."""

    def __init__(self):
        self._read: Dict[Any, Optional[Set[str]]] = {}
        self._declared: Optional[Set[str]] = None
        self._memo: Dict[Tuple[str, Any, bool], bool] = {}

    def keys_read(self, variant: Any) -> Optional[Set[str]]:
        if variant not in self._read:
            self._read[variant] = keys_read(variant)
        return self._read[variant]

    def declared(self) -> Set[str]:
        if self._declared is None:
            self._declared = _declared()
        return self._declared

    def __call__(self, dotted: str, attention: Any, windows: bool = True) -> bool:
        key = (dotted, attention, bool(windows))
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = _relevant(dotted, attention, windows, self.keys_read, self.declared)
        return hit


def _uses_windows(record: Optional[Dict[str, Any]]) -> bool:
    """eval.seq_len matters only to a task that reads it (not in its Task.ignores); a task not registered here
    is taken to read it (what we cannot judge is shown)."""
    return _metric_uses_windows(flatten(_section(record or {}, "config")).get("metric.name"))


def _metric_uses_windows(metric: Any) -> bool:
    task = find_task(metric)
    return task is None or "eval.seq_len" not in task.ignores


# ----------------------------------------------------------------------------- loading
def flatten(node: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(node, dict):
        out: Dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: json.dumps(node) if isinstance(node, list) else node}  # lists are not hashable


ERROR_CHARS = 300  # a failure's line in the collector's table: longer than the console's closing line


def _error_line(record: Dict[str, Any]) -> str:
    err = record.get("error")
    if isinstance(err, dict):
        msg = str(err.get("message") or "").strip().splitlines()
        return one_line(err.get("summary") or f"{err.get('type', 'Error')}: {msg[0] if msg else ''}", ERROR_CHARS)
    return one_line(err, ERROR_CHARS) if err else f"status {record.get('status')}, no error recorded"


def _is_nonfinite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    return isinstance(value, str) and value.strip().lower() in NONFINITE_STRINGS


def nonfinite_values(record: Dict[str, Any]) -> List[str]:
    """`section.key=value` for every NaN/inf number (or its string spelling) in the value sections."""
    found: List[str] = []
    for section in VALUE_SECTIONS:
        _find_nonfinite(_section(record, section), f"{section}.", found)
    return found


def _find_nonfinite(node: Dict[str, Any], prefix: str, found: List[str]) -> None:
    """nonfinite_values over one section, walked as `flatten` walks it; a list is read as it is (flatten's
    JSON of it, read back, is the same list), a string that opens with `[` is read as the JSON it spells."""
    for key, value in node.items():
        if isinstance(value, dict):
            _find_nonfinite(value, f"{prefix}{key}.", found)
            continue
        values = json.loads(value) if isinstance(value, str) and value.startswith("[") else \
            value if isinstance(value, list) else [value]
        if not isinstance(values, list) or _all_finite_numbers(values):
            continue
        bad = [v for v in values if _is_nonfinite(v)]
        if bad:
            found.append(f"{prefix}{key}={bad[0]}")


def _all_finite_numbers(values: list) -> bool:
    """True when every item is a finite number, from one C-level sum (a per-layer list of a diagnostic holds
    hundreds of them); False (look item by item) for strings, None, inf/NaN or a sum that overflows."""
    try:
        return math.isfinite(sum(values))
    except (TypeError, OverflowError):
        return False


def _missing_fields(record: Dict[str, Any], x: str) -> List[str]:
    """What an `ok` run must hold for its table row; a row without these would be silently wrong."""
    config = _section(record, "config")
    flat = {k: _dotted(config, k) for k in ("attention.name", "metric.name")}  # as flatten(config) has them
    need = [f"config.{k}" for k in ("attention.name", "metric.name") if flat.get(k) is None]
    metric = flat.get("metric.name")
    primary = primary_y(metric)  # None for a task not registered here: its primary field is unknown
    for section, key in [("cost", x)] + ([("metrics", primary[0])] if primary else []):
        if _section(record, section).get(key) is None:
            need.append(f"{section}.{key}")
    return need


def _dotted(node: Any, dotted: str) -> Any:
    """flatten(node).get(dotted) without flattening the whole config (keys hold no dots)."""
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return json.dumps(node) if isinstance(node, list) else None if isinstance(node, dict) else node


def _load(path: Path) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """(record, None) for a usable ok run, else (record or None, one-line reason it counts as failed)."""
    try:
        record = json.loads(path.read_text())  # Python's parser accepts bare NaN: flagged below
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, one_line(f"unreadable results.json: {type(exc).__name__}: {exc}", ERROR_CHARS)
    if not isinstance(record, dict):
        return None, f"unreadable results.json: top level is {type(record).__name__}, not an object"
    status = record.get("status")
    if status in ("failed", "interrupted"):
        return record, _error_line(record)
    if status == "running":
        started = (record.get("provenance") or {}).get("started_at")
        if job_busy(path.parent):  # the runner holds the job's lock while it works: it runs now
            return record, f"running now (started {started}; {_holder(path.parent)} holds its lock): collect again " \
                           f"when it ends"
        return record, (f"status is 'running' (started {started}) but no process holds its lock: the job died "
                        f"before finishing (killed, out of memory, a lost node); rerun it")
    if status != "ok":
        return record, f"unknown status {status!r} (expected ok | failed | interrupted | running)"
    missing = _missing_fields(record, "comparison_ratio")
    if missing:
        return record, f"status ok but missing fields: {', '.join(missing)}"
    bad_metrics = [v for v in nonfinite_values(record) if v.startswith("metrics.")]
    if bad_metrics:  # an ok run with a NaN metric is a failure that was not caught (issue 10)
        return record, f"status ok but non-finite metrics: {', '.join(bad_metrics)}"
    return record, None


def _holder(job_dir: Path) -> str:
    """`pid 123 on host` as the lock file says (lsh_bitnet.run.jobs.job_lock writes it)."""
    try:
        return (Path(job_dir) / LOCK_FILE).read_text().strip() or "another process"
    except OSError:
        return "another process"


def _jobs_without_results(root: Path) -> List[Tuple[Path, Dict[str, Any], str]]:
    """(job dir, its composed config, why) for Hydra job dirs that hold no results.json.

    Hydra writes `.hydra/config.yaml` before our code runs, and the runner's first act is a `running`
    results.json: a job dir with the first and not the second was killed (OOM killer, SIGKILL, a node
    lost) while Python started or imported, or is still waiting to start. Without this row such a job
    would be missing from the tables without a word.
    """
    from omegaconf import OmegaConf  # only on this rare path: the collector does not need it otherwise

    found = []
    for hydra_cfg in root.rglob(".hydra/config.yaml"):  # the caller sorts every row
        job_dir = hydra_cfg.parent.parent
        if (job_dir / RESULTS_FILE).exists():
            continue
        try:  # unresolved: ${seed} and friends stay strings, the identity columns are plain values
            config = OmegaConf.to_container(OmegaConf.load(hydra_cfg), resolve=False)
        except Exception:  # a config Hydra wrote half of: the row still says the job left no result
            config = {}
        if job_busy(job_dir):
            why = "no results.json yet: the job holds its lock, it is starting now"
        else:
            why = (f"no {RESULTS_FILE}: the job died before the runner started (killed while starting, "
                   f"e.g. out of memory or a lost node) or never started; rerun it with the overrides in "
                   f".hydra/overrides.yaml")
        found.append((job_dir, config if isinstance(config, dict) else {}, why))
    return found


def _flat_config(config: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in flatten(config).items() if not k.startswith(HASH_EXCLUDED_KEYS)}


def natural_key(text: str) -> List[Any]:
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
    task = find_task(flat.get("metric.name"))
    own = task.data_label(flat) if task is not None else None  # e.g. metric=lm_eval: the documents are its tasks'
    if own is not None:
        return own
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


class JsonMemo:
    """`json.dumps(value, default=str)` of config values, each distinct value encoded once per collector call
    (10,000 runs repeat the same few hundred values), and of a config as `json.dumps(config, sort_keys=True,
    default=str)` writes it, from those."""

    def __init__(self):
        self._memo: Dict[Any, str] = {}
        self._pairs: Dict[int, Tuple[Dict[str, Any], Tuple[Tuple[str, str], ...]]] = {}

    def value(self, value: Any) -> str:
        try:  # floats by their repr: -0.0 == 0.0 would share one entry, and JSON writes them apart
            key = (float, repr(value)) if isinstance(value, float) else (type(value), value)
            hit = self._memo.get(key)
        except TypeError:  # unhashable
            return json.dumps(value, default=str)
        if hit is None:
            hit = self._memo[key] = json.dumps(value, default=str)
        return hit

    def pairs(self, flat: Dict[str, Any]) -> Tuple[Tuple[str, str], ...]:
        """A flat config's sorted (key, JSON value) pairs, made once per config (it is kept, so its id stays its)."""
        hit = self._pairs.get(id(flat))
        if hit is None:
            hit = self._pairs[id(flat)] = (flat, tuple(sorted((k, self.value(v)) for k, v in flat.items())))
        return hit[1]

    def config(self, flat: Dict[str, Any], keep: Callable[[str], bool]) -> str:
        """json.dumps({k: v for k, v in flat.items() if keep(k)}, sort_keys=True, default=str) for string keys."""
        return "{" + ", ".join(f"{self.value(k)}: {v}" for k, v in self.pairs(flat) if keep(k)) + "}"


def _no_effect(swept: List[str], loaded: list, dumps: Optional[JsonMemo] = None) -> List[str]:
    """Swept keys that changed nothing measured: every pair of ok runs differing only there measured the same."""
    out = []
    dumps = dumps or JsonMemo()
    ok = [(flat, record) for _, record, error, flat in loaded if error is None and record]
    # Each run's config as its sorted (key, JSON value) pairs, its fingerprint and where each key sits, made once:
    # "the same config but for `key`" is then the pairs without that key's (equal to comparing the JSON of the
    # config without it), not one JSON dump of the whole config per swept key and run.
    runs = []
    for flat, record in ok:
        pairs = dumps.pairs(flat)
        runs.append((pairs, {k: i for i, (k, _) in enumerate(pairs)}, _fingerprint(record)))
    for key in swept:
        groups: Dict[Tuple[Tuple[str, str], ...], Dict[str, Set[str]]] = {}
        for pairs, where, fingerprint in runs:
            i = where.get(key)
            rest, value = (pairs, "null") if i is None else (pairs[:i] + pairs[i + 1:], pairs[i][1])
            groups.setdefault(rest, {}).setdefault(value, set()).add(fingerprint)
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
    paths = sorted(root.rglob(RESULTS_FILE), key=lambda p: natural_key(str(p.relative_to(root))))
    loaded = []
    for path in paths:
        record, error = _load(path)
        config = _section(record, "config") if record else {}
        loaded.append((str(path.parent.relative_to(root)) or ".", record, error, _flat_config(config)))
    # A key is swept when its value (missing counts as a value) differs between two readable runs whose
    # variant reads it: forest runs all at max_depth=16 beside lsh runs without one are no max_depth sweep.
    relevant_ = Relevance()  # schema-derived answers once per variant, not per run and key
    windows_of: Dict[Any, bool] = {}

    def uses_windows(flat: Dict[str, Any]) -> bool:  # _uses_windows of the record whose config flat is
        metric = flat.get("metric.name")
        if metric not in windows_of:
            windows_of[metric] = _metric_uses_windows(metric)
        return windows_of[metric]

    ctx = [(flat, flat.get("attention.name"), uses_windows(flat)) for _, record, _, flat in loaded if flat]
    keys = sorted({k for flat, _, _ in ctx for k in flat}, key=natural_key)
    dumps = JsonMemo()
    varied = [k for k in keys if len({dumps.value(flat.get(k)) for flat, att, win in ctx
                                      if relevant_(k, att, win)}) > 1]
    no_effect = _no_effect(varied, loaded, dumps)
    swept = [k for k in varied if k not in no_effect]
    knob_keys = [k for k in keys if k.startswith(("attention.", "hasher.")) and k not in ("attention.name", "hasher.name")
                 and any(relevant_(k, att, win) for _, att, win in ctx)]
    knobs = _short_names(sorted(knob_keys, key=_knob_order))
    records = [r for _, r, _, _ in loaded if r]
    # after the swept keys are known, so an unresolved "${seed}" never makes a key look swept
    loaded += [(str(job_dir.relative_to(root)) or ".", {"status": "missing", "config": config}, why,
                _flat_config(config)) for job_dir, config, why in _jobs_without_results(root)]
    loaded.sort(key=lambda item: natural_key(item[0]))
    values = _value_columns(records, set(ID_COLUMNS) | set(knobs.values()))
    rows, flagged = [], {}
    for run_dir, record, error, flat in loaded:
        record = record or {}
        attention, windows = flat.get("attention.name"), uses_windows(flat)
        row: Dict[str, Any] = {"run_dir": run_dir, "status": record.get("status", "unreadable"), "error": error}
        # Running now (its lock is held): listed apart from the failed runs, not counted as one.
        row["running"] = bool(error) and row["status"] in ("running", "missing") and job_busy(root / run_dir)
        row.update({c: flat.get(d) if relevant_(d, attention, windows) else None for c, d in ID_COLUMNS.items()})
        row["model"] = _model_label(record, flat) if flat else None
        row["family"] = family_of(attention, row["hasher"]) if attention else None
        row.update({c: flat.get(d) if relevant_(d, attention, windows) else None for d, c in knobs.items()})
        for key in swept + no_effect:  # other swept keys (dataset.*, eval.*, seed) get a column too
            if key not in ID_COLUMNS.values() and key not in knobs:
                row[key] = flat.get(key) if relevant_(key, attention, windows) else None
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
        row["_group"] = dumps.config(flat, lambda k: not is_seed_key(k))
        row["_seeds"] = dumps.config(flat, is_seed_key)
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
    ok = ok.drop(columns=["error", "running"], errors="ignore")
    for frame in (ok, bad):
        frame.attrs.update(swept=swept, no_effect=no_effect, knobs=knobs, values=values, nonfinite=flagged)
    return ok, bad


