"""Checks before anything expensive; each error names the key and the fix.

Three stages, cheapest first (the runner calls them in this order):
- `validate_fast(cfg)`: the config alone, torch NOT imported (< 2 s for any value error). Includes
  keys added with `+` that no schema declares (Hydra accepts them: `+` bypasses struct mode).
- `check_data(cfg, cache_dir)`: the data, before the model: the task's own checks (perplexity: the text
  exists, is UTF-8, non-empty, long enough).
- `check_model_fit(cfg)`: the model's config.json / GGUF metadata (layers, head dim, max positions)
  against the attention and the task's lengths, before the weights load.
What depends on the metric is the task's (lsh_bitnet/tasks): which datasets it accepts, its checks, the fields
it ignores; this module asks it through the registry by `metric.name`.
`validate_config(cfg)` is the same as `validate_fast` (kept for callers): the attention checks import no torch.
"""
import dataclasses
import difflib
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from lsh_bitnet.errors import ConfigError  # noqa: F401  (re-exported: callers import it from here too)
from lsh_bitnet.errors import require as _require
from lsh_bitnet.registry import RULES

# Free-form nodes: any content is allowed below these keys (documented in config.py).
FREE_FORM = ("extra",)


# ----------------------------------------------------------------------------- unknown keys
def _schema_alternatives(group: str, key: str) -> List[str]:
    """`option.field` of the other options of `group` whose schema declares `key` or a close spelling
    of it (e.g. n_trees -> lsh_forest.n_trees; n_table -> lsh.n_tables)."""
    from lsh_bitnet import config as schemas

    found = []
    for name, cls in schemas.SCHEMAS.get(group, {}).items():
        fields = sorted(f.name for f in dataclasses.fields(cls))
        found += [f"{name}.{f}" for f in ([key] if key in fields else difflib.get_close_matches(key, fields, 1, 0.8))]
    return sorted(set(found))


def unknown_key_hint(group: str, key: str, fields: List[str], option: Optional[str] = None) -> str:
    """Why `group.key` is refused and what exists instead: `attention=full has no field 'n_table';
    attention.n_tables exists with attention=lsh or attention=lsh_topk. Valid keys: [...]`. Used for keys
    added with `+` (unknown_keys) and for plain overrides Hydra refuses (lsh_bitnet.cli)."""
    prefix = f"{group}." if group else ""
    where = f"{group}={option}" if group and option else group or "the top level"
    msg = f"{where} has no field {key!r}"
    close = difflib.get_close_matches(key, sorted(fields), n=3, cutoff=0.6)
    if close:
        msg += f"; did you mean {' or '.join(f'{prefix}{c}' for c in close)}?"
    elsewhere: Dict[str, List[str]] = {}  # field -> the options of the group that declare it
    for alt in (_schema_alternatives(group, key) if group else []):
        name, field = alt.split(".", 1)
        if field not in fields:
            elsewhere.setdefault(field, []).append(name)
    if elsewhere:
        msg += "; " + "; ".join(f"{group}.{field} exists with {' or '.join(f'{group}={n}' for n in names)}"
                                for field, names in elsewhere.items()) + "."
    return msg + f" Valid keys: {sorted(fields)}"


def refused_key_hint(cfg: DictConfig, dotted: str) -> Optional[str]:
    """For an override Hydra refuses (`attention.n_table=2`: no such key), the same hint a `+` key gets;
    None where the refused key sits below a free-form node (`extra`), whose own advice (use `+`) is right."""
    node, parts = cfg, dotted.split(".")
    for i, part in enumerate(parts):
        if isinstance(node, DictConfig) and not node._is_none() and part in node:
            node = node._get_node(part)
            continue
        schema = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
        if not dataclasses.is_dataclass(schema):
            return None
        group = ".".join(parts[:i])
        option = node.get("name") if group and "name" in node else None
        return unknown_key_hint(group, part, [f.name for f in dataclasses.fields(schema)], option)
    return None


