"""Chunked masked attention over candidate sets, with exact comparison counts (docs/ATTENTION-API.md).

`sparse_attention` is the public, documented entry point (LayerCost holds Python ints);
`sparse_attention_counts` is the hot path used inside the model: its counts stay an int64 device
tensor so that no layer forces a host sync.
"""
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

from lsh_bitnet.attention.candidates import Candidates
from lsh_bitnet.attention.checks import ENGINES, engines_for  # noqa: F401 (re-exported)
from lsh_bitnet.attention.engines.gather import GATHER_MAX_QUERIES, gather_attention, use_gather  # noqa: F401
from lsh_bitnet.attention.spec import SparseSpec


# Smallest query/key head dim flex runs per device type: CUDA's Triton kernels tile the head dim for tl.dot, which
# needs at least 16 (the counting pass pads to COUNT_DIM = 16 for the same reason).
FLEX_MIN_HEAD_DIM = {"cuda": 16}


def flex_unsupported(spec, query: Optional[torch.Tensor] = None) -> Optional[str]:
    """Why flex cannot run this spec (None if it can): the rule's own answer (Rule.refusal), then the device's
    (query given: its head dim against FLEX_MIN_HEAD_DIM)."""
    why = spec.rule.refusal(spec, "flex")
    if why is None and query is not None:
        why = device_refusal(query.device.type, query.shape[-1])
    return why


def device_refusal(device_type: str, head_dim: int) -> Optional[str]:
    """Why flex cannot run on this device at this head dim (None if it can)."""
    least = FLEX_MIN_HEAD_DIM.get(device_type, 1)
    if head_dim < least:
        return f"a head dim of {head_dim} on {device_type} (flex needs >= {least} there)"
    return None


def resolve_engine(spec: "SparseSpec", query: torch.Tensor, Q: int) -> str:
    """The engine that runs this call: `masked` or `flex` (a dense rule always runs stock SDPA)."""
    rule, engine = spec.rule, spec.engine
    if rule.dense:
        return "masked"
    if engine == "auto":
        grad = torch.is_grad_enabled() and query.requires_grad  # compiled flex on CPU is inference-only
        least = rule.auto_flex_min_queries(spec, query.device.type)  # per device type (rules/base.py)
        return "flex" if flex_unsupported(spec, query) is None and Q >= least and not grad else "masked"
    if engine == "flex" and flex_unsupported(spec, query) is not None:
        raise ValueError(f"attention.engine=flex cannot run {flex_unsupported(spec, query)}: "
                         f"use attention.engine=masked")
    return str(engine)


@dataclass
class LayerCost:
    comparisons: int
    full_comparisons: int
    hash_ops: int
    selection_ops: int = 0


# Queries per candidate-mask chunk when attention.query_chunk is null, per device type: CPU measured at 256
# (docs/BENCHMARKS.md); a GPU pays a launch and an allocation per chunk, so its chunks are larger (first guess,
# benchmarks/gpu_check.py times it).
QUERY_CHUNK = {"cpu": 256, "cuda": 1024}


def query_chunk(spec, device: torch.device) -> int:
    """The chunk the masked engine runs: attention.query_chunk, or the device's default when null."""
    if spec.query_chunk is not None:
        return max(1, int(spec.query_chunk))
    return QUERY_CHUNK.get(device.type, QUERY_CHUNK["cpu"])


def native_gqa(device_type: str, dtype: torch.dtype, masked: bool) -> bool:
    """Whether SDPA takes the KV heads as they are (enable_gqa=True) rather than repeated per query head.

    CPU kernels take GQA as is. On CUDA only flash attention does, and flash takes neither a mask nor float32;
    the memory-efficient and cuDNN kernels need equal head counts, so enable_gqa there means the math kernel and a
    materialised (B, Hq, Q, K) float32 score tensor. Repeating K/V (O(K D) per head) keeps a fused kernel."""
    return device_type != "cuda" or (not masked and dtype in (torch.float16, torch.bfloat16))


def repeat_kv(x: torch.Tensor, g: int) -> torch.Tensor:
    """(B, Hkv, K, D) -> (B, Hkv * g, K, D): KV head h serves query heads h * g .. h * g + g - 1."""
    return x.repeat_interleave(g, dim=1)


def sdpa_kv(query, key, value, mask):
    """(key, value, enable_gqa) as _sdpa passes them to SDPA (benchmarks/gpu_check.py asks which kernel they get)."""
    g = query.shape[1] // key.shape[1]
    if g > 1 and not native_gqa(query.device.type, query.dtype, mask is not None):
        return repeat_kv(key, g), repeat_kv(value, g), False
    return key, value, g > 1


def _sdpa(query, key, value, mask, scaling, is_causal=False):
    """SDPA with KV heads shared by groups of query heads; query (B, Hq, Q, D), key/value (B, Hkv|Hq, K, D)."""
    key, value, gqa = sdpa_kv(query, key, value, mask)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling, is_causal=is_causal,
                                          enable_gqa=gqa)


