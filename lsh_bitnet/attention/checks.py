"""Value checks on the attention and hasher groups, importing no torch: a bad `attention.*` or `hasher.*`
value fails in about a second (validate.validate_fast), before torch and transformers load.

The checks every rule shares live here; a rule's own (rules/<name>.py `check`) and a hasher's own
(hashers/<name>.py `check`) are asked through the registry, as is which engine can run what.
"""
from typing import Optional

from lsh_bitnet.attention.hashers.base import MAX_BITS  # noqa: F401  (re-exported: codes are packed into int64)
from lsh_bitnet.attention.spec import typed_attention, typed_hasher
from lsh_bitnet.config import CalibrationSource, Engine, Estimator
from lsh_bitnet.errors import require as _require
from lsh_bitnet.registry import HASHERS, RULES, each

# The engines (attention.engine values that run something; `auto` picks one of them per call).
ENGINES = tuple(e.value for e in Engine if e != Engine.auto)


def engines_for(cfg) -> list:
    """The engines that can run these settings of cfg's rule (cfg: a typed schema or a SparseSpec)."""
    rule = RULES.get(getattr(cfg, "name", None) or cfg.variant)
    return [e for e in ENGINES if rule.refusal(cfg, e) is None]


def validate_attention_config(attention_cfg, hasher_cfg, head_dim: Optional[int] = None,
                              n_layers: Optional[int] = None) -> None:
    """Value checks on the attention and hasher groups; shape checks only when head_dim / n_layers are given."""
    a, h = typed_attention(attention_cfg), typed_hasher(hasher_cfg)
    rule = RULES.get(a.name)
    if a.engine != Engine.auto:
        why = rule.refusal(a, a.engine)
        _require(why is None, f"attention.engine={a.engine} cannot run {why}: set attention.engine= one of "
                 f"{engines_for(a) + [Engine.auto.value]}")
    for key in ("sink_tokens", "local_window"):
        _require(getattr(a, key) >= 0, f"attention.{key} must be >= 0 (got {getattr(a, key)})")
    _require(a.query_chunk is None or a.query_chunk >= 1, f"attention.query_chunk must be >= 1 (got {a.query_chunk}): "
             "it is the number of queries per candidate-mask block, e.g. attention.query_chunk=256 (null: the device's default)")
    if a.estimator == Estimator.sampling:
        _require(rule.sampling, f"attention.estimator=sampling needs a rule that defines the collision probability "
                 f"p_ij, one of {each(RULES, lambda r: r.sampling)}; got attention={a.name}: set "
                 f"attention.estimator=softmax")
        _require(h is None or HASHERS.get(h.name).log_p_collision is not None,
                 f"attention.estimator=sampling needs the hasher's collision probability, and hasher={h and h.name} "
                 f"declares none (Hasher.log_p_collision): use hasher= one of "
                 f"{each(HASHERS, lambda x: x.log_p_collision is not None)} or attention.estimator=softmax")
    if a.diagnostics:
        for key in ("diagnostics_k", "diagnostics_queries"):
            _require(getattr(a, key) >= 1, f"attention.{key} must be >= 1 (got {getattr(a, key)})")
    if a.layers is not None:
        for layer in a.layers:
            _require(isinstance(layer, int) and layer >= 0,
                     f"attention.layers entries must be layer indices >= 0 (got {layer!r})")
            _require(n_layers is None or layer < n_layers,
                     f"attention.layers has {layer}, but the model has {n_layers} layers (0..{(n_layers or 0) - 1})")

    if h is not None:  # checked for every rule: a bad hasher group is a bad config either way
        _require(0 <= h.n_bits <= MAX_BITS, f"hasher.n_bits must be in [0, {MAX_BITS}] (got {h.n_bits}): codes are "
                 "packed into int64")
        _require(h.calibration_source != CalibrationSource.file or h.calibration_path,
                 "hasher.calibration_source=file needs hasher.calibration_path=/abs/file.txt")
        _require(h.calibration_tokens >= 1, f"hasher.calibration_tokens must be >= 1 (got {h.calibration_tokens})")
    if rule.hashed:
        _require(h is not None, f"attention={a.name} hashes queries and keys: set hasher= one of {HASHERS.names()}")
    rule.check(a, h, head_dim)
