"""Candidate sets C(i) for a block of queries (docs/ATTENTION-API.md; SPEC section 3).

`Candidates` is built once per attention call (positions, and what the rule prepares: hash codes,
indexes); `mask(q_idx, kc)` then gives the bool candidate mask of any subset of queries against the first
`kc` key slots, so peak memory is O(len(q_idx) * kc) per head. The kernel feeds it contiguous query chunks;
diagnostics feed it a sample. What C(i) is comes from the rule (spec.rule, lsh_bitnet/attention/rules/): this
class holds what every rule shares, V(i) and the always-attend sets. Masks that do not depend on the head
(full, window) keep shape (B, 1, 1, Qc, kc) and broadcast.
`bias(q_idx, kc)` is the estimator's additive score term (sampling: -log p_ij), None for softmax.
"""
from typing import List, Optional, Tuple

import torch

from lsh_bitnet.attention.collisions import int8_matmul  # noqa: F401 (re-exported)
from lsh_bitnet.attention.rules.base import INT32_BITS  # noqa: F401 (re-exported)
from lsh_bitnet.attention.topk import budgets, fraction_budgets, row_count, top_k_mask  # noqa: F401 (re-exported)


def agreement_dots(sq: torch.Tensor, sk: torch.Tensor) -> torch.Tensor:
    """sq . sk over +-1 bit vectors, sq (B, Hkv, g, Qc, n) and sk (B, Hkv, kc, n): (B, Hkv, g, Qc, kc), exact
    integers (int32 from int8 inputs, else float32).

    Agreeing bits = (n + sq . sk) / 2, so the dot ranks keys as the agreement count does."""
    B, Hkv, g, Qc, n = sq.shape
    kc = sk.shape[2]
    if sq.dtype != torch.int8:
        return torch.matmul(sq, sk[:, :, None].transpose(-1, -2))
    a = sq.reshape(B * Hkv, g * Qc, n)  # one matrix per KV head: its g query heads share the keys
    b = sk.reshape(B * Hkv, kc, n)
    out = torch.empty(B * Hkv, g * Qc, kc, dtype=torch.int32, device=sq.device)
    for i in range(B * Hkv):
        torch._int_mm(a[i], b[i].t(), out=out[i])
    return out.view(B, Hkv, g, Qc, kc)


def always_slots(K: int, sink_tokens: int, local_window: int, include_self: bool) -> List[int]:
    """The always-attend slots of the last of K valid keys' query (Candidates.sets, no padding): decode steps
    that build no masks (Rule.one_query_call)."""
    slots = set(range(min(sink_tokens, K))) | set(range(max(0, K - local_window), K))
    if include_self:
        slots.add(K - 1)
    return sorted(slots)


class Candidates:
    """Per-call state: positions of every slot, the queries and keys, and what the rule prepared."""

    def __init__(self, query: torch.Tensor, key: torch.Tensor, key_valid: torch.Tensor, spec, hasher=None,
                 key_codes: Optional[torch.Tensor] = None, layer_idx: int = 0):
        # query (B, Hq, Q, D), key (B, Hkv, K, D), key_valid (B, K); key_codes (L, B, Hkv, K): cached (codecache.py)
        B, Hq, Q, D = query.shape
        Hkv, K = key.shape[1], key.shape[2]
        self.spec, self.hasher, self.rule = spec, hasher, spec.rule
        self.layer_idx = layer_idx  # which layer this call belongs to (rules seeded per layer)
        self.B, self.Hkv, self.g, self.Q, self.K = B, Hkv, Hq // Hkv, Q, K
        self.q_offset = K - Q  # query i sits at key slot K - Q + i
        self.key_valid = key_valid
        self.count = key_valid.to(torch.int64).cumsum(-1)  # (B, K): valid slots up to and including j
        self.query = query.view(B, Hkv, self.g, Q, D)  # (B, Hkv, g, Q, D): head h -> KV head h // g
        self.key = key
        self.key_f: Optional[torch.Tensor] = None
        # Hashed rules: the hasher's code width and codes (T, B, Hkv, g, Q) / (T, B, Hkv, K), read by flex too.
        self.bits: Optional[int] = None
        self.qcodes = self.kcodes = None
        self.rule.prepare(self, key_codes)

    def scores(self, q_idx: torch.Tensor, kc: int) -> torch.Tensor:
        """Unscaled q.k in float32 for the queries q_idx against key slots [0, kc): (B, Hkv, g, Qc, kc)."""
        if self.key_f is None:
            self.key_f = self.key.float()
        q = self.query.index_select(3, q_idx).float()  # (B, Hkv, g, Qc, D)
        return torch.matmul(q, self.key_f[:, :, None, :kc].transpose(-1, -2))

    def mask(self, q_idx: torch.Tensor, kc: int, pad_self: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """C(i) (B, Hkv|1, g|1, Qc, kc) bool and V(i) (B, 1, 1, Qc, kc) bool for queries q_idx, keys [0, kc).

        Padding queries have empty V(i) and C(i); with pad_self their C row is exactly their own slot,
        so that attention over it is never an empty softmax (the kernel zeroes and discounts those rows).
        """
        valid, allowed, always = self.sets(q_idx, kc, pad_self)
        return self.rule.mask(self, q_idx, kc, valid, allowed, always), valid

    def sets(self, q_idx, kc, pad_self=False):
        """V(i), the allowed slots (V plus a padding query's own slot with pad_self) and the always-attend
        sets, each (B, 1, 1, Qc, kc) bool."""
        spec = self.spec
        slots = q_idx + self.q_offset  # (Qc,)
        j = torch.arange(kc, device=q_idx.device)
        own = (j.unsqueeze(0) == slots.unsqueeze(1)).unsqueeze(0)  # (1, Qc, kc)
        q_valid = self.key_valid.index_select(1, slots).unsqueeze(-1)  # (B, Qc, 1)
        valid = self.key_valid[:, None, :kc] & (j.unsqueeze(0) <= slots.unsqueeze(1)) & q_valid  # (B, Qc, kc)
        allowed = valid | (own & ~q_valid) if pad_self else valid
        # Always-attend sets (positions p = count - 1): self, sinks p(j) < sink_tokens, window p(i) - p(j) < w.
        always = own & ~q_valid if pad_self else torch.zeros_like(valid)
        if spec.include_self:
            always = always | own
        kcount = self.count[:, :kc]  # (B, kc)
        if spec.sink_tokens > 0:
            always = always | (kcount <= spec.sink_tokens).unsqueeze(1)
        if spec.local_window > 0:
            qcount = self.count.index_select(1, slots)  # (B, Qc)
            always = always | ((qcount.unsqueeze(-1) - kcount.unsqueeze(1)) < spec.local_window)
        return valid[:, None, None], allowed[:, None, None], always[:, None, None]

    _sets = sets  # the name tests use

    # ------------------------------------------------------------------ estimator and selection cost
    def bias(self, q_idx: torch.Tensor, kc: int, where: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """Additive score term (B, Hkv, g, Qc, kc) float32 on candidates: -log p_ij (sampling), else None.

        `where` (the candidate mask, broadcastable) limits the float64 work to those entries; elsewhere 0."""
        return self.rule.bias(self, q_idx, kc, where)

    def selection_ops(self, visible: torch.Tensor) -> torch.Tensor:
        """Exact selection cost of this call (docs/SPEC.md "selection_ops"); visible = sum of |V(i)| over
        query heads and valid queries (= full_comparisons)."""
        return self.rule.selection_ops(self, visible)