def unknown_keys(cfg: DictConfig, prefix: str = "") -> List[str]:
    """Messages for keys no schema declares, walking every node typed by a dataclass schema: the
    allow-list is the schema's own fields, so a field another branch adds is allowed with no edit here."""
    problems = []
    schema = OmegaConf.get_type(cfg)
    fields = [f.name for f in dataclasses.fields(schema)] if dataclasses.is_dataclass(schema) else None
    for key in cfg.keys():
        key = str(key)
        full = f"{prefix}{key}"
        if key == "hydra" or full in FREE_FORM:
            continue
        if fields is not None and key not in fields:
            group = prefix.rstrip(".")
            option = cfg.get("name") if group and "name" in fields else None
            problems.append(f"unknown key {full}: {unknown_key_hint(group, key, fields, option)}")
            continue
        if OmegaConf.is_missing(cfg, key):
            continue
        child = cfg._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none():
            problems += unknown_keys(child, f"{full}.")
    return problems


# ----------------------------------------------------------------------------- stage 1: config only
def _default(cfg: DictConfig, dotted: str) -> Any:
    """The schema default of `group.field` in the schema of cfg's `group` node (the option's own, e.g.
    SyntheticDatasetConfig), else in the group's declared schema (None when it has none)."""
    from lsh_bitnet.config import Config

    group, leaf = dotted.rsplit(".", 1)
    schema = OmegaConf.get_type(cfg, group) if OmegaConf.select(cfg, group) is not None else None
    if not dataclasses.is_dataclass(schema):
        declared = {f.name: f for f in dataclasses.fields(Config)}.get(group)
        if declared is not None:
            schema = declared.default_factory if declared.default_factory is not dataclasses.MISSING else declared.type
    for f in dataclasses.fields(schema) if dataclasses.is_dataclass(schema) else ():
        if f.name == leaf:
            return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return None


def ignored_field_warnings(cfg: DictConfig, task=None) -> List[str]:
    """One warning per field the task ignores (Task.ignores) that is set away from its schema default."""
    from lsh_bitnet.tasks.base import task_named

    task = task or task_named(cfg.metric.name)
    warnings = []
    for dotted in task.ignores:
        value = OmegaConf.select(cfg, dotted)
        if value is not None and value != _default(cfg, dotted):
            warnings.append(f"{dotted}={value} is ignored by metric={cfg.metric.name}: it does not change this run "
                            f"(results with different {dotted} are the same measurement)")
    return warnings


def validate_fast(cfg: DictConfig) -> List[str]:
    """Every check that needs only the config; imports no torch. Returns warnings (recorded in results.json)."""
    from lsh_bitnet.attention.checks import validate_attention_config
    from lsh_bitnet.data import check_dataset_config
    from lsh_bitnet.models.checks import check_model_config
    from lsh_bitnet.tasks.base import dataset_option, task_named, tasks

    problems = unknown_keys(cfg)
    _require(not problems, "; ".join(problems))
    metric, dataset = cfg.metric.name, cfg.dataset.name
    task = task_named(metric)  # unknown: the known tasks and the closest name
    option = dataset_option(dataset)
    if not task.accepts(option):
        fitting = [t.name for t in tasks() if t.accepts(option)]
        _require(False, f"metric={metric} cannot be computed on dataset={dataset}: set dataset= one of "
                        f"{task.dataset_names()}" + (f", or metric={fitting[0]}" if fitting else ""))
    # Perplexity predicts seq_len - 1 tokens per window: a window of 1 token predicts nothing.
    _require(cfg.eval.seq_len >= 2, f"eval.seq_len must be >= 2 (got {cfg.eval.seq_len})")
    _require(cfg.eval.batch_size >= 1, f"eval.batch_size must be >= 1 (got {cfg.eval.batch_size})")
    _require(cfg.eval.max_batches is None or cfg.eval.max_batches >= 1,
             f"eval.max_batches must be >= 1 or null for all (got {cfg.eval.max_batches})")
    task.check_protocol(cfg)  # attention.apply_to / eval.sparse_from
    task.check_config(cfg)
    layers = cfg.attention.get("layers")
    rule = RULES.find(cfg.attention.name)
    _require(layers is None or len(layers) > 0 or (rule is not None and rule.dense),
             f"attention.layers=[] patches no layer: the run would be full attention labelled "
             f"attention={cfg.attention.name}; set attention.layers=null (all layers) or list layer indices")
    _require(cfg.eval.get("batch_offset", 0) >= 0,
             f"eval.batch_offset must be >= 0: the windows / samples to skip (got {cfg.eval.get('batch_offset')})")
    check_model_config(cfg.model)
    check_dataset_config(cfg.dataset)
    validate_attention_config(cfg.attention, cfg.hasher)  # torch-free: lsh_bitnet/attention/checks.py
    check_calibration_path(cfg)
    return ignored_field_warnings(cfg, task)


