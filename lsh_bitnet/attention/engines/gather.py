"""Attention over compacted candidates, for calls with a few queries (KV-cache decode steps).

A decode step's candidate mask is one row of K key slots per head. Running SDPA over all K keys with
that mask costs what full attention costs, so a sparse rule could only ever be slower than full there.
Compacting each row's candidates (a cumsum and a scatter, O(K) integer work) and attending over the
gathered keys costs O(|C(i)| D) multiply-adds instead. Exact: the same softmax over the same set, in
float32. Used by the masked engine for calls of at most GATHER_MAX_QUERIES queries.
"""
from typing import Optional

import torch

# Above a few queries the gathered (rows x n_max x D) keys outgrow one masked SDPA call, and prefill
# chunks already amortise the mask: the gather is for decode (1 query) and short speculative steps.
GATHER_MAX_QUERIES = 4


def gather_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cand: torch.Tensor,
                     bias: Optional[torch.Tensor], scaling: float) -> torch.Tensor:
    """softmax(scaling * q.k + bias) over each row's candidates; rows without a candidate give zeros.

    query (B, Hq, Q, D); key, value (B, Hkv, K, D); cand (B, Hkv|1, g|1, Q, K) bool; bias None or float
    broadcastable to cand. Returns (B, Hq, Q, Dv) in query's dtype."""
    B, Hq, Q, D = query.shape
    Hkv, K, Dv = key.shape[1], key.shape[2], value.shape[3]
    g = Hq // Hkv
    cand = cand.expand(B, Hkv, g, Q, K)
    n = cand.sum(-1)  # (B, Hkv, g, Q) candidates per row
    n_max = max(int(n.max()), 1)
    # Compaction: the r-th candidate of a row goes to column r; non-candidates go to a dump column n_max.
    col = torch.where(cand, cand.cumsum(-1) - 1, n_max)  # (B, Hkv, g, Q, K) int64
    slots = torch.arange(K, device=key.device).expand_as(col)
    idx = torch.zeros(B, Hkv, g, Q, n_max + 1, dtype=torch.long, device=key.device)
    idx = idx.scatter_(-1, col, slots)[..., :n_max]  # (B, Hkv, g, Q, n_max) key slot per column
    keep = torch.arange(n_max, device=key.device) < n.unsqueeze(-1)  # (B, Hkv, g, Q, n_max)
    idx = idx.masked_fill(~keep, 0)  # padding columns read slot 0 and are masked out below
    # Row offsets into the flattened (B * Hkv * K) keys: one index_select per tensor, no expanded copies.
    base = (torch.arange(B * Hkv, device=key.device) * K).view(B, Hkv, 1, 1, 1)
    flat = (idx + base).flatten()
    k_sel = key.reshape(B * Hkv * K, D).index_select(0, flat).view(B, Hkv, g, Q, n_max, D).float()
    v_sel = value.reshape(B * Hkv * K, Dv).index_select(0, flat).view(B, Hkv, g, Q, n_max, Dv).float()
    q = query.view(B, Hkv, g, Q, 1, D).float()
    scores = (q * k_sel).sum(-1) * scaling  # (B, Hkv, g, Q, n_max)
    if bias is not None:
        scores = scores + torch.gather(bias.float().expand(B, Hkv, g, Q, K), -1, idx)
    scores = scores.masked_fill(~keep, float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # an empty row (no candidate) is all -inf: zeros
    out = (weights.unsqueeze(-1) * v_sel).sum(-2)  # (B, Hkv, g, Q, Dv)
    return out.view(B, Hq, Q, Dv).to(query.dtype)
