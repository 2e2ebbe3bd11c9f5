"""Multi-probe bucket scores s_ij for attention=lsh_probe (SPEC sections 7.1 and 7.3).

With d_t(i, j) the Hamming distance between the codes of q_i and k_j in table t, a probe of radius r visits the
buckets within distance r of h_t(q_i); each key found there gains r + 1 - d_t(i, j), so

    s_ij = sum_t max(0, r + 1 - d_t(i, j)),

which is the collision count at r = 0 and, at r = K (every bucket visited), L + the agreeing bits over all tables
(lsh_topk's soft score plus a constant). Two ways to the same integers:
- dense: per table, d = popcount(qcode XOR kcode) over the (Qc, kc) block: any device, any code width;
- one-hot (CPU): s_ij = w(q_i) . onehot(k_j) over the L * 2**bits (table, bucket) slots, w(q_i) holding each
  visited bucket's gain: exact int8 matmuls (VNNI), ~7x faster than dense at 8 bits x 32 tables.
`chunk()` also sums n_ij, the number of tables within the radius (the times a probe finds key j), over V(i): the
selection count of SPEC section 7.3. One-hot: the keys every query of a chunk sees ([0, lo), lo the first query's
slot) enter as one running histogram per (table, bucket), the rest as a (queries x chunk keys) int8 matmul.
"""
import math

import torch

from lsh_bitnet.attention.collisions import ONEHOT_MAX_BYTES, SORT_MIN_QUERIES, _onehot, int8_matmul

# One-hot rows have L * 2**bits int8 entries per key: past 10 bits the matmul costs more than the dense pass.
ONEHOT_MAX_BITS = 10
# SWAR popcount masks (Hacker's Delight 5-1); codes are non-negative, so arithmetic shifts are logical here.
_M1, _M2, _M4 = 0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F


def n_probes(bits: int, radius: int) -> int:
    """Buckets visited per (table, query): codes within Hamming distance `radius` of the query's."""
    return sum(math.comb(bits, d) for d in range(min(radius, bits) + 1))


def popcount(x: torch.Tensor) -> torch.Tensor:
    """Set bits of each non-negative int32 / int64 entry (same dtype)."""
    wide = x.dtype == torch.int64
    m1, m2, m4 = (_M1, _M2, _M4) if wide else (_M1 & 0x7FFFFFFF, _M2 & 0x7FFFFFFF, _M4 & 0x7FFFFFFF)
    x = x - ((x >> 1) & m1)
    x = (x & m2) + ((x >> 2) & m2)
    x = (x + (x >> 4)) & m4
    x = x + (x >> 8)
    x = x + (x >> 16)
    if wide:
        x = x + (x >> 32)
    return x & 0x7F


