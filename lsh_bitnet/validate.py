"""Checks before anything expensive; each error names the key and the fix.

Three stages, cheapest first (the runner calls them in this order):
- `validate_fast(cfg)`: the config alone, torch NOT imported (< 2 s for any value error). Includes
  keys added with `+` that no schema declares (Hydra accepts them: `+` bypasses struct mode).
- `check_data_text(cfg, cache_dir)`: the data (exists, UTF-8, non-empty, long enough), before the model.
- `check_model_fit(cfg)`: the model's config.json / GGUF metadata (layers, head dim, max positions)
  against the attention and eval settings, before the weights load.
`validate_config(cfg)` is the same as `validate_fast` (kept for callers): the attention checks import no torch.
"""
import dataclasses
import difflib
from typing import Any, List, Optional

from omegaconf import DictConfig, OmegaConf

from lsh_bitnet.errors import ConfigError  # noqa: F401  (re-exported: callers import it from here too)
from lsh_bitnet.errors import require as _require

METRIC_DATASETS = {
    "perplexity": ("wikitext103", "wikitext2", "enwik8", "text_file"),
    "synthetic_accuracy": ("synthetic_ny_adj",),
    "passkey_accuracy": ("passkey",),
    "lm_eval": ("lm_eval",),  # the documents come from metric.tasks (metric=lm_eval selects dataset=lm_eval)
}
# Free-form nodes: any content is allowed below these keys (documented in config.py).
FREE_FORM = ("extra",)
# Config fields each metric never reads: set away from their default, they are recorded as warnings.
IGNORED_BY_METRIC = {
    "synthetic_accuracy": ("eval.seq_len", "dataset.max_chars"),
    "passkey_accuracy": ("eval.seq_len", "dataset.max_chars"),
    "perplexity": ("metric.max_new_tokens",),
    # lm-eval chooses documents (metric.limit), batches (metric.batch_size) and answer lengths (each task's)
    "lm_eval": ("eval.seq_len", "eval.batch_size", "eval.max_batches", "eval.batch_offset", "metric.max_new_tokens"),
}


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


def unknown_keys(cfg: DictConfig, prefix: str = "") -> List[str]:
    """Messages for keys no schema declares, walking every node typed by a dataclass schema: the
    allow-list is the schema's own fields, so a field another branch adds is allowed with no edit here."""
    problems = []
    schema = OmegaConf.get_type(cfg)
    fields = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    for key in cfg.keys():
        key = str(key)
        full = f"{prefix}{key}"
        if key == "hydra" or full in FREE_FORM:
            continue
        if fields is not None and key not in fields:
            group = prefix.rstrip(".")
            msg = f"unknown key {full}: {group or 'the top level'} has no field {key!r}"
            close = difflib.get_close_matches(key, sorted(fields), n=3, cutoff=0.6)
            if close:
                msg += f"; did you mean {' or '.join(f'{prefix}{c}' for c in close)}?"
            elsewhere = [alt for alt in (_schema_alternatives(group, key) if group else [])
                         if alt.split(".")[1] not in fields]
            if elsewhere:
                msg += "; " + ", ".join(f"{group}.{alt.split('.')[1]} exists with {group}={alt.split('.')[0]}"
                                        for alt in elsewhere)
                msg += "."
            msg += f" Valid keys: {sorted(fields)}"
            problems.append(msg)
            continue
        if OmegaConf.is_missing(cfg, key):
            continue
        child = cfg._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none():
            problems += unknown_keys(child, f"{full}.")
    return problems


# ----------------------------------------------------------------------------- stage 1: config only
def _default(dotted: str) -> Any:
    """The schema default of `group.field` (None when it has none)."""
    from lsh_bitnet import config as schemas

    group, leaf = dotted.split(".")
    node_type = {f.name: f for f in dataclasses.fields(schemas.Config)}[group]
    cls = node_type.default_factory if node_type.default_factory is not dataclasses.MISSING else node_type.type
    for f in dataclasses.fields(cls):
        if f.name == leaf:
            return f.default
    return None


def ignored_field_warnings(cfg: DictConfig) -> List[str]:
    warnings = []
    for dotted in IGNORED_BY_METRIC.get(cfg.metric.name, ()):
        value = OmegaConf.select(cfg, dotted)
        if value is not None and value != _default(dotted):
            warnings.append(f"{dotted}={value} is ignored by metric={cfg.metric.name}: it does not change this run "
                            f"(results with different {dotted} are the same measurement)")
    return warnings