class SdpaKV:
    """K/V as the masked engine's chunked SDPA calls take them, prepared once per call, not once per query chunk
    (at 8k tokens a per-chunk repeat copied ~0.6 GB per layer): repeated across query heads where the device's
    fused kernels need it (native_gqa), and in float32 for chunks whose mask carries a float score bias (the
    sampling estimator's -log p, kept in float32 as decode steps keep it)."""

    def __init__(self, key: torch.Tensor, value: torch.Tensor, Hq: int):
        self.key, self.value, self.g = key, value, Hq // key.shape[1]
        self._ready = {}

    def get(self, dtype: torch.dtype):
        """(key, value) in dtype, repeated to Hq heads if the device's masked kernels need it."""
        if dtype not in self._ready:
            key, value = self.key.to(dtype), self.value.to(dtype)
            if self.g > 1 and not native_gqa(key.device.type, dtype, masked=True):
                key, value = repeat_kv(key, self.g), repeat_kv(value, self.g)
            self._ready[dtype] = (key, value)
        return self._ready[dtype]


def _full_attention(query, key, value, key_valid, scaling, all_valid: Optional[bool]):
    B, Hq, Q, _ = query.shape
    K = key.shape[2]
    if all_valid is None:
        all_valid = bool(key_valid.all())
    if all_valid and (Q == K or Q == 1):  # what stock SDPA does: no materialised mask, same kernel
        return _sdpa(query, key, value, None, scaling, is_causal=Q > 1)
    slots = torch.arange(K - Q, K, device=key.device)  # (Q,)
    j = torch.arange(K, device=key.device)
    q_valid = key_valid[:, K - Q:]  # (B, Q)
    valid = key_valid[:, None, :] & (j[None, :] <= slots[:, None]) & q_valid[:, :, None]  # (B, Q, K)
    # Padding queries have an empty V(i): give them their own slot so no row is fully masked, then zero them.
    mask = valid | (~q_valid[:, :, None] & (j[None, :] == slots[:, None]))
    out = _sdpa(query, key, value, mask[:, None], scaling)  # (B, Hq, Q, Dv)
    return out.masked_fill(~q_valid[:, None, :, None], 0)


full_attention = _full_attention  # every causal key (stock SDPA when nothing is padding): apply_to=decode's prefill


