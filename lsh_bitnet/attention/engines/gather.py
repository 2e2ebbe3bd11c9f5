"""Attention over compacted candidates, for calls with a few queries (KV-cache decode steps).

A decode step's candidate mask is one row of K key slots per head. Running SDPA over all K keys with
that mask costs what full attention costs, so a sparse rule could only ever be slower than full there.
Compacting each row's candidates (a cumsum and a scatter, O(K) integer work) and attending over the
gathered keys costs O(|C(i)| D) multiply-adds instead. Exact: the same softmax over the same set, in
float32. Used by the masked engine for calls of at most GATHER_MAX_QUERIES queries.
"""
from typing import List, Optional, Tuple

import torch

from lsh_bitnet.attention.hostsync import sync_free

# Above a few queries the gathered (rows x n_max x D) keys outgrow one masked SDPA call, and prefill
# chunks already amortise the mask: the gather is for decode (1 query) and short speculative steps.
GATHER_MAX_QUERIES = 4


def use_gather(n_queries: int, device: torch.device) -> bool:
    """Whether a masked-engine call of n_queries queries attends over compacted candidates (decode steps). Not
    where host syncs are avoided (hostsync.sync_free: CUDA): the compaction sizes tensors by the candidates
    (nonzero, bincount, the row maximum), three syncs per layer, and a GPU's masked SDPA over all K keys of a
    decode step is cheap anyway."""
    return n_queries <= GATHER_MAX_QUERIES and not sync_free(device)


def gather_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cand: torch.Tensor,
                     bias: Optional[torch.Tensor], scaling: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """softmax(scaling * q.k + bias) over each row's candidates; rows without a candidate give zeros.

    query (B, Hq, Q, D); key, value (B, Hkv, K, D); cand (B, Hkv|1, g|1, Q, K) bool; bias None or float
    broadcastable to cand. Returns the output (B, Hq, Q, Dv) in query's dtype and the number of (query
    head, query, candidate) triples, int64 (the comparisons, counted here from the compaction for free)."""
    B, Hq, Q, D = query.shape
    Hkv, K, Dv = key.shape[1], key.shape[2], value.shape[3]
    g = Hq // Hkv
    R = B * Hkv * g * Q  # rows, ordered (b, kv head, group member, query)
    cand = cand.expand(B, Hkv, g, Q, K).reshape(R, K)
    # Compaction from the nonzero list (row-major, so slots ascend within a row): the r-th candidate of a
    # row goes to column r. One pass over the (R, K) mask; the rest is O(candidates).
    row, slot = cand.nonzero(as_tuple=True)  # (N,), (N,)
    n = torch.bincount(row, minlength=R)  # (R,) candidates per row
    n_max = max(int(n.max()), 1)
    rank = torch.arange(row.shape[0], device=key.device) - (n.cumsum(0) - n)[row]  # (N,) column in its row
    slots = torch.zeros(R, n_max, dtype=torch.long, device=key.device)  # padding columns read slot 0
    slots[row, rank] = slot
    keep = torch.arange(n_max, device=key.device) < n.unsqueeze(-1)  # (R, n_max)
    extra = None
    if bias is not None:
        extra = torch.gather(bias.float().expand(B, Hkv, g, Q, K).reshape(R, K), -1, slots)
    return attend_rows(query, key, value, slots, keep, scaling, extra), row.new_tensor(row.shape[0])


def attend_rows(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, slots: torch.Tensor, keep: torch.Tensor,
                scaling: float, extra: Optional[torch.Tensor] = None) -> torch.Tensor:
    """softmax(scaling * q.k + extra) over gathered keys, in float32: (B, Hq, Q, Dv) in query's dtype.

    Rows r = (b, kv head, group member, query) in that order; slots (R, n) the key slots of each row's columns,
    keep (R, n) which columns are candidates (the others only pad the row: their weight is exactly 0), extra
    (R, n) float32 or None."""
    B, Hq, Q, D = query.shape
    Hkv, Dv = key.shape[1], value.shape[3]
    g, n_max = Hq // Hkv, slots.shape[-1]
    k_sel = _gather(key, slots, g * Q).view(B, Hkv, g, Q, n_max, D).float()
    v_sel = _gather(value, slots, g * Q).view(B, Hkv, g, Q, n_max, Dv).float()
    q = query.reshape(B, Hkv, g, Q, 1, D).float()
    # batched (1 x D) @ (D x n_max) products: ~3x faster than a broadcast multiply and sum over D (decode steps)
    scores = torch.matmul(q, k_sel.transpose(-1, -2)).squeeze(-2) * scaling  # (B, Hkv, g, Q, n_max)
    if extra is not None:
        scores = scores + extra.view(scores.shape)
    scores = scores.masked_fill(~keep.view(scores.shape), float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # an empty row (no candidate) is all -inf: zeros
    out = torch.matmul(weights.unsqueeze(-2), v_sel).squeeze(-2)  # (B, Hkv, g, Q, Dv)
    return out.view(B, Hq, Q, Dv).to(query.dtype)


def _rows_in_place(x: torch.Tensor) -> bool:
    """Whether the rows of x (B, H, K, D) lie at multiples of D in its storage (contiguous, or a prefix view of a
    cache buffer with spare capacity, models/kv_cache.py), so they can be indexed without a copy."""
    D = x.shape[-1]
    return x.stride(-1) == 1 and x.stride(2) == D and x.stride(1) % D == 0 and x.stride(0) % D == 0


def key_rows(x: torch.Tensor) -> torch.Tensor:
    """The rows of x (B, H, K, D) as one (N, D) tensor that row_starts(x) indexes: a view where the rows lie in
    place (a growable cache's prefix would otherwise be copied whole, K x D per head, at every decode step)."""
    if not _rows_in_place(x):
        return x.reshape(-1, x.shape[-1])
    B, H, K, D = x.shape
    n = ((B - 1) * x.stride(0) + (H - 1) * x.stride(1)) // D + K
    return torch.as_strided(x, (n, D), (D, 1))


def _gather(x: torch.Tensor, slots: torch.Tensor, rows_per_head: int) -> torch.Tensor:
    """x (B, H, K, D) rows at `slots` (R, n), row r reading head block r // rows_per_head: (R * n, D)."""
    starts = torch.tensor(row_starts(x), device=slots.device).repeat_interleave(rows_per_head)  # (R,)
    return key_rows(x).index_select(0, (starts.unsqueeze(-1) + slots).flatten())


def row_starts(x: torch.Tensor) -> List[int]:
    """The row of key_rows(x) where each (b, h)'s K rows start, in (b, h) order (host ints: no device work)."""
    B, H, K, D = x.shape
    s0, s1 = (x.stride(0) // D, x.stride(1) // D) if _rows_in_place(x) else (H * K, K)
    return [b * s0 + h * s1 for b in range(B) for h in range(H)]
