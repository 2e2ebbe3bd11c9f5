"""Candidate sets C(i) for a block of queries (docs/ATTENTION-API.md; SPEC section 3).

`Candidates` is built once per attention call (positions, codes); `mask(q_idx, kc)` then gives the
bool candidate mask of any subset of queries against the first `kc` key slots, so peak memory is
O(len(q_idx) * kc) per head. The kernel feeds it contiguous query chunks; diagnostics feed it a sample.
Masks that do not depend on the head (full, window) keep shape (B, 1, 1, Qc, kc) and broadcast.
`bias(q_idx, kc)` is the estimator's additive score term (sampling: -log p_ij), None for softmax.
"""
import math
from typing import Optional, Tuple

import torch

from lsh_bitnet.attention import estimators
from lsh_bitnet.attention.collisions import CollisionIndex, int8_matmul
from lsh_bitnet.attention.topk import budgets, fraction_budgets, row_count, top_k_mask  # noqa: F401 (re-exported)

# Codes of up to 30 bits are compared as int32: half the memory traffic of int64 on these
# (heads x queries x keys) tensors, and 2**30 thresholds still fit.
INT32_BITS = 30


def _plus_minus_one(bits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(..., L, K) bool hash bits -> (..., L*K) +-1 of dtype."""
    return bits.flatten(-2).to(dtype).mul_(2).sub_(1)


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


class Candidates:
    """Per-call state: positions of every slot, hash codes of every query and key."""

    def __init__(self, query: torch.Tensor, key: torch.Tensor, key_valid: torch.Tensor, spec, hasher=None,
                 key_codes: Optional[torch.Tensor] = None):  # key_codes (B, Hkv, K, L): cached (codecache.py)
        B, Hq, Q, D = query.shape  # query (B, Hq, Q, D), key (B, Hkv, K, D), key_valid (B, K)
        Hkv, K = key.shape[1], key.shape[2]
        self.spec, self.hasher = spec, hasher
        self.B, self.Hkv, self.g, self.Q, self.K = B, Hkv, Hq // Hkv, Q, K
        self.q_offset = K - Q  # query i sits at key slot K - Q + i
        self.key_valid = key_valid
        self.count = key_valid.to(torch.int64).cumsum(-1)  # (B, K): valid slots up to and including j
        self.query = query.view(B, Hkv, self.g, Q, D)  # (B, Hkv, g, Q, D): head h -> KV head h // g
        self.key = key
        self.key_f: Optional[torch.Tensor] = None
        self.qcodes = self.kcodes = None
        self.index: Optional[CollisionIndex] = None
        self.soft = None
        if spec.hashed:
            if hasher is None:
                raise ValueError(f"attention={spec.variant} needs a hasher (got None)")
            if hasher.center == "prompt" and Q == K:  # a prefill: its keys define mu, kept for decode steps
                hasher.set_prompt_center(key, key_valid)
            self.bits = hasher.n_bits
            code_dtype = torch.int32 if self.bits <= INT32_BITS else torch.int64
            qflat = self.query.reshape(B, Hkv, self.g * Q, D)
            if spec.variant == "lsh_topk" and spec.score == "soft":
                # +-1 bit vectors over all tables: agreeing bits = (L*K + sq . sk) / 2, one matmul per chunk
                dtype = torch.int8 if int8_matmul(query.device, hasher.n_bits * hasher.n_tables) else torch.float32
                self.soft = (_plus_minus_one(hasher.bits(qflat), dtype).view(B, Hkv, self.g, Q, -1),
                             _plus_minus_one(hasher.key_bits(key), dtype))  # (B,Hkv,g,Q,LK), (B,Hkv,K,LK)
                return
            # Table-major and contiguous: the per-table broadcast compares below then run on unit strides.
            kc = hasher.key_codes(key) if key_codes is None else key_codes  # decode reuses cached codes (codecache.py)
            self.kcodes = kc.to(code_dtype).permute(3, 0, 1, 2).contiguous()  # (T, B, Hkv, K)
            qcodes = hasher.codes(qflat).to(code_dtype).view(B, Hkv, self.g, Q, -1)
            self.qcodes = qcodes.permute(4, 0, 1, 2, 3).contiguous()  # (T, B, Hkv, g, Q)
            if spec.variant in ("lsh", "lsh_topk"):
                self.index = CollisionIndex(self.qcodes, self.kcodes, key_valid, self.bits, self.q_offset)

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
        valid, allowed, always = self._sets(q_idx, kc, pad_self)
        variant = self.spec.variant
        if variant == "full":
            return allowed, valid
        if variant == "window":
            return always & allowed, valid
        if variant == "lsh":
            m = self.spec.min_collisions
            counts = self.index.counts(q_idx, kc, dense_ok=m > 1)
            cand = self._bucket_match(q_idx, kc) if counts is None else counts >= m  # dense union: OR, not add
        elif variant == "lsh_forest":
            cand = self._forest(q_idx, kc, valid)
        elif variant == "oracle_topk":
            cand = self._topk(self.scores(q_idx, kc), valid, kc)
        elif variant == "lsh_topk":
            cand = self._topk(self._lsh_scores(q_idx, kc), valid, kc, int_bound=self._lsh_score_bound())
        else:
            raise ValueError(f"attention.name={variant!r} is not a known variant")
        return cand.logical_or_(always).logical_and_(allowed), valid  # (B, Hkv, g, Qc, kc), in place

    def _sets(self, q_idx, kc, pad_self=False):
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

    def _topk(self, scores, valid, kc, int_bound=None):
        """The k_i best keys of V(i) by `scores` (B, Hkv, g, Qc, kc), ties to the lower slot: float32, or exact
        integers in [-int_bound, int_bound] (topk.top_k_mask)."""
        k_i, k_max = budgets(self.spec.k, self.spec.fraction, row_count(valid), kc)  # (B, 1, 1, Qc)
        return top_k_mask(scores, valid, k_i.expand(scores.shape[:-1]).contiguous(), k_max, int_bound)

    def _lsh_score_bound(self) -> int:
        """lsh_topk scores are integers in [-R, R]: +-1 bit products summed over L*K bits, or counts <= L."""
        return self.soft[0].shape[-1] if self.soft is not None else self.spec.n_tables

    def _lsh_scores(self, q_idx, kc):
        """lsh_topk scores (B, Hkv, g, Qc, kc), exact integers: collision counts, or agreeing bits over all tables
        (as sq . sk over +-1 bits)."""
        if self.soft is not None:
            sq, sk = self.soft
            return agreement_dots(sq.index_select(3, q_idx), sk[:, :, :kc])
        return self.index.counts(q_idx, kc)

    # ------------------------------------------------------------------ estimator and selection cost
    def bias(self, q_idx: torch.Tensor, kc: int, where: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """Additive score term (B, Hkv, g, Qc, kc) float32 on candidates: -log p_ij (sampling), else None.

        `where` (the candidate mask, broadcastable) limits the float64 work to those entries; elsewhere 0."""
        if self.spec.estimator != "sampling":
            return None
        h, spec = self.hasher, self.spec
        q = self.query.index_select(3, q_idx).float()  # (B, Hkv, g, Qc, D)
        kh = h.hashed_key(self.key[:, :, :kc]).float()[:, :, None]  # (B, Hkv, 1, kc, D)
        _, _, always = self._sets(q_idx, kc)
        shape = q.shape[:-1] + (kc,)
        need = ~always.expand(shape) if where is None else where.expand(shape) & ~always  # p = 1 on always keys
        if h.name == "simhash":
            dots = torch.matmul(q, kh.transpose(-1, -2))  # (B, Hkv, g, Qc, kc)
            norms = q.norm(dim=-1, keepdim=True) * kh.norm(dim=-1).unsqueeze(-2)
            log_p1 = estimators.log_p_simhash((dots / norms.clamp(min=1e-30))[need], h.n_bits)  # (n_need,)
        else:  # bit_sampling: coordinates where (q_c > 0) == (k_c > 0), counted by a +-1 matmul
            sq, sk = (q > 0).float() * 2 - 1, (kh > 0).float() * 2 - 1
            agree = (q.shape[-1] + torch.matmul(sq, sk.transpose(-1, -2))) / 2
            log_p1 = estimators.log_p_bit_sampling(agree[need], h.n_bits, h.head_dim)
        bias = torch.zeros(shape, dtype=torch.float32, device=q.device)
        bias[need] = estimators.sampling_bias(estimators.log_tail(log_p1, spec.n_tables, spec.min_collisions))
        return bias

    def selection_ops(self, visible: torch.Tensor) -> torch.Tensor:
        """Exact selection cost of this call (docs/SPEC.md "selection_ops"); visible = sum of |V(i)| over
        query heads and valid queries (= full_comparisons)."""
        spec = self.spec
        q_valid = self.key_valid[:, self.q_offset:]  # (B, Q)
        if spec.variant == "lsh":
            return self.index.pairs(q_valid)
        if spec.variant == "lsh_topk":
            if self.soft is not None:  # L*K bit agreements per (query head, visible key), then the selection
                return visible * (self.soft[0].shape[-1] + 1)
            return self.index.pairs(q_valid) + visible
        if spec.variant == "lsh_forest":  # a min over trees and a binary search over depths, per visible key
            return visible * (spec.n_trees + math.ceil(math.log2(self.bits + 1)))
        if spec.variant == "oracle_topk":
            return visible
        return torch.zeros((), dtype=torch.int64, device=visible.device)

    def _bucket_match(self, q_idx, kc):
        """Union over tables of equal codes: (B, Hkv, g, Qc, kc)."""
        qc = self.qcodes.index_select(4, q_idx).unsqueeze(-1)  # (T, B, Hkv, g, Qc, 1)
        kcodes = self.kcodes[:, :, :, None, None, :kc]  # (T, B, Hkv, 1, 1, kc)
        match = None
        for t in range(qc.shape[0]):  # one pass per table keeps memory at one (Qc, kc) bool per head
            eq = qc[t] == kcodes[t]
            match = eq if match is None else match.logical_or_(eq)
        return match

    def _forest(self, q_idx, kc, valid):
        """Synchronous LSH-forest descent: the deepest shared-prefix depth that keeps min_candidates keys.

        lcp_t(i, j) >= x  <=>  (code_t(i) XOR code_t(j)) < 2**(d - x), so the max over trees of lcp is
        read off the min over trees of the XOR. x* (the largest x whose set holds >= target keys of V)
        is found per query by binary search over [0, d]: ceil(log2(d + 1)) counting passes.
        """
        d, mc = self.bits, self.spec.min_candidates
        qc = self.qcodes.index_select(4, q_idx).unsqueeze(-1)  # (T, B, Hkv, g, Qc, 1)
        kcodes = self.kcodes[:, :, :, None, None, :kc]  # (T, B, Hkv, 1, 1, kc)
        minxor = None
        for t in range(qc.shape[0]):
            x = torch.bitwise_xor(qc[t], kcodes[t])  # (B, Hkv, g, Qc, kc)
            minxor = x if minxor is None else torch.minimum(minxor, x, out=minxor)
        minxor.masked_fill_(~valid, 2 ** d)  # not below any threshold 2**(d - x): invalid keys never count
        # x = 0 always qualifies (|V| >= target), so lo starts there and the search only tests x >= 1.
        target = row_count(valid).clamp(max=mc).expand(minxor.shape[:-1])  # (B, Hkv, g, Qc)
        lo = torch.zeros_like(target)
        hi = torch.full_like(target, d)
        for _ in range(math.ceil(math.log2(d + 1))):
            mid = (lo + hi + 1) // 2
            thr = torch.bitwise_left_shift(torch.ones_like(mid), d - mid).to(minxor.dtype).unsqueeze(-1)
            ok = row_count(minxor < thr) >= target
            lo = torch.where(ok, mid, lo)
            hi = torch.where(ok, hi, mid - 1)
        thr = torch.bitwise_left_shift(torch.ones_like(lo), d - lo).to(minxor.dtype).unsqueeze(-1)
        return minxor < thr

