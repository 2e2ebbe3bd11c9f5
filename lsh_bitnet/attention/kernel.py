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
from lsh_bitnet.attention.engines.gather import GATHER_MAX_QUERIES, gather_attention
from lsh_bitnet.attention.spec import SparseSpec


def flex_unsupported(spec) -> Optional[str]:
    """Why flex cannot run this spec (None if it can): the rule's own answer (Rule.refusal)."""
    return spec.rule.refusal(spec, "flex")


def resolve_engine(spec: "SparseSpec", query: torch.Tensor, Q: int) -> str:
    """The engine that runs this call: `masked` or `flex` (a dense rule always runs stock SDPA)."""
    rule, engine = spec.rule, spec.engine
    if rule.dense:
        return "masked"
    if engine == "auto":
        grad = torch.is_grad_enabled() and query.requires_grad  # compiled flex on CPU is inference-only
        return "flex" if flex_unsupported(spec) is None and Q >= rule.auto_flex_min_queries(spec) and not grad \
            else "masked"
    if engine == "flex" and flex_unsupported(spec) is not None:
        raise ValueError(f"attention.engine=flex cannot run {flex_unsupported(spec)}: use attention.engine=masked")
    return str(engine)


@dataclass
class LayerCost:
    comparisons: int
    full_comparisons: int
    hash_ops: int
    selection_ops: int = 0


def _sdpa(query, key, value, mask, scaling, is_causal=False):
    """SDPA with KV heads shared by groups of query heads; query (B, Hq, Q, D), key/value (B, Hkv, K, D)."""
    g = query.shape[1] // key.shape[1]
    if g > 1 and mask is not None and query.device.type == "cuda":
        # With a mask, CUDA's GQA path falls back to the math kernel: repeat KV as transformers does.
        key, value = key.repeat_interleave(g, dim=1), value.repeat_interleave(g, dim=1)
        g = 1
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling, is_causal=is_causal,
                                          enable_gqa=g > 1)


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
                            reused_keys: int = 0, layer_idx: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Attention output (B, Hq, Q, Dv) and int64 counts [comparisons, full_comparisons, hash_ops, selection_ops] (4,).

    `all_valid` (optional) says key_valid has no padding, letting `full` skip the mask without a
    host sync. `observe(candidates, scaling)` is called once with the per-call candidate builder
    (retrieval diagnostics). `engine` (masked | flex) overrides resolve_engine(spec, ...). `key_codes`
    (B, Hkv, K, L): key codes computed earlier, of which the first `reused_keys` were hashed by an earlier
    call (codecache.py) and are not counted again in hash_ops. `layer_idx`: the calling layer (rules seeded per
    layer read it).
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

    cands = Candidates(query, key, key_valid, spec, hasher, key_codes=key_codes, layer_idx=layer_idx)
    selection_ops = cands.selection_ops(full)
    if observe is not None:
        observe(cands, scaling)
    if rule.dense:
        out = _full_attention(query, key, value, key_valid, scaling, all_valid)
        return out, torch.stack([full, full, hash_ops, selection_ops])

    if (engine or resolve_engine(spec, query, Q)) == "flex":
        from lsh_bitnet.attention.engines.flex import flex_sparse_attention

        out, comparisons = flex_sparse_attention(query, key, value, key_valid, cands, scaling)
        return out, torch.stack([comparisons, full, hash_ops, selection_ops])
    chunk = max(1, int(spec.query_chunk))
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
        if Q <= GATHER_MAX_QUERIES:  # decode: attend over the compacted candidates, not all K keys
            o, n = gather_attention(query[:, :, a:e], key[:, :, :kc], value[:, :, :kc], cand, bias, scaling)
            comparisons += n  # rows with no candidate are zeros already
            outs.append(o.masked_fill(q_pad[:, None, :, None], 0))
            continue
        heads_per_row = Hq // (cand.shape[1] * cand.shape[2])  # a head-independent mask stands for Hq rows
        comparisons += torch.count_nonzero(cand) * heads_per_row
        if bias is not None:  # the estimator's score term, as a float mask (-inf off the candidates)
            cand = torch.where(cand, bias.to(query.dtype), float("-inf"))
        mask = cand.reshape(B, -1, qc, kc)  # (B, Hq|1, qc, kc)
        if not spec.include_self:  # a valid query may have an empty C(i): attend to its own slot, zero it after
            hit = mask if bias is None else mask > float("-inf")
            has = hit.any(-1, keepdim=True)  # (B, Hq|1, qc, 1)
            own = torch.arange(kc, device=key.device) == (q_idx + K - Q).unsqueeze(1)  # (qc, kc)
            mask = mask | (~has & own) if bias is None else mask.masked_fill(~has & own, 0.0)
        o = _sdpa(query[:, :, a:e], key[:, :, :kc], value[:, :, :kc], mask, scaling)  # (B, Hq, qc, Dv)
        o = o.masked_fill(q_pad[:, None, :, None], 0)
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

