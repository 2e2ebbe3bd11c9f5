"""Collision counts c_ij = |{t : h_t(q_i) == h_t(k_j)}| over L tables, for m-of-L and lsh_topk (SPEC section 7).

Three ways to the same integers:
- dense: one (Qc, kc) equality per table, added up. Cost L * Qc * kc per head whatever the bucket sizes:
  at L = 128 and 1024 tokens that is most of a forward pass.
- sorted: the keys of every (table, row, KV head) segment are sorted by (code, slot) packed in one int64; the
  keys colliding with query i in table t are then one contiguous range, found by two binary searches,
  and causality is part of the range (slots <= s(i)). The colliding (i, j, t) triples are enumerated
  and scatter-added. Cost ~ the number of collisions, which is what a bucket table would touch.
- one-hot (CPU): c_ij = onehot(q_i) . onehot(k_j) over the L * 2**bits (table, bucket) slots, as exact int8
  matmuls (int32 sums). Cost L * 2**bits multiply-adds per (query, key), which VNNI runs ~150 to the price
  of one dense byte comparison: cheaper than dense up to 6-bit codes.
`CollisionIndex.counts` picks the cheapest per query chunk from the unit costs measured below, priced by each
query's number of collisions (running per-bucket counts for short codes, else the sorted ranges). `pairs()`
(the number of causal colliding (query head, query, table, key) triples) is the exact selection cost of a
bucket lookup (cost.selection_ops), whichever way counted.
"""

import torch

from lsh_bitnet.attention.hostsync import sync_free

# Packed sort keys are int64 and non-negative: code and slot bits must fit in 62 bits.
PACK_BITS = 62
# Costs per query chunk in units of one dense (query, key, table) byte comparison (~1.15 ns at 1 thread),
# measured with benchmarks/bench_collisions.py (docs/BENCHMARKS.md). The sorted path enumerates each
# collision with ~10 int64 ops whose gathers and scatter miss the cache (~95 ns each), plus a bincount
# output over every (query, key) pair.
SORTED_COST_PER_COLLISION = 80
SORTED_COST_PER_PAIR = 4
# int8 VNNI multiply-adds of the one-hot product per dense byte comparison (0.0075 ns against 1.15 ns).
ONEHOT_MACS_PER_COMPARE = 150
# The keys' one-hot rows live for the whole call: at most this many bytes (m-of-L 6 bits x 64 tables at
# 8192 tokens, SmolLM2's 3 KV heads: 100 MB).
ONEHOT_MAX_BYTES = 1 << 28
# Sorting (or one-hot coding) costs O(K log K) (or K * L * 2**bits) per (row, KV head) whatever Q is; one
# dense equality per table costs Q * K. For a decode step (Q = 1) the sort of the whole cache was most of
# the step's time (docs/BENCHMARKS.md, decode): below this many queries the counts are dense.
SORT_MIN_QUERIES = 8
# Up to 6-bit codes each query's collisions per table come from running per-bucket counts instead of the
# sorted ranges: 0.23x their time at 6 x 32 and 1024 tokens, 0.47x at 8192; at 7 bits 0.74x at 1024 but
# 1.24-1.35x from 4096 on, at 8 bits 2.4-3.1x (benchmarks/bench_collisions.py, second table).
RUNNING_COUNT_MAX_BITS = 6
# ... and while one table's running counts (rows x KV heads x K x 2**bits int32) stay small.
RUNNING_COUNT_MAX_BYTES = 1 << 26


# torch's CPU _int_mm (2.13) returns wrong sums when the inner dimension is 1; from 2 on it is exact
# (tests/test_topk.py checks our int8 paths at inner dimensions 1-3 against float matmuls).
INT_MM_MIN_INNER = 2


