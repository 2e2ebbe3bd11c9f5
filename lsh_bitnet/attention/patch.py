"""Patch a loaded HF causal LM so every decoder attention goes through the "lsh_bitnet" implementation.

    patch = patch_model(model, cfg.attention, cfg.hasher)
    ... evaluate ...
    cost, diag = patch.cost_summary(), patch.diagnostics_summary()
    patch.unpatch()
"""
from typing import List, Optional

import torch

from lsh_bitnet.attention import registry
from lsh_bitnet.attention.checks import validate_attention_config  # noqa: F401  (re-exported)
from lsh_bitnet.attention.codecache import KeyCodeCache
from lsh_bitnet.attention.cost import CostMeter
from lsh_bitnet.attention.diagnostics import DiagnosticsMeter
from lsh_bitnet.attention.phases import PHASES, PhaseClock, Protocol, install_clock
from lsh_bitnet.attention.registry import FULL_SPEC, STATE_ATTR, LayerState
from lsh_bitnet.attention.spec import SparseSpec, typed_attention, typed_hasher
from lsh_bitnet.errors import ConfigError
from lsh_bitnet.registry import HASHERS


def _flex_engine():
    import sys

    return sys.modules.get("lsh_bitnet.attention.engines.flex")  # not imported: nothing was compiled


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
                 head_dim: int = 1, causal: bool = True, protocol: Optional[Protocol] = None,
                 clock: Optional[PhaseClock] = None, hooks: Optional[list] = None):
        self.model, self.modules, self.states, self.meter = model, modules, states, meter
        self.diagnostics, self.previous, self.spec = diagnostics, previous, spec
        self.head_dim, self.causal = head_dim, causal
        self.protocol, self.clock, self._hooks = protocol or Protocol(), clock, hooks or []
        self.active = True
        flex = _flex_engine()
        self._compiled_before = len(flex.COMPILED) if flex is not None else 0
        from lsh_bitnet.attention import packed

        self._packed_before = len(packed.COMPILED)

    def reset(self) -> None:
        """Zero the counters and diagnostics (e.g. after a warm-up batch)."""
        self.meter.reset()
        if self.clock is not None:
            self.clock.reset()
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
        for hook in self._hooks:
            hook.remove()
        self.model.set_attn_implementation(self.previous or "sdpa")
        self.active = False

    def cost_summary(self) -> dict:
        """results.json `cost`: the meter's exact counts, plus mac_ratio and causal (SPEC section 7).

        mac_ratio = (comparisons * head_dim + hash_ops + selection_ops) / (full_comparisons * head_dim): a
        comparison is a head_dim multiply-add dot product, a hash or selection op counts as one.
        causal is False when a later token of a window can change an earlier token's candidates
        (hasher.center=prompt: mu is the mean of the whole prefill)."""
        patched = [s.patched for s in self.states]
        out = self.meter.summary(patched, is_oracle=self.spec.rule.oracle and any(patched))
        for counts in [out] + [out["phases"][name] for name in PHASES]:
            counts["comparison_ratio"] = (counts["comparisons"] / counts["full_comparisons"]
                                          if counts["full_comparisons"] > 0 else None)
            counts["mac_ratio"] = self._mac_ratio(counts)
        # apply_to=decode: the ratios tables and plots read are the sparse (decode) phase's; the totals stay
        # in comparisons / full_comparisons, and each phase's in `phases`
        out["ratio_phase"] = "decode" if self.protocol.dense_prefill else "all"
        if self.protocol.dense_prefill:
            decode = out["phases"]["decode"]
            out["comparison_ratio"], out["mac_ratio"] = decode["comparison_ratio"], decode["mac_ratio"]
            out["decode_comparisons"] = decode["comparisons"]
            out["decode_full_comparisons"] = decode["full_comparisons"]
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

    def _mac_ratio(self, counts: dict) -> Optional[float]:
        full = counts["full_comparisons"] * self.head_dim
        work = counts["comparisons"] * self.head_dim + counts["hash_ops"] + counts["selection_ops"]
        return work / full if full > 0 else None

    def timing_summary(self) -> dict:
        """{"compile_s": compilation seconds of every flex graph and packed collision count (packed.py) compiled
        since patching (its first call less its second; the whole first call for a graph that ran once; 0 where
        nothing compiled), "compiles": how many}: the runner merges it into `timing`."""
        from lsh_bitnet.attention import packed

        flex = _flex_engine()
        out = flex.compile_stats(self._compiled_before) if flex is not None else {"compile_s": 0.0, "compiles": 0}
        more = packed.compile_stats(self._packed_before)
        out = {"compile_s": out["compile_s"] + more["compile_s"], "compiles": out["compiles"] + more["compiles"]}
        if self.clock is not None:  # per-phase seconds, decode tokens/s and attention's share (phases.PhaseClock)
            out.update(self.clock.summary())
        return out

    def diagnostics_summary(self) -> Optional[dict]:
        return self.diagnostics.summary() if self.diagnostics is not None else None


