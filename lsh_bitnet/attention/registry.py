"""The "lsh_bitnet" attention implementation, registered with transformers at import time.

Two registrations under one name:
- AttentionMaskInterface: for the plain causal mask, the key validity alone as a (B, 1, 1, K) bool (causality is
  re-applied by the kernel): a 4D (B, 1, Q, K) mask would cost B * Q * K bytes per forward (1 GiB at 32k). Other
  mask functions (packed sequences, overlays) get the stock SDPA mask, materialised (no is_causal skip). Either
  way padding is never lost and key_valid is read off it.
- AttentionInterface: reads the per-module state set by patch.py (`module._lsh_bitnet_state`) and
  runs `sparse_attention_counts`; a module without state gets full attention, uncounted.
"""
import time
import weakref
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
from transformers.masking_utils import AttentionMaskInterface, causal_mask_function, prepare_padding_mask, sdpa_mask
from transformers.modeling_utils import AttentionInterface

from lsh_bitnet.attention.cost import CostMeter
from lsh_bitnet.attention.kernel import SparseSpec, full_attention, resolve_engine, sparse_attention_counts
from lsh_bitnet.attention.phases import DECODE, PREFILL, PhaseClock, Protocol
from lsh_bitnet.attention.rules.base import code_dtype
from lsh_bitnet.attention.rules.full import FullAttention

IMPLEMENTATION = "lsh_bitnet"
STATE_ATTR = "_lsh_bitnet_state"
FULL_SPEC = SparseSpec(FullAttention.name)  # unpatched layers (attention.layers) and modules without state


@dataclass
class LayerState:
    layer_idx: int
    spec: SparseSpec
    hasher: Optional[object]  # the layer's Hasher for a hashed rule, else None
    meter: CostMeter
    patched: bool  # False: kept at full attention (attention.layers), still counted at full cost
    diagnostics: Optional[object] = None  # DiagnosticsMeter when attention.diagnostics is true
    engine_calls: Dict[str, int] = field(default_factory=dict)  # engine -> calls that ran on it (cost.engine)
    codecache: Optional[object] = None  # KeyCodeCache shared by the layers of one patch (rules reading codes)
    protocol: Protocol = field(default_factory=Protocol)  # attention.apply_to / eval.sparse_from (phases.py)
    clock: Optional[PhaseClock] = None  # per-phase wall time of the forwards and their attention calls


def lsh_bitnet_mask(**kwargs):
    """A 4D bool mask that is never None, True = may attend: (B, 1, 1, K) key validity for the plain causal mask
    (key j is valid iff it is no padding and the last query may see it, what the (B, 1, Q, K) causal + padding
    mask says about keys), else the stock (B, 1, Q, K) SDPA mask."""
    if kwargs.get("mask_function", causal_mask_function) is not causal_mask_function or kwargs.get("use_vmap"):
        kwargs["allow_is_causal_skip"] = False
        kwargs["allow_is_bidirectional_skip"] = False
        return sdpa_mask(**kwargs)
    B, Q, K = kwargs["batch_size"], kwargs["q_length"], kwargs["kv_length"]
    q_offset, kv_offset = int(kwargs.get("q_offset", 0)), int(kwargs.get("kv_offset", 0))
    j = torch.arange(kv_offset, kv_offset + K, device=kwargs.get("device", "cpu"))  # (K,) absolute key positions
    valid = (j <= q_offset + Q - 1).expand(B, K)  # (B, K): causally visible to the last query
    padding = prepare_padding_mask(kwargs.get("attention_mask"), K, kv_offset)  # (B, >= kv_offset + K) or None
    if padding is not None:
        valid = valid & padding[:, kv_offset:kv_offset + K].to(device=j.device, dtype=torch.bool)
    mask = valid[:, None, None, :]  # (B, 1, 1, K)
    if padding is None:  # known without looking at the tensor: no host sync per forward
        _CACHE.prime(mask, valid, kv_offset + K - 1 <= q_offset + Q - 1)
    return mask


class _KeyValidCache:
    """key_valid depends only on the mask, which every layer of one forward shares: derive it once."""

    def __init__(self):
        self.ref, self.key_valid, self.all_valid = None, None, None

    def prime(self, attention_mask: torch.Tensor, key_valid: torch.Tensor, all_valid: bool) -> None:
        """What the mask hook knows already: key_valid (B, K) and whether it is all True."""
        self.ref, self.key_valid, self.all_valid = weakref.ref(attention_mask), key_valid, all_valid

    def get(self, attention_mask: Optional[torch.Tensor], B: int, Q: int, K: int, device):
        if attention_mask is None:  # no mask at all: nothing is padding
            return torch.ones(B, K, dtype=torch.bool, device=device), True
        if self.ref is not None and self.ref() is attention_mask:
            return self.key_valid, self.all_valid
        key_valid = key_valid_from_mask(attention_mask, B, Q, K)
        self.ref, self.key_valid, self.all_valid = weakref.ref(attention_mask), key_valid, None
        return key_valid, None

    def set_all_valid(self, attention_mask, value: bool):
        if self.ref is not None and self.ref() is attention_mask:
            self.all_valid = value


