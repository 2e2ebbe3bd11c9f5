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
from lsh_bitnet.attention.kernel import ENGINES, VARIANTS, SparseSpec, _cfg_get, engines_for
from lsh_bitnet.attention.registry import FULL_SPEC, STATE_ATTR, LayerState

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
    a = lambda key, default=None: _cfg_get(attention_cfg, key, default)  # noqa: E731
    variant = a("name")
    _require(variant in VARIANTS, f"attention={variant!r} is not known: allowed {list(VARIANTS)}")
    engine = a("engine", "auto")
    _require(engine in ("auto", *ENGINES), f"attention.engine={engine!r} is not known: allowed "
             f"{['auto', *ENGINES]}")
    if engine == "flex" and variant in ENGINES["flex"]:  # flex runs the plain union with softmax weights only
        for key, plain in (("min_collisions", 1), ("estimator", "softmax")):
            _require(a(key, plain) == plain, f"attention.engine=flex cannot run attention.{key}={a(key)}: set "
                     f"attention.engine= one of ['masked', 'auto']")
    if engine != "auto" and variant in VARIANTS:
        why = (" (it needs every score q.k to choose its top k: the dense product that flex skips)"
               if variant == "oracle_topk" else "")
        _require(variant in ENGINES[engine], f"attention.engine={engine} cannot run attention={variant}{why}: "
                 f"set attention.engine= one of {engines_for(variant)} or auto")
    for key in ("sink_tokens", "local_window"):
        _require(a(key, 0) >= 0, f"attention.{key} must be >= 0 (got {a(key)})")
    _require(a("query_chunk", 256) >= 1, f"attention.query_chunk must be >= 1 (got {a('query_chunk')}): "
             "it is the number of queries per candidate-mask block, e.g. attention.query_chunk=256")
    if a("diagnostics", False):
        for key in ("diagnostics_k", "diagnostics_queries"):
            _require(a(key, 1) >= 1, f"attention.{key} must be >= 1 (got {a(key)})")
    layers = a("layers")
    if layers is not None:
        for layer in layers:
            _require(isinstance(layer, int) and layer >= 0,
                     f"attention.layers entries must be layer indices >= 0 (got {layer!r})")
            _require(n_layers is None or layer < n_layers,
                     f"attention.layers has {layer}, but the model has {n_layers} layers (0..{(n_layers or 0) - 1})")

    name, n_bits = _cfg_get(hasher_cfg, "name"), _cfg_get(hasher_cfg, "n_bits", 8)
    if hasher_cfg is not None:  # checked for every variant: a bad hasher group is a bad config either way
        _require(name in HASHERS, f"hasher={name!r} is not known: allowed {sorted(HASHERS)}")
        _require(0 <= n_bits <= MAX_BITS, f"hasher.n_bits must be in [0, {MAX_BITS}] (got {n_bits}): codes are "
                 "packed into int64")
    if variant in ("lsh", "lsh_forest"):
        _require(name in HASHERS, f"hasher={name!r} is not known: allowed {sorted(HASHERS)}")
        if variant == "lsh":
            bits, bits_key = n_bits, "hasher.n_bits"
            _require(a("n_tables", 1) >= 1,
                     f"attention.n_tables must be >= 1 (got {a('n_tables')}): set attention.n_tables=1 or more")
        else:  # a forest tree's hash has max_depth bits; hasher.n_bits is not used
            bits, bits_key = a("max_depth", 16), "attention.max_depth"
            _require(a("n_trees", 4) >= 1,
                     f"attention.n_trees must be >= 1 (got {a('n_trees')}): set attention.n_trees=1 or more")
            _require(a("min_candidates", 64) >= 1,
                     f"attention.min_candidates must be >= 1 (got {a('min_candidates')})")
        _require(0 <= bits <= MAX_BITS, f"{bits_key} must be in [0, {MAX_BITS}] (got {bits}): codes are packed "
                 "into int64")
        if name == "bit_sampling" and head_dim is not None:
            _require(bits <= head_dim, f"{bits_key}={bits} > head_dim={head_dim}: bit_sampling draws distinct "
                     f"coordinates of the head dim; set {bits_key} <= {head_dim} or use hasher=simhash")
    if variant == "oracle_topk":
        k, fraction = a("k"), a("fraction")
        _require((k is None) != (fraction is None),
                 f"attention=oracle_topk needs exactly one of attention.k / attention.fraction (got k={k}, "
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
                 diagnostics: Optional[DiagnosticsMeter], previous: Optional[str], spec: SparseSpec):
        self.model, self.modules, self.states, self.meter = model, modules, states, meter
        self.diagnostics, self.previous, self.spec = diagnostics, previous, spec
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
        patched = [s.patched for s in self.states]
        summary = self.meter.summary(patched, is_oracle=self.spec.variant == "oracle_topk" and any(patched))
        calls: dict = {}
        for state in self.states:
            for engine, n in state.engine_calls.items():
                calls[engine] = calls.get(engine, 0) + n
        # engine: what ran ("flex", "masked", or "flex+masked" when auto split prefill and decode steps)
        summary["engine"] = "+".join(sorted(calls)) or "masked"
        summary["engine_requested"] = self.spec.engine
        summary["engine_calls"] = calls
        return summary

    def timing_summary(self) -> dict:
        """{"compile_s": first-call seconds of every flex graph compiled since patching (compilation plus
        one run; 0 on the masked engine), "compiles": how many}: the runner merges it into `timing`."""
        now = _compile_stats()
        return {"compile_s": now["compile_s"] - self._compile_s0["compile_s"],
                "compiles": now["compiles"] - self._compile_s0["compiles"]}

    def diagnostics_summary(self) -> Optional[dict]:
        return self.diagnostics.summary() if self.diagnostics is not None else None


