"""Patch a loaded HF causal LM so every decoder attention goes through the "lsh_bitnet" implementation.

    patch = patch_model(model, cfg.attention, cfg.hasher)
    ... evaluate ...
    cost, diag = patch.cost_summary(), patch.diagnostics_summary()
    patch.unpatch()
"""
from typing import List, Optional

import torch

from lsh_bitnet.attention import registry
from lsh_bitnet.attention.codecache import KeyCodeCache
from lsh_bitnet.attention.cost import CostMeter
from lsh_bitnet.attention.diagnostics import DiagnosticsMeter
from lsh_bitnet.attention.hashers import HASHERS, MAX_BITS, build_hasher
from lsh_bitnet.attention.kernel import ENGINES, FOREST_MAX_TREES, engines_for
from lsh_bitnet.attention.registry import FULL_SPEC, STATE_ATTR, LayerState
from lsh_bitnet.attention.spec import (CALIBRATION_SOURCES, CENTERS, ESTIMATORS, HASHED_VARIANTS, TOPK_SCORES,
                                       SparseSpec, typed_attention, typed_hasher)

from lsh_bitnet.errors import ConfigError


def _compile_stats() -> dict:
    import sys

    flex = sys.modules.get("lsh_bitnet.attention.engines.flex")  # not imported: nothing was compiled
    return dict(flex.STATS) if flex is not None else {"compile_s": 0.0, "compiles": 0}


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


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
        _require(h.name in HASHERS, f"hasher={h.name!r} is not known: allowed {sorted(HASHERS)}")
        _require(0 <= h.n_bits <= MAX_BITS, f"hasher.n_bits must be in [0, {MAX_BITS}] (got {h.n_bits}): codes are "
                 "packed into int64")
        _require(h.center in CENTERS, f"hasher.center={h.center!r} is not known: allowed {list(CENTERS)}")
        _require(h.calibration_source in CALIBRATION_SOURCES, f"hasher.calibration_source="
                 f"{h.calibration_source!r} is not known: allowed {list(CALIBRATION_SOURCES)}")
        _require(h.calibration_source != "file" or h.calibration_path, "hasher.calibration_source=file needs "
                 "hasher.calibration_path=/abs/file.txt")
        _require(h.calibration_tokens >= 1, f"hasher.calibration_tokens must be >= 1 (got {h.calibration_tokens})")
    if variant in HASHED_VARIANTS:
        _require(h is not None and h.name in HASHERS,
                 f"hasher={getattr(h, 'name', None)!r} is not known: allowed {sorted(HASHERS)}")
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


def attention_modules(model: torch.nn.Module) -> List[torch.nn.Module]:
    """Decoder self-attention modules: those carrying `layer_idx` and `num_key_value_groups`, by layer."""
    found = [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "num_key_value_groups")]
    idx = [m.layer_idx for m in found]
    if not found or len(set(idx)) != len(idx):
        raise ValueError(f"{type(model).__name__}: expected one attention module per layer with `layer_idx` and "
                         f"`num_key_value_groups`, found layer indices {idx}")
    return sorted(found, key=lambda m: m.layer_idx)