def patch_model(model: torch.nn.Module, attention_cfg, hasher_cfg, centers: Optional[torch.Tensor] = None,
                sparse_from: Optional[int] = None, clock: bool = True) -> AttentionPatch:
    """Attach per-layer state (spec, hasher, counters) and switch the model to the "lsh_bitnet" implementation.

    centers (n_layers, Hkv, D): the calibration mean keys for hasher.center=calibration
    (lsh_bitnet.attention.centering.calibration_centers). sparse_from (eval.sparse_from, with
    attention.apply_to=decode): a forward that starts a sequence keeps its first sparse_from queries dense, the
    rest use the rule (phases.py). clock: time the forwards per phase (timing_summary; CPU only)."""
    modules = attention_modules(model)
    if any(hasattr(m, STATE_ATTR) for m in modules):
        raise RuntimeError("model is already patched: call .unpatch() on the previous AttentionPatch first")
    n_layers = max(m.layer_idx for m in modules) + 1
    head_dim = modules[0].head_dim if hasattr(modules[0], "head_dim") else None
    validate_attention_config(attention_cfg, hasher_cfg, head_dim=head_dim, n_layers=n_layers)

    attention, hasher_cfg = typed_attention(attention_cfg), typed_hasher(hasher_cfg)
    spec = SparseSpec.from_config(attention)
    protocol = Protocol(str(attention.apply_to), sparse_from)
    if sparse_from is not None and not protocol.dense_prefill:
        raise ConfigError(f"eval.sparse_from={sparse_from} needs attention.apply_to=decode (got "
                          f"{attention.apply_to}): set attention.apply_to=decode, or eval.sparse_from=null")
    device = next(model.parameters()).device
    phase_clock = PhaseClock(enabled=device.type == "cpu") if clock else None
    chosen = set(range(n_layers)) if attention.layers is None else set(int(x) for x in attention.layers)
    meter = CostMeter(n_layers)
    diagnostics = None
    if attention.diagnostics:
        diagnostics = DiagnosticsMeter(n_layers, attention.diagnostics_k, attention.diagnostics_queries)
    rule = spec.rule
    center = hasher_cfg.center if hasher_cfg is not None and rule.hashed else "none"
    if center == "calibration" and centers is None:
        raise ConfigError("hasher.center=calibration needs the calibration mean keys: the runner computes them "
                          "(lsh_bitnet.attention.centering.calibration_centers); or set hasher.center=none")
    # decode hashes each key once (codecache.py), where the rule reads codes (not, e.g., bits)
    codecache = KeyCodeCache() if rule.hashed and rule.reuses_key_codes(spec) else None
    states = []
    for module in modules:
        patched = module.layer_idx in chosen
        hasher = None
        if patched and rule.hashed:
            n_kv = module.config.num_attention_heads // module.num_key_value_groups
            bits, tables = rule.hash_shape(spec)  # bits None: the hasher's own n_bits
            bits = hasher_cfg.n_bits if bits is None else bits
            hasher = HASHERS.get(hasher_cfg.name).from_config(hasher_cfg, int(bits), int(module.head_dim), n_kv,
                                                              int(tables), module.layer_idx)
            hasher.center = center
            if center == "calibration":
                hasher.mu = centers[module.layer_idx].float()  # (Hkv, D)
        state = LayerState(module.layer_idx, spec if patched else FULL_SPEC, hasher, meter, patched, diagnostics,
                           codecache=codecache, protocol=protocol, clock=phase_clock)
        setattr(module, STATE_ATTR, state)
        states.append(state)

    previous = model.config._attn_implementation
    model.set_attn_implementation(registry.IMPLEMENTATION)
    hooks = install_clock(model, phase_clock) if phase_clock is not None else []
    # hasher.center=prompt reads the whole prefill; under apply_to=decode the prefill is dense and the sparse
    # queries all come after it, so no query's candidates depend on a later token
    return AttentionPatch(model, modules, states, meter, diagnostics, previous, spec, head_dim=int(head_dim or 1),
                          causal=center != "prompt" or protocol.dense_prefill, protocol=protocol, clock=phase_clock,
                          hooks=hooks)