def int8_matmul(device: torch.device, inner: int) -> bool:
    """Whether integer dot products over `inner` terms run as int8 matmuls (exact int32 sums): on CPU
    VNNI runs them ~4x faster than float32 (8 x 32 centred tables, 768 x 256 x 4096: 2.8 ms against 11.6 ms)."""
    return device.type == "cpu" and hasattr(torch, "_int_mm") and inner >= INT_MM_MIN_INNER


class CollisionIndex:
    def __init__(self, qcodes: torch.Tensor, kcodes: torch.Tensor, key_valid: torch.Tensor, n_bits: int,
                 q_offset: int):
        """qcodes (L, B, Hkv, g, Q), kcodes (L, B, Hkv, K) integer codes; key_valid (B, K)."""
        L, B, H, K = kcodes.shape
        self.qcodes, self.kcodes, self.q_offset, self.key_valid = qcodes, kcodes, q_offset, key_valid
        self.L, self.B, self.H, self.g, self.K, self.Q = L, B, H, qcodes.shape[3], K, qcodes.shape[4]
        self.pos_bits = max(1, (K - 1).bit_length())
        self.bits = n_bits
        # sorted ranges need (code, slot) to fit one int64, and pay off only from a few queries on
        self.sortable = n_bits + self.pos_bits <= PACK_BITS and self.Q >= SORT_MIN_QUERIES
        self._sorted = self._lo = self._n_sorted = None
        self._key_onehot = self._small = None
        self.onehot_ok = (int8_matmul(kcodes.device, L << n_bits) and self.Q >= SORT_MIN_QUERIES
                          and B * H * K * (L << n_bits) <= ONEHOT_MAX_BYTES)
        # n: causal colliding valid keys of every (table, row, KV head, query head, query), (L, B, H, g, Q)
        # int64. It prices the sorted way per chunk and is pairs(); the sort itself waits until that way runs.
        self.n = None
        if self.sortable:
            few_buckets = (n_bits <= RUNNING_COUNT_MAX_BITS
                           and B * H * K * (1 << n_bits) * 4 <= RUNNING_COUNT_MAX_BYTES)
            self.n = self._running_counts() if few_buckets else self._ranges()[1]

    def _ranges(self):
        """Sorted keys and every query's range [lo, lo + n) within its segment's row, built once: (lo, n)."""
        if self._lo is None:
            L, B, H, K = self.L, self.B, self.H, self.K
            slots = torch.arange(K, device=self.kcodes.device)
            packed = (self.kcodes.long() << self.pos_bits) | slots  # (L, B, H, K)
            # padding keys sort last, above every query's range: they are never in V(i)
            packed = packed.masked_fill(~self.key_valid[None, :, None, :], torch.iinfo(torch.int64).max)
            self._sorted = packed.view(L * B * H, K).sort(-1).values  # (L*B*H, K): one sorted row per segment
            base = (self.qcodes.long() << self.pos_bits).view(L * B * H, -1)  # (L*B*H, g*Q)
            q_slot = (torch.arange(self.Q, device=slots.device) + self.q_offset).repeat(self.g)  # (g*Q,)
            self._lo = torch.searchsorted(self._sorted, base).view(self.qcodes.shape)
            hi = torch.searchsorted(self._sorted, base | q_slot, right=True).view(self.qcodes.shape)
            self._n_sorted = hi - self._lo
        return self._lo, self._n_sorted

    def _running_counts(self) -> torch.Tensor:
        """n without a sort: per table, running[j, c] = valid keys at slots <= j with code c (a cumsum of the
        keys' one-hot codes), read at (s(i), code of q_i). O(K * 2**bits) per segment against the sort's
        O((K + 2 g Q) log K) of scattered binary searches."""
        L, B, H, K, W = self.L, self.B, self.H, self.K, 1 << self.bits
        q_slot = torch.arange(self.Q, device=self.kcodes.device) + self.q_offset  # (Q,)
        at = (q_slot * W + self.qcodes.long()).view(L, B * H, self.g * self.Q)  # flat (slot, code) of each query
        valid = self.key_valid[:, None, :, None].expand(B, H, K, 1).reshape(B * H, K, 1).to(torch.int32)
        n = torch.empty(L, B * H, self.g * self.Q, dtype=torch.int64, device=at.device)
        for t in range(L):
            onehot = torch.zeros(B * H, K, W, dtype=torch.int32, device=at.device)
            onehot.scatter_(-1, self.kcodes[t].reshape(B * H, K, 1).long(), valid)  # (B*H, K, W)
            n[t] = onehot.cumsum(1, dtype=torch.int32).view(B * H, K * W).gather(1, at[t])
        return n.view(self.qcodes.shape)

    def pairs(self, q_valid: torch.Tensor) -> torch.Tensor:
        """Causal colliding (query head, valid query, table, key) triples of all Q queries: int64 scalar."""
        if self.sortable:
            return (self.n * q_valid[None, :, None, None, :]).sum()
        if self.Q < SORT_MIN_QUERIES:  # decode: the counts of every query once, read by counts() too
            q_idx = torch.arange(self.Q, device=q_valid.device)
            visible = _causal_valid(self.q_offset, q_idx, q_valid, self.K) & self.key_valid[:, None, None, None]
            return (self._small_counts() * visible).sum(dtype=torch.int64)
        total = torch.zeros((), dtype=torch.int64, device=q_valid.device)
        q_idx = torch.arange(self.Q, device=q_valid.device)
        valid = _causal_valid(self.q_offset, q_idx, q_valid, self.K) & self.key_valid[:, None, None, None]
        kcodes = self.kcodes[:, :, :, None, None, :]
        for t in range(self.L):  # codes wider than the packed key: one dense pass per table
            total += ((self.qcodes[t].unsqueeze(-1) == kcodes[t]) & valid).sum()
        return total

    def counts(self, q_idx: torch.Tensor, kc: int, dense_ok: bool = True):
        """c_ij for queries q_idx and key slots [0, kc): (B, Hkv, g, Qc, kc) int32 (causal keys only if sorted;
        uint8, or int16 from 256 tables, in a call of fewer than SORT_MIN_QUERIES queries).
        None when the dense pass is the cheapest and dense_ok is False (the caller has a faster dense rule)."""
        if self.Q < SORT_MIN_QUERIES:
            return self._small_counts().index_select(3, q_idx)[..., :kc]
        Qc = q_idx.shape[0]
        pairs = self.B * self.H * self.g * Qc * kc  # (query head, query, key) entries of the chunk
        cost = {"dense": self.L * pairs}
        if self.onehot_ok:
            cost["onehot"] = (self.L << self.bits) * pairs / ONEHOT_MACS_PER_COMPARE
        # The sorted way prices and sizes its output on the host (n.sum(), repeat_interleave, bincount): not where
        # the host must not wait (hostsync.sync_free: CUDA, whose dense byte comparisons are cheap).
        if self.sortable and not sync_free(q_idx.device):
            n = self.n.index_select(4, q_idx).flatten()  # collisions per (table, row, head, query)
            cost["sorted"] = SORTED_COST_PER_COLLISION * int(n.sum()) + SORTED_COST_PER_PAIR * pairs
        way = min(cost, key=cost.get)
        if way == "sorted":
            return self._sorted_counts(self._ranges()[0].index_select(4, q_idx), n, Qc, kc)
        if way == "onehot":
            return self.onehot_counts(q_idx, kc)
        return self.dense_counts(q_idx, kc) if dense_ok else None

    def _sorted_counts(self, lo, n, Qc, kc):
        L, B, H, g = self.L, self.B, self.H, self.g
        rows = B * H * g * Qc  # entries are (table, row, head, query) in that order
        seg = torch.arange(L * B * H, device=n.device).view(L, B, H, 1, 1) * self.K  # row offset of each segment
        start_in_flat = (lo + seg).flatten()  # (entries,) index of each range's first key in sorted.flatten()
        entry = torch.repeat_interleave(n)  # (total,): the (table, row, head, query) of each collision
        first = torch.cumsum(n, 0) - n
        at = start_in_flat[entry] + (torch.arange(entry.shape[0], device=n.device) - first[entry])
        j = self._sorted.view(-1)[at] & ((1 << self.pos_bits) - 1)  # (total,) key slot of each collision
        flat = (entry % rows) * kc + j
        out = torch.bincount(flat, minlength=rows * kc)  # (rows * kc,) int64
        return out.view(B, H, g, Qc, kc).to(torch.int32)

    def onehot_counts(self, q_idx: torch.Tensor, kc: int) -> torch.Tensor:
        """c_ij as int8 matmuls: one-hot(q_i) . one-hot(k_j) over the L * 2**bits (table, bucket) pairs."""
        L, B, H, g = self.L, self.B, self.H, self.g
        if self._key_onehot is None:  # (B*H, K, width) int8, built once per call
            self._key_onehot = _onehot(self.kcodes.permute(1, 2, 3, 0).reshape(B * H, self.K, L), self.bits)
        qc = self.qcodes.index_select(4, q_idx)  # (L, B, H, g, Qc)
        Qc = qc.shape[-1]
        q_onehot = _onehot(qc.permute(1, 2, 3, 4, 0).reshape(B * H, g * Qc, L), self.bits)  # (B*H, g*Qc, width)
        out = torch.empty(B * H, g * Qc, kc, dtype=torch.int32, device=qc.device)
        for i in range(B * H):
            torch._int_mm(q_onehot[i], self._key_onehot[i, :kc].t(), out=out[i])
        return out.view(B, H, g, Qc, kc)

    def _small_counts(self) -> torch.Tensor:
        """c_ij of all Q (< SORT_MIN_QUERIES) queries against every key slot, (B, Hkv, g, Q, K) uint8 (int16 from
        256 tables), computed once per call: pairs() and every counts() chunk read it."""
        if self._small is None:
            self._small = self._dense(torch.arange(self.Q, device=self.qcodes.device), self.K)
        return self._small

    def dense_counts(self, q_idx: torch.Tensor, kc: int) -> torch.Tensor:
        return self._dense(q_idx, kc).to(torch.int32)

    def _dense(self, q_idx: torch.Tensor, kc: int) -> torch.Tensor:
        """One equality per table, added up: (B, Hkv, g, Qc, kc) uint8 (int16 from 256 tables)."""
        qc = self.qcodes.index_select(4, q_idx).unsqueeze(-1)  # (L, B, H, g, Qc, 1)
        kcodes = self.kcodes[:, :, :, None, None, :kc]  # (L, B, H, 1, 1, kc)
        # uint8 holds up to 255 tables and halves the memory traffic of int16 on (Qc, kc) tensors.
        count = torch.zeros(qc.shape[1:-1] + (kc,), dtype=torch.uint8 if self.L < 256 else torch.int16,
                            device=qc.device)
        for t in range(self.L):
            count.add_(qc[t] == kcodes[t])
        return count


def _causal_valid(q_offset, q_idx, q_valid, kc):
    """(B, 1, 1, Qc, kc) bool: key slot j <= s(i) for a valid query (key validity is applied by the caller)."""
    j = torch.arange(kc, device=q_idx.device)
    slots = q_idx + q_offset
    return ((j[None, :] <= slots[:, None])[None] & q_valid.index_select(1, q_idx)[:, :, None])[:, None, None]


def _onehot(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """codes (N, R, L) integer -> (N, R, L * 2**bits) int8 with a 1 at t * 2**bits + code_t for every table t."""
    offset = torch.arange(codes.shape[-1], device=codes.device) << bits  # (L,)
    out = torch.zeros(codes.shape[:-1] + (codes.shape[-1] << bits,), dtype=torch.int8, device=codes.device)
    return out.scatter_(-1, codes.long() + offset, 1)