class AttentionPatch:
    def __init__(self, model, modules, states: List[LayerState], meter: CostMeter,
                 diagnostics: Optional[DiagnosticsMeter], previous: Optional[str], spec: SparseSpec,
                 head_dim: int = 1, causal: bool = True):
        self.model, self.modules, self.states, self.meter = model, modules, states, meter
        self.diagnostics, self.previous, self.spec = diagnostics, previous, spec
        self.head_dim, self.causal = head_dim, causal
        self.active = True
        self._compile_s0 = _compile_stats()

    def reset(self) -> None:
        """Zero the counters and diagnostics (e.g. after a warm-up batch)."""
        self.meter.reset()
        for state in self.states:
            state.engine_calls.clear()
        if self.diagnostics is not None:
            self.diagnostics.reset()

    def unpatch(self) -> None:
        """Remove the per-module state and restore the previous attention implementation. Idempotent."""
        if not self.active:
            return
        for module in self.modules:
            if hasattr(module, STATE_ATTR):
                delattr(module, STATE_ATTR)
        self.model.set_attn_implementation(self.previous or "sdpa")
        self.active = False

    def cost_summary(self) -> dict:
        """results.json `cost`: the meter's exact counts, plus mac_ratio and causal (SPEC section 7).

        mac_ratio = (comparisons * head_dim + hash_ops + selection_ops) / (full_comparisons * head_dim): a
        comparison is a head_dim multiply-add dot product, a hash or selection op counts as one.
        causal is False when a later token of a window can change an earlier token's candidates
        (hasher.center=prompt: mu is the mean of the whole prefill)."""
        patched = [s.patched for s in self.states]
        out = self.meter.summary(patched, is_oracle=self.spec.variant == "oracle_topk" and any(patched))
        full = out["full_comparisons"] * self.head_dim
        work = out["comparisons"] * self.head_dim + out["hash_ops"] + out["selection_ops"]
        out["mac_ratio"] = work / full if full > 0 else None
        out["causal"] = bool(self.causal)
        calls: dict = {}
        for state in self.states:
            for engine, n in state.engine_calls.items():
                calls[engine] = calls.get(engine, 0) + n
        # engine: what ran ("flex", "masked", or "flex+masked" when auto split prefill and decode steps)
        out["engine"] = "+".join(sorted(calls)) or "masked"
        out["engine_requested"] = self.spec.engine
        out["engine_calls"] = calls
        return out
    def timing_summary(self) -> dict:
        """{"compile_s": first-call seconds of every flex graph compiled since patching (compilation plus
        one run; 0 on the masked engine), "compiles": how many}: the runner merges it into `timing`."""
        now = _compile_stats()
        return {"compile_s": now["compile_s"] - self._compile_s0["compile_s"],
                "compiles": now["compiles"] - self._compile_s0["compiles"]}

    def diagnostics_summary(self) -> Optional[dict]:
        return self.diagnostics.summary() if self.diagnostics is not None else None


def patch_model(model: torch.nn.Module, attention_cfg, hasher_cfg, centers: Optional[torch.Tensor] = None
                ) -> AttentionPatch:
    """Attach per-layer state (spec, hasher, counters) and switch the model to the "lsh_bitnet" implementation.

    centers (n_layers, Hkv, D): the calibration mean keys for hasher.center=calibration
    (lsh_bitnet.attention.centering.calibration_centers)."""
    modules = attention_modules(model)
    if any(hasattr(m, STATE_ATTR) for m in modules):
        raise RuntimeError("model is already patched: call .unpatch() on the previous AttentionPatch first")
    n_layers = max(m.layer_idx for m in modules) + 1
    head_dim = modules[0].head_dim if hasattr(modules[0], "head_dim") else None
    validate_attention_config(attention_cfg, hasher_cfg, head_dim=head_dim, n_layers=n_layers)

    attention, hasher_cfg = typed_attention(attention_cfg), typed_hasher(hasher_cfg)
    spec = SparseSpec.from_config(attention)
    chosen = set(range(n_layers)) if attention.layers is None else set(int(x) for x in attention.layers)
    meter = CostMeter(n_layers)
    diagnostics = None
    if attention.diagnostics:
        diagnostics = DiagnosticsMeter(n_layers, attention.diagnostics_k, attention.diagnostics_queries)
    center = hasher_cfg.center if hasher_cfg is not None and spec.hashed else "none"
    if center == "calibration" and centers is None:
        raise ConfigError("hasher.center=calibration needs the calibration mean keys: the runner computes them "
                          "(lsh_bitnet.attention.centering.calibration_centers); or set hasher.center=none")
    # decode hashes each key once (codecache.py); the soft lsh_topk score re-reads key bits, not codes
    cached_codes = spec.hashed and not (spec.variant == "lsh_topk" and spec.score == "soft")
    codecache = KeyCodeCache() if cached_codes else None
    states = []
    for module in modules:
        patched = module.layer_idx in chosen
        hasher = None
        if patched and spec.hashed:
            n_kv = module.config.num_attention_heads // module.num_key_value_groups
            bits = spec.max_depth if spec.variant == "lsh_forest" else hasher_cfg.n_bits
            tables = spec.n_trees if spec.variant == "lsh_forest" else spec.n_tables
            hasher = build_hasher(hasher_cfg.name, int(bits), int(module.head_dim), n_kv, int(tables),
                                  int(hasher_cfg.seed), module.layer_idx)
            hasher.center = center
            if center == "calibration":
                hasher.mu = centers[module.layer_idx].float()  # (Hkv, D)
        state = LayerState(module.layer_idx, spec if patched else FULL_SPEC, hasher, meter, patched, diagnostics,
                           codecache=codecache)
        setattr(module, STATE_ATTR, state)
        states.append(state)

    previous = model.config._attn_implementation
    model.set_attn_implementation(registry.IMPLEMENTATION)
    return AttentionPatch(model, modules, states, meter, diagnostics, previous, spec, head_dim=int(head_dim or 1),
                          causal=center != "prompt")