class ProbeScores:
    def __init__(self, qcodes: torch.Tensor, kcodes: torch.Tensor, key_valid: torch.Tensor, n_bits: int,
                 radius: int, q_offset: int):
        """qcodes (L, B, Hkv, g, Q), kcodes (L, B, Hkv, K) integer codes; key_valid (B, K); query i at slot
        q_offset + i."""
        L, B, H, K = kcodes.shape
        self.qcodes, self.kcodes, self.key_valid, self.q_offset = qcodes, kcodes, key_valid, q_offset
        self.L, self.B, self.H, self.g, self.K, self.Q = L, B, H, qcodes.shape[3], K, qcodes.shape[4]
        self.bits, self.radius = n_bits, min(radius, n_bits)
        self.bound = L * (self.radius + 1)  # s_ij in [0, bound]
        self.onehot_ok = (n_bits <= ONEHOT_MAX_BITS and int8_matmul(kcodes.device, L << n_bits)
                          and self.Q >= SORT_MIN_QUERIES and B * H * K * (L << n_bits) <= ONEHOT_MAX_BYTES)
        self._key_onehot = self._gain = None
        self._hist = (0, None)  # (lo, valid keys of slots [0, lo) per (row x KV head, table x bucket)) int64

    def chunk(self, q_idx: torch.Tensor, kc: int, visible: torch.Tensor):
        """(s, found) for queries q_idx and key slots [0, kc): s_ij (B, Hkv, g, Qc, kc) int32 over every slot (the
        caller masks V(i)), and the sum of n_ij over the `visible` (B, 1, 1, Qc, kc) pairs (V(i)), int64 scalar."""
        if not self.onehot_ok:
            s, n = self._dense(q_idx, kc)
            return s, (n * visible).sum()
        B, H, g, Qc = self.B, self.H, self.g, q_idx.shape[0]
        gain = self._rows(q_idx)  # (B*H, g*Qc, L * 2**bits) int8
        s = self._matmul(gain, 0, kc).view(B, H, g, Qc, kc)
        lo = min(int(q_idx.min()) + self.q_offset, kc)  # every valid query of the chunk sees the valid keys < lo
        late = self._matmul((gain > 0).view(torch.int8), lo, kc).view(B, H, g, Qc, kc - lo) * visible[..., lo:]
        seen = visible.any(-1).expand(B, H, g, Qc)  # valid queries
        return s, self._early(q_idx, lo)[seen].sum() + late.sum()

    # ------------------------------------------------------------------ the two ways
    def _dense(self, q_idx: torch.Tensor, kc: int):
        """(s, n) by one popcount pass per table: (B, Hkv, g, Qc, kc) int32 each."""
        qc = self.qcodes.index_select(4, q_idx).unsqueeze(-1)  # (L, B, H, g, Qc, 1)
        kcodes = self.kcodes[:, :, :, None, None, :kc]  # (L, B, H, 1, 1, kc)
        # int16 sums halve the memory traffic of int32 on (Qc, kc) tensors while L * (r + 1) fits
        dtype = torch.int16 if self.bound < (1 << 15) else torch.int32
        s = torch.zeros(qc.shape[1:-1] + (kc,), dtype=dtype, device=qc.device)
        n = torch.zeros_like(s)
        for t in range(self.L):  # one (Qc, kc) block per table keeps memory flat
            gain = (self.radius + 1 - popcount(qc[t] ^ kcodes[t])).clamp_(min=0)
            s.add_(gain.to(dtype))
            n.add_(gain > 0)
        return s.to(torch.int32), n.to(torch.int32)

    def _gains(self) -> torch.Tensor:
        """(2**bits, 2**bits) int8 gain of a key in bucket b for a query in bucket a; builds the keys' one-hot rows
        (B*H, K, L * 2**bits) int8 on first use (once per call)."""
        if self._gain is None:
            L, B, H = self.L, self.B, self.H
            self._key_onehot = _onehot(self.kcodes.permute(1, 2, 3, 0).reshape(B * H, self.K, L), self.bits)
            codes = torch.arange(1 << self.bits, device=self.kcodes.device)
            dist = popcount(codes[:, None] ^ codes[None, :])  # (2**bits, 2**bits)
            self._gain = (self.radius + 1 - dist).clamp_(min=0).to(torch.int8)
        return self._gain

    def _rows(self, q_idx: torch.Tensor) -> torch.Tensor:
        """Each query's gain per (table, bucket): (B*H, g*Qc, L * 2**bits) int8."""
        B, H, L = self.B, self.H, self.L
        qc = self.qcodes.index_select(4, q_idx)  # (L, B, H, g, Qc)
        index = qc.permute(1, 2, 3, 4, 0).reshape(B * H, -1, L).long().contiguous()  # the result's layout
        return self._gains()[index].view(B * H, -1, L << self.bits)

    def _matmul(self, rows: torch.Tensor, lo: int, kc: int) -> torch.Tensor:
        """rows . onehot(k_j) for key slots [lo, kc): (B*H, g*Qc, kc - lo) int32 (exact int8 matmuls)."""
        out = torch.empty(rows.shape[0], rows.shape[1], kc - lo, dtype=torch.int32, device=rows.device)
        if kc > lo:
            for i in range(rows.shape[0]):
                torch._int_mm(rows[i], self._key_onehot[i, lo:kc].t(), out=out[i])
        return out

    def _early(self, q_idx: torch.Tensor, lo: int) -> torch.Tensor:
        """sum of n_ij over the valid keys j < lo, for queries q_idx: (B, Hkv, g, Qc) int64. From the per-(table,
        bucket) histogram of those keys, summed over each bucket's radius (a (2**bits)^2 matmul per chunk) and read
        at the queries' codes; the histogram grows from the last chunk's when the chunks come in order."""
        last, hist = self._hist
        BH, W = self.B * self.H, 1 << self.bits
        if hist is None or lo < last:
            last, hist = 0, torch.zeros(BH, self.L * W, dtype=torch.int64, device=self.kcodes.device)
        if lo > last:
            valid = self.key_valid[:, None, last:lo, None].expand(self.B, self.H, lo - last, 1).reshape(BH, -1, 1)
            hist = hist + (self._key_onehot[:, last:lo] * valid).sum(1, dtype=torch.int64)
        self._hist = (lo, hist)
        within = (self._gains() > 0).double()  # (W, W): bucket c lies within the radius of bucket a
        near = (hist.view(BH, self.L, W).double() @ within).round_().long()  # (BH, L, W): keys within reach of a
        qc = self.qcodes.index_select(4, q_idx).permute(1, 2, 0, 3, 4).reshape(BH, self.L, -1).long()  # (BH, L, g*Qc)
        return near.gather(2, qc).sum(1).view(self.B, self.H, self.g, -1)