def sparse_attention_counts(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_valid: torch.Tensor,
                            *, spec: SparseSpec, hasher=None, scaling: Optional[float] = None,
                            all_valid: Optional[bool] = None,
                            observe: Optional[Callable[[Candidates, float], None]] = None,
                            engine: Optional[str] = None, key_codes: Optional[torch.Tensor] = None,
                            reused_keys: int = 0, layer_idx: int = 0,
                            key_words: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Attention output (B, Hq, Q, Dv) and int64 counts [comparisons, full_comparisons, hash_ops, selection_ops] (4,).

    `all_valid` (optional) says key_valid has no padding, letting `full` skip the mask without a
    host sync. `observe(candidates, scaling)` is called once with the per-call candidate builder
    (retrieval diagnostics). `engine` (masked | flex) overrides resolve_engine(spec, ...). `key_codes`
    (L, B, Hkv, K) table-major in rules.base.code_dtype: key codes computed earlier, of which the first
    `reused_keys` were hashed by an earlier call (codecache.py) and are not counted again in hash_ops; `key_words`
    (W, B, Hkv, K) int64: the same codes byte-packed (packed.py), for rules that read them (Rule.packs_key_codes).
    `layer_idx`: the calling layer (rules seeded per layer read it).
    """
    B, Hq, Q, D = query.shape  # query (B, Hq, Q, D); key, value (B, Hkv, K, D)
    Hkv, K = key.shape[1], key.shape[2]
    if Hq % Hkv or key_valid.shape != (B, K) or Q > K:
        raise ValueError(f"sparse_attention: bad shapes query {tuple(query.shape)}, key {tuple(key.shape)}, "
                         f"key_valid {tuple(key_valid.shape)} (need Hq % Hkv == 0, key_valid (B, K), Q <= K)")
    scaling = D ** -0.5 if scaling is None else scaling
    key_valid = key_valid.to(device=key.device, dtype=torch.bool)

    q_valid = key_valid[:, K - Q:]  # (B, Q)
    n_visible = key_valid.to(torch.int64).cumsum(-1)[:, K - Q:]  # (B, Q): |V(i)| for a valid query
    full = (n_visible * q_valid).sum() * Hq
    hash_ops = torch.zeros((), dtype=torch.int64, device=key.device)
    selection_ops = torch.zeros((), dtype=torch.int64, device=key.device)  # set by the rules that select
    rule = spec.rule
    if rule.hashed and hasher is None:
        raise ValueError(f"attention={spec.variant} needs a hasher (got None)")
    if rule.hashed:
        # Count what is computed: keys reused from the code cache were hashed (and counted) by an earlier call.
        hash_ops = hasher.ops_per_vector * (q_valid.sum() * Hq + key_valid[:, reused_keys:].sum() * Hkv)

    if rule.dense and observe is None:
        out = _full_attention(query, key, value, key_valid, scaling, all_valid)
        return out, torch.stack([full, full, hash_ops, selection_ops])

    engine = engine or resolve_engine(spec, query, Q)
    if Q == 1 and observe is None and engine == "masked" and use_gather(Q, key.device):
        if all_valid is None:
            all_valid = bool(key_valid.all())  # the gather path syncs anyway (its compaction's sizes)
        fast = rule.one_query_call(spec, hasher, query, key, value, scaling, key_codes, key_words, full) \
            if all_valid else None
        if fast is not None:  # a decode step without a (heads x keys) candidate mask
            out, comparisons, selection_ops = fast
            return out, torch.stack([comparisons, full, hash_ops, selection_ops])

    cands = Candidates(query, key, key_valid, spec, hasher, key_codes=key_codes, layer_idx=layer_idx)
    selection_ops = cands.selection_ops(full)
    if observe is not None:
        observe(cands, scaling)
    if rule.dense:
        out = _full_attention(query, key, value, key_valid, scaling, all_valid)
        return out, torch.stack([full, full, hash_ops, selection_ops])

    if engine == "flex":
        from lsh_bitnet.attention.engines.flex import flex_sparse_attention

        out, comparisons = flex_sparse_attention(query, key, value, key_valid, cands, scaling, all_valid=all_valid)
        return out, torch.stack([comparisons, full, hash_ops, selection_ops])
    chunk = query_chunk(spec, key.device)
    gather = use_gather(Q, key.device)
    kv = SdpaKV(key, value, Hq)  # once per call: a repeat of K/V per chunk would copy them Q / chunk times
    comparisons = torch.zeros((), dtype=torch.int64, device=key.device)
    outs = []
    for a in range(0, Q, chunk):
        e = min(Q, a + chunk)
        qc, kc = e - a, K - Q + e  # keys past the chunk's last query are causally invisible
        q_idx = torch.arange(a, e, device=key.device)
        # Padding queries attend to their own slot only (never an empty softmax); zeroed and discounted below.
        cand, _ = cands.mask(q_idx, kc, pad_self=True)  # (B, Hkv|1, g|1, qc, kc)
        q_pad = ~q_valid[:, a:e]  # (B, qc)
        comparisons -= q_pad.sum() * Hq  # pad rows attend to their own slot only: not counted
        bias = cands.bias(q_idx, kc, where=cand)  # (B, Hkv, g, qc, kc) float32 or None
        if gather:  # decode: attend over the compacted candidates, not all K keys
            o, n = gather_attention(query[:, :, a:e], key[:, :, :kc], value[:, :, :kc], cand, bias, scaling)
            comparisons += n  # rows with no candidate are zeros already
            outs.append(o.masked_fill(q_pad[:, None, :, None], 0))
            continue
        heads_per_row = Hq // (cand.shape[1] * cand.shape[2])  # a head-independent mask stands for Hq rows
        comparisons += torch.count_nonzero(cand) * heads_per_row
        # the estimator's score term, as a float32 mask (-inf off the candidates): in bf16 a bias of 16-32 would be
        # rounded to steps of 0.125 (weights off by up to 6%), and decode steps (gather) add it in float32
        dtype = query.dtype if bias is None else torch.float32
        if bias is not None:
            cand = torch.where(cand, bias.float(), float("-inf"))
        mask = cand.reshape(B, -1, qc, kc)  # (B, Hq|1, qc, kc)
        if not spec.include_self:  # a valid query may have an empty C(i): attend to its own slot, zero it after
            hit = mask if bias is None else mask > float("-inf")
            has = hit.any(-1, keepdim=True)  # (B, Hq|1, qc, 1)
            own = torch.arange(kc, device=key.device) == (q_idx + K - Q).unsqueeze(1)  # (qc, kc)
            mask = mask | (~has & own) if bias is None else mask.masked_fill(~has & own, 0.0)
        k_all, v_all = kv.get(dtype)
        o = _sdpa(query[:, :, a:e].to(dtype), k_all[:, :, :kc], v_all[:, :, :kc], mask, scaling)  # (B, Hq, qc, Dv)
        o = o.to(query.dtype).masked_fill(q_pad[:, None, :, None], 0)
        outs.append(o if spec.include_self else o.masked_fill(~has, 0))
    weighting = rule.weighting_ops(spec, comparisons)  # e.g. the sampling estimator's terms per candidate weight
    if weighting is not None:
        selection_ops = selection_ops + weighting
    return torch.cat(outs, dim=2), torch.stack([comparisons, full, hash_ops, selection_ops])


def sparse_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_valid: torch.Tensor, *,
                     spec: SparseSpec, hasher=None, scaling: Optional[float] = None,
                     layer_idx: int = 0) -> Tuple[torch.Tensor, LayerCost]:
    """docs/ATTENTION-API.md: output (B, Hq, Q, Dv) and the exact LayerCost of this call."""
    out, counts = sparse_attention_counts(query, key, value, key_valid, spec=spec, hasher=hasher, scaling=scaling,
                                          layer_idx=layer_idx)
    return out, LayerCost(*(int(c) for c in counts.tolist()))

