"""Value checks on the attention and hasher groups, importing no torch: a bad `attention.*` or `hasher.*`
value fails in about a second (validate.validate_fast), before torch and transformers load.

Kept torch-free on purpose: the names of the engines and hashers live here as plain data; kernel.py and
hashers.py import them, and tests/test_reliability.py checks they match the registered implementations.
"""
from typing import Optional

from lsh_bitnet.attention.spec import (CALIBRATION_SOURCES, CENTERS, ESTIMATORS, HASHED_VARIANTS, TOPK_SCORES,
                                       VARIANTS, typed_attention, typed_hasher)
from lsh_bitnet.errors import require as _require

# Which engine can run which variant (SPEC section 8). oracle_topk needs every score q.k to choose its
# top k, i.e. the dense product the flex engine exists to skip, and lsh_topk scores every causal key by its
# collisions the same way: both stay on `masked`, as does m-of-L (its candidates touch every block:
# docs/SPEC.md section 8.2).
ENGINES = {"masked": VARIANTS, "flex": ("full", "lsh", "lsh_forest", "window")}
# flex resolves forest depths by inclusion-exclusion: 2^n - 1 tree sets (one sort each) per depth left open by
# the single-tree bounds, the ids of every set held at once. 6 trees = 63 sets; the cost doubles per tree
# beyond, and such forests stay on masked.
FOREST_MAX_TREES = 6
# Registered hasher names (hashers.py registers the classes; a test keeps the two in step).
HASHER_NAMES = ("bit_sampling", "simhash")
# Codes are packed into int64 and must stay non-negative (the forest compares XORs as integers).
MAX_BITS = 62


def engines_for(variant: str):
    return [e for e, variants in ENGINES.items() if variant in variants]


