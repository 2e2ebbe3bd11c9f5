"""Candidate sets C(i) for a block of queries (docs/ATTENTION-API.md; SPEC section 3).

`Candidates` is built once per attention call (positions, codes); `mask(q_idx, kc)` then gives the
bool candidate mask of any subset of queries against the first `kc` key slots, so peak memory is
O(len(q_idx) * kc) per head. The kernel feeds it contiguous query chunks; diagnostics feed it a sample.
Masks that do not depend on the head (full, window) keep shape (B, 1, 1, Qc, kc) and broadcast.
"""
import functools
import math
from fractions import Fraction
from typing import Optional, Tuple

import torch

# Codes of up to 30 bits are compared as int32: half the memory traffic of int64 on these
# (heads x queries x keys) tensors, and 2**30 thresholds still fit.
INT32_BITS = 30


@functools.lru_cache(maxsize=64)
def _budget_table(fraction: float, size: int) -> torch.Tensor:
    frac = Fraction(repr(float(fraction)))
    return torch.tensor([min(n, math.ceil(frac * n)) for n in range(size)], dtype=torch.int64)


def fraction_budgets(fraction: float, n: int) -> torch.Tensor:
    """Oracle budgets ceil(fraction * m) for m = 0..n (at least), exact for the decimal the user typed.

    In float64, 0.07 * 100 = 7.000000000000001 would ceil to 8: the fraction is read as the decimal
    repr(fraction) and multiplied exactly. Tables grow by powers of two, so decode steps hit the cache.
    """
    return _budget_table(float(fraction), 1 << max(n, 1).bit_length())


def row_count(mask: torch.Tensor) -> torch.Tensor:
    """Number of True per row of a bool (..., kc) tensor, as int64 (...). A uint8 sum is ~3x faster."""
    return mask.view(torch.uint8).sum(-1, dtype=torch.int32).to(torch.int64)


def top_k_mask(scores: torch.Tensor, valid: torch.Tensor, k_i: torch.Tensor, k_max: int) -> torch.Tensor:
    """The k_i highest-scoring valid keys per query, ties to the lower key slot.

    scores (..., Qc, kc) float32 (overwritten), valid broadcastable to it, k_i (..., Qc) long with
    k_i <= |valid row|, k_max >= max(k_i). Returns (..., Qc, kc) bool.
    """
    if k_max <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    s = scores.masked_fill_(~valid, float("-inf"))
    top = s.topk(k_max, dim=-1).values  # (..., Qc, k_max), sorted descending
    kth = top.gather(-1, (k_i - 1).clamp(min=0).unsqueeze(-1))  # (..., Qc, 1): the k_i-th best score
    chosen = (s >= kth) & (k_i > 0).unsqueeze(-1)
    excess = row_count(chosen) - k_i  # > 0 only where keys tie with the k_i-th score
    if bool((excess > 0).any()):  # rare with float scores: keep the lowest slots among the ties
        tied = s == kth
        need = k_i.unsqueeze(-1) - row_count(s > kth).unsqueeze(-1)
        chosen = (s > kth) | (tied & (tied.to(torch.int32).cumsum(-1, dtype=torch.int32) <= need))
    return chosen & valid & (k_i > 0).unsqueeze(-1)


class Candidates:
    """Per-call state: positions of every slot, hash codes of every query and key."""

    def __init__(self, query: torch.Tensor, key: torch.Tensor, key_valid: torch.Tensor, spec, hasher=None,
                 key_codes: Optional[torch.Tensor] = None):  # flex branch: key_codes (B, Hkv, K, L), cached
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
        if spec.variant in ("lsh", "lsh_forest"):
            if hasher is None:
                raise ValueError(f"attention={spec.variant} needs a hasher (got None)")
            self.bits = hasher.n_bits
            code_dtype = torch.int32 if self.bits <= INT32_BITS else torch.int64
            # Table-major and contiguous: the per-table broadcast compares below then run on unit strides.
            kc = hasher.codes(key) if key_codes is None else key_codes  # flex branch: decode reuses cached codes
            self.kcodes = kc.to(code_dtype).permute(3, 0, 1, 2).contiguous()  # (T, B, Hkv, K)
            qflat = self.query.reshape(B, Hkv, self.g * Q, D)
            qcodes = hasher.codes(qflat).to(code_dtype).view(B, Hkv, self.g, Q, -1)
            self.qcodes = qcodes.permute(4, 0, 1, 2, 3).contiguous()  # (T, B, Hkv, g, Q)

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
        valid, allowed, always = valid[:, None, None], allowed[:, None, None], always[:, None, None]

        variant = spec.variant
        if variant == "full":
            return allowed, valid
        if variant == "window":
            return always & allowed, valid
        if variant == "lsh":
            cand = self._bucket_match(q_idx, kc)
        elif variant == "lsh_forest":
            cand = self._forest(q_idx, kc, valid)
        elif variant == "oracle_topk":
            cand = self._oracle(q_idx, kc, valid)
        else:
            raise ValueError(f"attention.name={variant!r} is not a known variant")
        return cand.logical_or_(always).logical_and_(allowed), valid  # (B, Hkv, g, Qc, kc), in place

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

    def _oracle(self, q_idx, kc, valid):
        """The k_i best keys by q.k among V(i), k_i = min(k, |V|) or ceil(fraction * |V|)."""
        spec = self.spec
        n_valid = row_count(valid)  # (B, 1, 1, Qc)
        if spec.k is not None:
            k_i, k_max = n_valid.clamp(max=spec.k), min(spec.k, kc)
        else:
            budgets = fraction_budgets(spec.fraction, kc).to(n_valid.device)  # (>= kc + 1,)
            k_i, k_max = budgets[n_valid], int(budgets[kc])
        scores = self.scores(q_idx, kc)  # (B, Hkv, g, Qc, kc)
        return top_k_mask(scores, valid, k_i.expand(scores.shape[:-1]).contiguous(), k_max)