def validate_fast(cfg: DictConfig) -> List[str]:
    """Every check that needs only the config; imports no torch. Returns warnings (recorded in results.json)."""
    from lsh_bitnet.attention.checks import validate_attention_config
    from lsh_bitnet.data import check_dataset_config
    from lsh_bitnet.models.checks import check_model_config

    problems = unknown_keys(cfg)
    _require(not problems, "; ".join(problems))
    metric, dataset = cfg.metric.name, cfg.dataset.name
    _require(metric in METRIC_DATASETS,
             f"metric={metric!r} is not known: allowed {sorted(METRIC_DATASETS)}")
    fitting_metrics = [m for m, datasets in METRIC_DATASETS.items() if dataset in datasets]
    _require(bool(fitting_metrics), f"dataset={dataset!r} is not known: allowed "
                                    f"{sorted(d for ds in METRIC_DATASETS.values() for d in ds)}")
    _require(dataset in METRIC_DATASETS[metric],
             f"metric={metric} cannot be computed on dataset={dataset}: set dataset= one of "
             f"{list(METRIC_DATASETS[metric])}, or metric={fitting_metrics[0]}")
    # Perplexity predicts seq_len - 1 tokens per window: a window of 1 token predicts nothing.
    _require(cfg.eval.seq_len >= 2, f"eval.seq_len must be >= 2 (got {cfg.eval.seq_len})")
    _require(cfg.eval.batch_size >= 1, f"eval.batch_size must be >= 1 (got {cfg.eval.batch_size})")
    _require(cfg.eval.max_batches is None or cfg.eval.max_batches >= 1,
             f"eval.max_batches must be >= 1 or null for all (got {cfg.eval.max_batches})")
    if metric == "lm_eval":  # installed (else the install command), values sane; imports no lm-eval
        from lsh_bitnet.bridges.lm_eval import check_metric_config

        check_metric_config(cfg.metric)
    if metric in ("synthetic_accuracy", "passkey_accuracy"):
        _require(cfg.metric.max_new_tokens >= 1,
                 f"metric.max_new_tokens must be >= 1 (got {cfg.metric.max_new_tokens}): the answer is generated")
    layers = cfg.attention.get("layers")
    _require(layers is None or len(layers) > 0 or cfg.attention.name == "full",
             f"attention.layers=[] patches no layer: the run would be full attention labelled "
             f"attention={cfg.attention.name}; set attention.layers=null (all layers) or list layer indices")
    _require(cfg.eval.get("batch_offset", 0) >= 0,
             f"eval.batch_offset must be >= 0: the windows / samples to skip (got {cfg.eval.get('batch_offset')})")
    check_model_config(cfg.model)
    check_dataset_config(cfg.dataset)
    validate_attention_config(cfg.attention, cfg.hasher)  # torch-free: lsh_bitnet/attention/checks.py
    return ignored_field_warnings(cfg)


def validate_config(cfg: DictConfig) -> List[str]:
    """Every config-only check (the same as validate_fast: the attention group's checks import no torch)."""
    return validate_fast(cfg)


# ----------------------------------------------------------------------------- stage 2: data
def check_data_text(cfg: DictConfig, cache_dir) -> Optional[str]:
    """The perplexity text, read and checked before any model loads (None for generated datasets). For
    metric=lm_eval: every task known and its documents readable (a hub task offline fails here)."""
    if cfg.metric.name == "lm_eval":
        from lsh_bitnet.bridges.lm_eval import check_tasks

        check_tasks(cfg.metric)
        return None
    if cfg.metric.name != "perplexity":
        return None
    from lsh_bitnet.data.text import load_text

    text = load_text(cfg.dataset, cache_dir)
    where = f"dataset={cfg.dataset.name}" + (f" (dataset.path={cfg.dataset.path})" if cfg.dataset.get("path") else "")
    _require(bool(text.strip()), f"{where} holds no text (empty or whitespace only): point dataset.path at a "
                                 f"non-empty UTF-8 file" + (" or raise dataset.max_chars" if cfg.dataset.get("max_chars") else ""))
    # A token covers at least one byte: fewer bytes than eval.seq_len can never fill one window.
    n_bytes = len(text.encode())
    _require(n_bytes >= cfg.eval.seq_len,
             f"{where} has {n_bytes} bytes, fewer than one window of eval.seq_len={cfg.eval.seq_len} tokens: lower "
             f"eval.seq_len or use a longer text")
    return text


# ----------------------------------------------------------------------------- stage 3: model geometry
def check_seq_len(cfg: DictConfig, max_positions: Optional[int], model_name: str) -> List[str]:
    """Perplexity windows must fit the model's positions (an error); a generated answer that runs past them
    is a warning: the prompt itself fits, and the last few RoPE positions extrapolate."""
    if not max_positions:
        return []
    if cfg.metric.name == "perplexity":
        _require(cfg.eval.seq_len <= max_positions,
                 f"eval.seq_len={cfg.eval.seq_len} is above the model's {max_positions} positions "
                 f"(max_position_embeddings of {model_name}): beyond them RoPE extrapolates and perplexity "
                 f"measures that, not attention; set eval.seq_len <= {max_positions}")
        return []
    target, new_tokens = cfg.dataset.get("target_tokens"), cfg.metric.get("max_new_tokens")
    if target and new_tokens and target + new_tokens > max_positions:
        return [f"dataset.target_tokens={target} plus metric.max_new_tokens={new_tokens} runs past the "
                f"{max_positions} positions of {model_name}: the answer's last tokens sit at positions the model "
                f"was not trained on; dataset.target_tokens={max_positions - new_tokens} keeps it inside"]
    return []


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