def calibration_path(cfg: DictConfig) -> Optional[str]:
    """hasher.calibration_path when this run reads it (a hashed variant, hasher.center=calibration,
    hasher.calibration_source=file), else None."""
    from lsh_bitnet.registry import RULES

    hasher = cfg.get("hasher")
    rule = RULES.find(cfg.attention.name)
    if rule is None or not rule.hashed or hasher is None or hasher.get("center") != "calibration":
        return None
    return hasher.calibration_path if hasher.get("calibration_source") == "file" else None


def check_calibration_path(cfg: DictConfig) -> None:
    """The calibration file is a readable regular file (stat only): a missing file, a directory or a device
    such as /dev/urandom (which never ends) fails here, not after the model has loaded."""
    from lsh_bitnet.data.files import path_problem

    path = calibration_path(cfg)
    problem = path_problem(path) if path else None
    _require(problem is None, f"hasher.calibration_path={path} {problem}: point it at a readable UTF-8 text file "
                              f"(or set hasher.calibration_source=auto)")


def validate_config(cfg: DictConfig) -> List[str]:
    """Every config-only check (the same as validate_fast: the attention group's checks import no torch)."""
    return validate_fast(cfg)


# ----------------------------------------------------------------------------- stage 2: data
def check_data(cfg: DictConfig, cache_dir) -> Any:
    """The data checks before any model loads: the calibration file's text when the run reads one, then the
    task's own; returns what its `make_items` reads (perplexity: the text)."""
    from lsh_bitnet.tasks.base import task_named

    check_calibration_text(cfg)
    return task_named(cfg.metric.name).check_data(cfg, cache_dir)


def check_calibration_text(cfg: DictConfig) -> None:
    """hasher.calibration_path holds UTF-8 text (its first bytes, as many as calibration reads), not blank."""
    path = calibration_path(cfg)
    if not path:
        return
    from pathlib import Path

    from lsh_bitnet.attention.spec import calibration_file_bytes
    from lsh_bitnet.data.files import read_text_file

    text = read_text_file(Path(path).expanduser(), key="hasher.calibration_path",
                          max_bytes=calibration_file_bytes(cfg.hasher.calibration_tokens))
    _require(bool(text.strip()), f"hasher.calibration_path={path} holds no text (empty or whitespace only): point "
                                 f"it at a non-empty UTF-8 text file")


# ----------------------------------------------------------------------------- stage 3: model geometry
def check_seq_len(cfg: DictConfig, max_positions: Optional[int], model_name: str) -> List[str]:
    """The task's lengths against the model's positions (Task.check_positions): an error for a run that cannot
    be right (perplexity windows past them), warnings otherwise (a generated answer running past them)."""
    if not max_positions:
        return []
    from lsh_bitnet.tasks.base import task_named

    return task_named(cfg.metric.name).check_positions(cfg, max_positions, model_name)


def check_model_fit(cfg: DictConfig, cache_dir=None) -> Optional[List[str]]:
    """Checks against the model's shape, read from config.json / GGUF cache metadata (no weights): their
    warnings. None when no config.json is on disk yet (first GGUF conversion, uncached hub id): the runner
    then repeats the shape checks after the load."""
    from lsh_bitnet.attention.checks import validate_attention_config
    from lsh_bitnet.models.checks import model_geometry

    geometry = model_geometry(cfg.model, cache_dir)
    if geometry is None:
        validate_attention_config(cfg.attention, cfg.hasher)
        return None
    validate_attention_config(cfg.attention, cfg.hasher, head_dim=geometry.get("head_dim"),
                              n_layers=geometry.get("n_layers"))
    return check_seq_len(cfg, geometry.get("max_positions"), cfg.model.name)