_CACHE = _KeyValidCache()


def key_valid_from_mask(attention_mask: torch.Tensor, B: int, Q: int, K: int) -> torch.Tensor:
    """(B, 1|H, Q, K) bool or additive float mask -> key_valid (B, K).

    A real key slot j is visible to at least one real query (itself in a prefill, the new token in a
    decode step); a padding slot is visible to none. Causality is re-applied by the kernel.
    """
    if attention_mask.dim() != 4:
        raise ValueError(f"lsh_bitnet attention expects a 4D mask (B, 1, Q, K), got shape {tuple(attention_mask.shape)}")
    mask = attention_mask[..., -K:]
    if mask.dtype != torch.bool:  # additive mask: 0 where allowed, a very negative number where not
        mask = mask > torch.finfo(mask.dtype).min / 2
    return mask.any(dim=2).any(dim=1).expand(B, K)  # (B, K)


def lsh_bitnet_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                         scaling: Optional[float] = None, is_causal: Optional[bool] = None, **kwargs):
    """transformers attention function: query (B, Hq, Q, D), key/value (B, Hkv, K, D) -> ((B, Q, Hq, Dv), None)."""
    if not getattr(module, "is_causal", True) or is_causal is False:
        raise ValueError(f"attention implementation {IMPLEMENTATION!r} only supports causal self-attention; "
                         f"{type(module).__name__} is not causal: leave this module unpatched")
    for unsupported in ("sliding_window", "softcap"):
        if kwargs.get(unsupported) is not None:
            raise NotImplementedError(f"{type(module).__name__} uses {unsupported}={kwargs[unsupported]}, which "
                                      f"attention implementation {IMPLEMENTATION!r} does not model")
    if dropout and module.training:
        raise NotImplementedError("lsh_bitnet attention is for evaluation: call model.eval() (attention dropout > 0)")
    B, Hq, Q, _ = query.shape
    K = key.shape[2]
    groups = getattr(module, "num_key_value_groups", Hq // key.shape[1])
    if Hq != groups * key.shape[1]:
        raise ValueError(f"{type(module).__name__}: {Hq} query heads != num_key_value_groups={groups} x "
                         f"{key.shape[1]} KV heads")

    state: Optional[LayerState] = getattr(module, STATE_ATTR, None)
    started = time.perf_counter() if state is not None and state.clock is not None else None
    spec = state.spec if state is not None else FULL_SPEC
    key_valid, all_valid = _CACHE.get(attention_mask, B, Q, K, key.device)
    if all_valid is None:  # lets full skip the mask and flex its padding lookups
        all_valid = bool(key_valid.all())  # one host sync per forward (cached), none when the hook knew it
        _CACHE.set_all_valid(attention_mask, all_valid)
    protocol = state.protocol if state is not None else Protocol()
    n_pre = protocol.prefill_queries(Q, K)  # leading queries in the prefill phase (phases.py)
    # apply_to=decode: the prompt's queries attend to every causal key; the rule's state is still built here
    dense_pre = n_pre > 0 and protocol.dense_prefill and state is not None and state.patched and not spec.rule.dense

    observe = None
    if state is not None and state.diagnostics is not None and state.patched:
        observe = lambda cands, s: state.diagnostics.observe(state.layer_idx, cands, s)  # noqa: E731
    key_codes, key_words, reused = None, None, 0
    cache = state.codecache if state is not None else None
    if cache is not None:
        if state.layer_idx == 0:  # layer 0 checks, once per forward, how many keys the last forward had
            cache.begin_forward(attention_mask, key, key_valid)
    if state is not None and state.patched and spec.hashed:
        hasher = state.hasher
        if getattr(hasher, "center", "none") == "prompt" and Q == K and (cache is not None or dense_pre):
            # mu must exist before keys are coded: the prompt's keys (all of them, or the dense prefill's)
            n_mu = n_pre if dense_pre else K
            hasher.set_prompt_center(key[:, :, :n_mu], key_valid[:, :n_mu])
        if cache is not None:
            packs = spec.rule.packs_key_codes(spec, hasher.n_bits)
            key_codes, reused = cache.codes(state.layer_idx, attention_mask, key, hasher.key_codes,
                                            code_dtype(hasher.n_bits), words=packs)  # (L, B, Hkv, K), table-major
            key_words = cache.words(state.layer_idx, K) if packs else None  # (W, B, Hkv, K) byte-packed
    hasher = state.hasher if state is not None else None
    layer_idx = state.layer_idx if state is not None else 0
    if dense_pre:
        out, phase_counts = _dense_prefill(query, key, value, key_valid, n_pre, state, scaling, all_valid, observe,
                                           key_codes, reused)
    else:
        engine = resolve_engine(spec, query, Q)
        if state is not None and state.patched:
            state.engine_calls[engine] = state.engine_calls.get(engine, 0) + 1
        out, counts = sparse_attention_counts(query, key, value, key_valid, spec=spec, hasher=hasher,
                                              scaling=scaling, all_valid=all_valid, observe=observe, engine=engine,
                                              key_codes=key_codes, reused_keys=reused, layer_idx=layer_idx,
                                              key_words=key_words)
        phase_counts = _split(counts, key_valid, n_pre, Q, Hq, spec)
    if state is not None:
        for phase, counts in phase_counts:
            state.meter.add(state.layer_idx, counts, phase)
        if started is not None:
            state.clock.attention(state.layer_idx, Q, K, time.perf_counter() - started)
    return out.transpose(1, 2).contiguous(), None  # (B, Q, Hq, Dv), no attention weights


def _dense_counts(key_valid: torch.Tensor, Q: int, n: int, Hq: int, hash_ops=None) -> torch.Tensor:
    """(4,) counts of the first n queries attending to every causal key, the call's Q queries being the last slots
    of K keys: comparisons = full comparisons = Hq x sum of |V(i)| over those valid queries; no selection."""
    K = key_valid.shape[1]
    n_visible = key_valid.to(torch.int64).cumsum(-1)[:, K - Q:K - Q + n]  # (B, n)
    full = (n_visible * key_valid[:, K - Q:K - Q + n]).sum() * Hq
    zero = torch.zeros((), dtype=torch.int64, device=key_valid.device)
    return torch.stack([full, full, zero if hash_ops is None else hash_ops, zero])


def _split(counts: torch.Tensor, key_valid, n_pre: int, Q: int, Hq: int, spec):
    """[(phase, counts (4,))] of a call run as one piece: all prefill, all decode, or a dense rule split by rows."""
    if n_pre == 0:
        return [(DECODE, counts)]
    if n_pre == Q:
        return [(PREFILL, counts)]
    if not spec.rule.dense:  # patch_model accepts eval.sparse_from only with apply_to=decode (_dense_prefill)
        raise ValueError(f"attention={spec.variant}: a call split into phases must run its prefill dense "
                         f"(attention.apply_to=decode)")
    pre = _dense_counts(key_valid, Q, n_pre, Hq)
    return [(PREFILL, pre), (DECODE, counts - pre)]


def _dense_prefill(query, key, value, key_valid, n_pre, state, scaling, all_valid, observe, key_codes, reused):
    """apply_to=decode in a call that starts the sequence: its first n_pre queries attend to every causal key
    (stock SDPA), the rest (eval.sparse_from) use the rule over every key, as decode steps over the prefill's KV
    cache would. The prefill phase is charged the key codes it leaves for the decode steps (hash_ops)."""
    Hq, Q, Hkv = query.shape[1], query.shape[2], key.shape[1]
    pre_valid = key_valid[:, :n_pre]
    out = full_attention(query[:, :, :n_pre], key[:, :, :n_pre], value[:, :, :n_pre], pre_valid, scaling,
                         True if all_valid else None)  # (B, Hq, n_pre, Dv)
    hash_ops = None
    if key_codes is not None:  # hashed now for the decode steps: the prompt keys the code cache did not hold
        hash_ops = state.hasher.ops_per_vector * key_valid[:, min(reused, n_pre):n_pre].sum() * Hkv
    phases = [(PREFILL, _dense_counts(key_valid, Q, n_pre, Hq, hash_ops))]
    if n_pre == Q:
        return out, phases
    spec = state.spec
    rest = query[:, :, n_pre:]  # (B, Hq, Q - n_pre, D): teacher-forced decoding over every key
    engine = resolve_engine(spec, rest, Q - n_pre)
    state.engine_calls[engine] = state.engine_calls.get(engine, 0) + 1
    out_dec, counts = sparse_attention_counts(rest, key, value, key_valid, spec=spec, hasher=state.hasher,
                                              scaling=scaling, all_valid=all_valid, observe=observe, engine=engine,
                                              key_codes=key_codes,
                                              reused_keys=max(reused, n_pre) if key_codes is not None else 0,
                                              layer_idx=state.layer_idx)
    return torch.cat([out, out_dec], dim=2), phases + [(DECODE, counts)]


def register() -> None:
    AttentionInterface.register(IMPLEMENTATION, lsh_bitnet_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, lsh_bitnet_mask)


register()
