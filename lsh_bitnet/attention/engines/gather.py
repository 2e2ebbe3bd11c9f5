"""Attention over compacted candidates, for calls with a few queries (KV-cache decode steps).

A decode step's candidate mask is one row of K key slots per head. Running SDPA over all K keys with
that mask costs what full attention costs, so a sparse rule could only ever be slower than full there.
Compacting each row's candidates (a cumsum and a scatter, O(K) integer work) and attending over the
gathered keys costs O(|C(i)| D) multiply-adds instead. Exact: the same softmax over the same set, in
float32. Used by the masked engine for calls of at most GATHER_MAX_QUERIES queries.
"""
from typing import Optional, Tuple

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
    kv_row = row // (g * Q)  # (N,) which (b, kv head) row of the flattened keys
    flat = torch.zeros(R, n_max, dtype=torch.long, device=key.device)  # padding columns read key row 0
    flat[row, rank] = kv_row * K + slot
    keep = torch.arange(n_max, device=key.device) < n.unsqueeze(-1)  # (R, n_max)
    flat = flat.flatten()
    k_sel = key.reshape(B * Hkv * K, D).index_select(0, flat).view(B, Hkv, g, Q, n_max, D).float()
    v_sel = value.reshape(B * Hkv * K, Dv).index_select(0, flat).view(B, Hkv, g, Q, n_max, Dv).float()
    q = query.reshape(B, Hkv, g, Q, 1, D).float()
    # batched (1 x D) @ (D x n_max) products: ~3x faster than a broadcast multiply and sum over D (decode steps)
    scores = torch.matmul(q, k_sel.transpose(-1, -2)).squeeze(-2) * scaling  # (B, Hkv, g, Q, n_max)
    if bias is not None:
        cols = torch.zeros(R, n_max, dtype=torch.long, device=key.device)
        cols[row, rank] = slot
        scores = scores + torch.gather(bias.float().expand(B, Hkv, g, Q, K).reshape(R, K), -1, cols).view(scores.shape)
    scores = scores.masked_fill(~keep.view(scores.shape), float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # an empty row (no candidate) is all -inf: zeros
    out = torch.matmul(weights.unsqueeze(-2), v_sel).squeeze(-2)  # (B, Hkv, g, Q, Dv)
    return out.view(B, Hq, Q, Dv).to(query.dtype), row.new_tensor(row.shape[0])