def patch_model(model: torch.nn.Module, attention_cfg, hasher_cfg) -> AttentionPatch:
    """Attach per-layer state (spec, hasher, counters) and switch the model to the "lsh_bitnet" implementation."""
    modules = attention_modules(model)
    if any(hasattr(m, STATE_ATTR) for m in modules):
        raise RuntimeError("model is already patched: call .unpatch() on the previous AttentionPatch first")
    n_layers = max(m.layer_idx for m in modules) + 1
    head_dim = modules[0].head_dim if hasattr(modules[0], "head_dim") else None
    validate_attention_config(attention_cfg, hasher_cfg, head_dim=head_dim, n_layers=n_layers)

    spec = SparseSpec.from_config(attention_cfg)
    layers = _cfg_get(attention_cfg, "layers")
    chosen = set(range(n_layers)) if layers is None else set(int(x) for x in layers)
    meter = CostMeter(n_layers)
    diagnostics = None
    if _cfg_get(attention_cfg, "diagnostics", False):
        diagnostics = DiagnosticsMeter(n_layers, int(_cfg_get(attention_cfg, "diagnostics_k", 32)),
                                       int(_cfg_get(attention_cfg, "diagnostics_queries", 64)))
    codecache = KeyCodeCache() if spec.hashed else None  # decode hashes each key once (codecache.py)
    states = []
    for module in modules:
        patched = module.layer_idx in chosen
        hasher = None
        if patched and spec.hashed:
            n_heads = module.config.num_attention_heads
            n_kv = n_heads // module.num_key_value_groups
            bits, tables = ((_cfg_get(hasher_cfg, "n_bits", 8), spec.n_tables) if spec.variant == "lsh"
                            else (spec.max_depth, spec.n_trees))
            hasher = build_hasher(_cfg_get(hasher_cfg, "name"), int(bits), int(module.head_dim), n_kv, int(tables),
                                  int(_cfg_get(hasher_cfg, "seed", 0)), module.layer_idx)
        state = LayerState(module.layer_idx, spec if patched else FULL_SPEC, hasher, meter, patched, diagnostics,
                           codecache=codecache)
        setattr(module, STATE_ATTR, state)
        states.append(state)

    previous = model.config._attn_implementation
    model.set_attn_implementation(registry.IMPLEMENTATION)
    return AttentionPatch(model, modules, states, meter, diagnostics, previous, spec)