def validate_attention_config(attention_cfg, hasher_cfg, head_dim: Optional[int] = None,
                              n_layers: Optional[int] = None) -> None:
    """Value checks on the attention and hasher groups; shape checks only when head_dim / n_layers are given."""
    a, h = typed_attention(attention_cfg), typed_hasher(hasher_cfg)
    variant = a.name
    engine = a.engine
    _require(engine in ("auto", *ENGINES), f"attention.engine={engine!r} is not known: allowed "
             f"{['auto', *ENGINES]}")
    if engine == "flex" and variant in ENGINES["flex"]:  # flex runs the plain union with softmax weights only
        # m-of-L candidates are in no table's contiguous runs and touch every block (docs/SPEC.md section 8.2)
        for key, plain, why in (("min_collisions", 1, " (m-of-L candidates lie in every 128 x 128 block: "
                                 "nothing to skip)"), ("estimator", "softmax", "")):
            value = getattr(a, key, plain)
            _require(value == plain, f"attention.engine=flex cannot run attention.{key}={value}{why}: set "
                     f"attention.engine= one of ['masked', 'auto']")
        if variant == "lsh_forest":
            _require(a.n_trees <= FOREST_MAX_TREES, f"attention.engine=flex cannot run attention.n_trees={a.n_trees} "
                     f"(it resolves forest depths over all 2^n_trees tree sets: at most {FOREST_MAX_TREES} trees): "
                     f"set attention.engine= one of ['masked', 'auto'] or attention.n_trees<={FOREST_MAX_TREES}")
    if engine != "auto":
        why = {"oracle_topk": " (it needs every score q.k to choose its top k: the dense product that flex skips)",
               "lsh_topk": " (it scores every causal key by collisions to choose its top k: no block can be "
                           "skipped)"}.get(variant, "")
        _require(variant in ENGINES[engine], f"attention.engine={engine} cannot run attention={variant}{why}: "
                 f"set attention.engine= one of {engines_for(variant)} or auto")
    for key in ("sink_tokens", "local_window"):
        _require(getattr(a, key) >= 0, f"attention.{key} must be >= 0 (got {getattr(a, key)})")
    _require(a.query_chunk >= 1, f"attention.query_chunk must be >= 1 (got {a.query_chunk}): "
             "it is the number of queries per candidate-mask block, e.g. attention.query_chunk=256")
    _require(a.estimator in ESTIMATORS, f"attention.estimator={a.estimator!r} is not known: allowed {list(ESTIMATORS)}")
    _require(a.estimator == "softmax" or variant == "lsh",
             f"attention.estimator={a.estimator} needs attention=lsh (its p_ij is the m-of-L collision "
             f"probability); got attention={variant}: set attention.estimator=softmax")
    if a.diagnostics:
        for key in ("diagnostics_k", "diagnostics_queries"):
            _require(getattr(a, key) >= 1, f"attention.{key} must be >= 1 (got {getattr(a, key)})")
    if a.layers is not None:
        for layer in a.layers:
            _require(isinstance(layer, int) and layer >= 0,
                     f"attention.layers entries must be layer indices >= 0 (got {layer!r})")
            _require(n_layers is None or layer < n_layers,
                     f"attention.layers has {layer}, but the model has {n_layers} layers (0..{(n_layers or 0) - 1})")

    if h is not None:  # checked for every variant: a bad hasher group is a bad config either way
        _require(h.name in HASHER_NAMES, f"hasher={h.name!r} is not known: allowed {sorted(HASHER_NAMES)}")
        _require(0 <= h.n_bits <= MAX_BITS, f"hasher.n_bits must be in [0, {MAX_BITS}] (got {h.n_bits}): codes are "
                 "packed into int64")
        _require(h.center in CENTERS, f"hasher.center={h.center!r} is not known: allowed {list(CENTERS)}")
        _require(h.calibration_source in CALIBRATION_SOURCES, f"hasher.calibration_source="
                 f"{h.calibration_source!r} is not known: allowed {list(CALIBRATION_SOURCES)}")
        _require(h.calibration_source != "file" or h.calibration_path, "hasher.calibration_source=file needs "
                 "hasher.calibration_path=/abs/file.txt")
        _require(h.calibration_tokens >= 1, f"hasher.calibration_tokens must be >= 1 (got {h.calibration_tokens})")
    if variant in HASHED_VARIANTS:
        _require(h is not None and h.name in HASHER_NAMES,
                 f"hasher={getattr(h, 'name', None)!r} is not known: allowed {sorted(HASHER_NAMES)}")
        if variant == "lsh_forest":  # a forest tree's hash has max_depth bits; hasher.n_bits is not used
            bits, bits_key = a.max_depth, "attention.max_depth"
            _require(a.n_trees >= 1, f"attention.n_trees must be >= 1 (got {a.n_trees}): set attention.n_trees=1 or more")
            _require(a.min_candidates >= 1, f"attention.min_candidates must be >= 1 (got {a.min_candidates})")
        else:
            bits, bits_key = h.n_bits, "hasher.n_bits"
            _require(a.n_tables >= 1,
                     f"attention.n_tables must be >= 1 (got {a.n_tables}): set attention.n_tables=1 or more")
        if variant == "lsh":
            _require(1 <= a.min_collisions <= a.n_tables, f"attention.min_collisions must be in [1, attention."
                     f"n_tables={a.n_tables}] (got {a.min_collisions})")
        if variant == "lsh_topk":
            _require(a.score in TOPK_SCORES, f"attention.score={a.score!r} is not known: allowed {list(TOPK_SCORES)}")
        _require(0 <= bits <= MAX_BITS, f"{bits_key} must be in [0, {MAX_BITS}] (got {bits}): codes are packed "
                 "into int64")
        if h.name == "bit_sampling" and head_dim is not None:
            _require(bits <= head_dim, f"{bits_key}={bits} > head_dim={head_dim}: bit_sampling draws distinct "
                     f"coordinates of the head dim; set {bits_key} <= {head_dim} or use hasher=simhash")
    if variant in ("oracle_topk", "lsh_topk"):
        k, fraction = a.k, a.fraction
        _require((k is None) != (fraction is None),
                 f"attention={variant} needs exactly one of attention.k / attention.fraction (got k={k}, "
                 f"fraction={fraction}): e.g. attention.k=64 attention.fraction=null")
        _require(k is None or k >= 1, f"attention.k must be >= 1 (got {k})")
        _require(fraction is None or 0 < fraction <= 1, f"attention.fraction must be in (0, 1] (got {fraction})")
