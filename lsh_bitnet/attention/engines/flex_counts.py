"""Closed-form candidate counts of the flex engine's passes (engines/flex.py), so that the always-attend pass
and lsh table 0 of a call without padding need no counting pass: exact int64 counts from positions and codes,
never a (Q, K) tensor.
"""
import torch


def always_counts(qcount: torch.Tensor, qvalid: torch.Tensor, spec) -> torch.Tensor:
    """|A(i) ∩ V(i)| per query in closed form from its position p = count - 1: sinks [0, S), window
    [p - W + 1, p], and self when neither holds it. qcount, qvalid (B, Q) -> (B, Q) int64 (0 for padding)."""
    p = qcount - 1
    S, W = int(spec.sink_tokens), int(spec.local_window)
    sink = p.clamp(min=-1).add(1).clamp(max=S)  # |[0, S) ∩ [0, p]|
    win = (p + 1).clamp(max=W)  # |[p - W + 1, p] ∩ [0, p]|
    overlap = (sink - (p + 1 - win)).clamp(min=0)  # positions in both
    n = sink + win - overlap
    if spec.include_self:
        n = n + ((win == 0) & (p >= S)).to(n.dtype)  # self is not already in the window or the sinks
    return n * qvalid


# Sort keys code * (K + 1) + slot must fit a signed int64.
PACK_BITS = 63


def first_table_counts(qc: torch.Tensor, kc: torch.Tensor, spec, g: int, bits: int = 62) -> torch.Tensor:
    """|pass 0| without a counting pass, for calls without padding (position = slot): the keys j <= i
    sharing the query's table-0 code, less those already in the always set. qc (B, Hq, Q), kc (B, Hkv, K)
    int64 codes >= 0 of `bits` bits -> int64 0-d. Memory O(Q * (W + S)) per head, W = local_window, S = sink_tokens."""
    B, Hq, Q = qc.shape
    K = kc.shape[-1]
    if bits + (K + 1).bit_length() > PACK_BITS:  # code * (K + 1) would overflow: rank the codes (equality is kept)
        _, rank = torch.unique(torch.cat([kc.flatten(), qc.flatten()]), return_inverse=True)
        kc, qc = rank[:kc.numel()].view(kc.shape), rank[kc.numel():].view(qc.shape)
    slots = torch.arange(K - Q, K, device=qc.device)  # (Q,)
    kr = kc.repeat_interleave(g, 1)  # (B, Hq, K)
    # Same code and j <= i: a range of the keys sorted by (code, slot), found by binary search.
    ordered = torch.sort(kr * (K + 1) + torch.arange(K, device=kc.device), dim=-1).values  # (B, Hq, K)
    hi = torch.searchsorted(ordered, qc * (K + 1) + slots, right=True)
    lo = torch.searchsorted(ordered, qc * (K + 1))
    n = (hi - lo).sum()
    S, W = int(spec.sink_tokens), int(spec.local_window)
    if W > 0:  # window: j = i - d, d < W (codes of j < 0 are -1 and match nothing)
        padded = torch.cat([kr.new_full((B, Hq, W - 1), -1), kr], -1)  # (B, Hq, K + W - 1)
        win = padded.unfold(-1, W, 1)[:, :, K - Q:]  # (B, Hq, Q, W): keys i - W + 1 .. i
        n = n - (win == qc[..., None]).sum()
    if S > 0:  # sinks j < S not already in the window
        j = torch.arange(min(S, K), device=qc.device)
        outside = (j[None, :] <= slots[:, None]) & (j[None, :] < slots[:, None] - W + 1)  # (Q, S)
        n = n - ((kr[..., None, :min(S, K)] == qc[..., None]) & outside).sum()
    if spec.include_self and W == 0:  # self, unless it is a sink
        own = kr[..., K - Q:] == qc  # (B, Hq, Q)
        n = n - (own & (slots >= S)).sum()
    return n
