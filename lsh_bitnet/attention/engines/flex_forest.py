"""The lsh_forest part of the flex engine: x*(i) per query, and the forest's candidate counts, without a (Q, K) tensor.

The flex passes need each query's depth x*(i) (its shift d - x*(i) defines the code range of its tree passes)
before any pass runs. x*(i) comes from sorted group counts: keys and queries grouped by (row, head, prefix) are
counted by one sort and two binary searches. Single trees bound the union over trees (max <= |union| <= sum) at
every depth; inclusion-exclusion over tree sets is run only at depths those bounds leave open. The same counts
give the number of forest candidates, so flex needs no counting pass for trees.
"""
from typing import Tuple

import torch

ID_BITS = 62  # group ids packed with a slot stay non-negative int64 below 2^62 (sort keys; flex.FAR above)


def _ids(kraw: torch.Tensor, qraw: torch.Tensor, bits: int, room: int) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """Group ids of keys and queries with `room` bits free below ID_BITS: the raw values (`bits` wide) while
    they fit, else their ranks (unique over both sides). Returns (key ids, query ids, bits of the ids)."""
    if bits + room <= ID_BITS:
        return kraw, qraw, bits
    _, inv = torch.unique(torch.cat([kraw.flatten(), qraw.flatten()]), return_inverse=True)
    n = kraw.numel()
    return inv[:n].view(kraw.shape), inv[n:].view(qraw.shape), max(1, int(inv.max()).bit_length())


def _pair_ids(k_hi: torch.Tensor, q_hi: torch.Tensor, hi_bits: int, k_lo: torch.Tensor, q_lo: torch.Tensor,
              lo_bits: int) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """Ids of (hi, lo) pairs, keys and queries in one space: hi << lo_bits | lo while that fits ID_BITS, else the
    ranks of the pairs (a shift past 63 bits would wrap and merge groups). hi broadcasts to lo's shape."""
    k_hi, q_hi = k_hi.expand_as(k_lo), q_hi.expand_as(q_lo)
    if hi_bits + lo_bits <= ID_BITS:
        return (k_hi << lo_bits) | k_lo, (q_hi << lo_bits) | q_lo, hi_bits + lo_bits
    pairs = torch.stack([torch.cat([k_hi.flatten(), q_hi.flatten()]), torch.cat([k_lo.flatten(), q_lo.flatten()])], -1)
    _, inv = torch.unique(pairs, dim=0, return_inverse=True)
    n = k_lo.numel()
    return inv[:n].view(k_lo.shape), inv[n:].view(q_lo.shape), max(1, int(inv.max()).bit_length())


def forest_shifts(cands) -> Tuple[torch.Tensor, torch.Tensor]:
    """d - x*(i) per query head, (B, Hq, Q) int64: x*(i) is the deepest prefix length at which the keys of V(i)
    sharing query i's prefix in at least one tree number min(min_candidates, |V(i)|) (candidates.py _forest).

    No (Q, K) tensor: for a set S of trees and a depth x, the keys of V(i) sharing i's x-bit prefix in every tree
    of S are counted by one sort of (group id, slot) and two binary searches (group id: the tuple of the prefixes,
    ranked). Single trees give, per query, bounds on the union over trees (max <= |union| <= sum) at every depth;
    only the depths between the bounds are resolved exactly, by inclusion-exclusion over the 2^n - 1 tree sets
    (so flex runs at most rules/lsh_forest.py FOREST_MAX_TREES trees).
    Returns (shift, size), each (B, Hq, Q) int64: shift = d - x*(i) (0 for padding queries) and
    size = |{j in V(i): some tree shares i's x*(i)-bit prefix}| (0 for padding queries), which counts the
    forest's candidates without a counting pass.
    """
    spec = cands.spec
    d, mc = int(cands.bits), int(spec.min_candidates)
    L, B, Hkv, g, Q = cands.qcodes.shape
    K, dev = cands.K, cands.qcodes.device
    gQ = g * Q
    qc = cands.qcodes.to(torch.int64).reshape(L, B, Hkv, gQ)  # (L, B, Hkv, g*Q): head h = hkv * g + gi
    kc = cands.kcodes.to(torch.int64)  # (L, B, Hkv, K)
    pos_bits = max(1, K.bit_length())  # slots 0 .. K - 1
    q_slot = (torch.arange(Q, device=dev) + K - Q).repeat(g)  # (g*Q,)
    qvalid = cands.key_valid[:, K - Q:].repeat(1, g)  # (B, g*Q)
    nvis = cands.count[:, K - Q:].repeat(1, g) * qvalid  # (B, g*Q): |V(i)| (0 for padding queries)
    target = nvis.clamp(max=mc)[:, None].expand(B, Hkv, gQ)  # (B, Hkv, g*Q)
    kmiss = ~cands.key_valid[:, None].expand(B, Hkv, K)  # padding keys are never in V(i)
    seg = torch.arange(B * Hkv, device=dev).view(B, Hkv, 1)  # one id space per (row, KV head)
    seg_bits = max(1, (B * Hkv).bit_length())
    kslot = torch.arange(K, device=dev)

    def count(kid, qid, bits):
        """Keys of V(i) in query i's group: (B, Hkv, g*Q) int64. kid (B, Hkv, K), qid (B, Hkv, g*Q)."""
        kid, qid, _ = _ids(kid, qid, bits, pos_bits)
        packed = ((kid << pos_bits) | kslot).masked_fill(kmiss, torch.iinfo(torch.int64).max)
        ordered = packed.flatten().sort().values
        lo = torch.searchsorted(ordered, (qid << pos_bits).flatten())
        hi = torch.searchsorted(ordered, ((qid << pos_bits) | q_slot).flatten(), right=True)
        return (hi - lo).view(B, Hkv, gQ)

    def prefix(codes, t, x):  # (..., len) -> the x-bit prefixes of tree t
        return codes[t] >> (d - x)

    # single trees at every depth: N[t, x] (L, d + 1, B, Hkv, g*Q); at x = 0 every key of V(i) qualifies
    N = torch.empty(L, d + 1, B, Hkv, gQ, dtype=torch.int64, device=dev)
    for t in range(L):
        N[t, 0] = nvis[:, None]
        for x in range(1, d + 1):
            N[t, x] = count(*_pair_ids(seg, seg, seg_bits, prefix(kc, t, x), prefix(qc, t, x), x))
    # counts fall with depth, so "enough" holds on a prefix 0 .. x of depths: x* lies in [lo, hi]
    lo = (N.amax(0) >= target).sum(0) - 1  # (B, Hkv, g*Q): one tree alone already holds enough keys
    hi = (N.sum(0) >= target).sum(0) - 1  # even the sum over trees falls short deeper than hi
    def union_at(x):  # |{j in V(i): some tree shares i's x-bit prefix}| (B, Hkv, g*Q), inclusion-exclusion
        union = N[:, x].sum(0)
        groups = {}  # tree set (bit mask) -> (key ids, query ids, bits) of its joint x-bit prefixes
        for S in range(1, 1 << L):
            top = S.bit_length() - 1
            parent = S ^ (1 << top)
            if parent == 0:
                groups[S] = _pair_ids(seg, seg, seg_bits, prefix(kc, top, x), prefix(qc, top, x), x)
                continue
            kid, qid, bits = _ids(*groups[parent], x)
            groups[S] = _pair_ids(kid, qid, bits, prefix(kc, top, x), prefix(qc, top, x), x)
            sign = 1 if bin(S).count("1") % 2 else -1
            union = union + sign * count(*groups[S])
        return union

    unions = {0: nvis[:, None].expand(B, Hkv, gQ)}
    xstar = lo.clone()
    for x in range(1, d + 1):
        open_ = (lo < x) & (x <= hi)
        if L == 1 or not bool(open_.any()):
            continue
        unions[x] = union_at(x)
        xstar = xstar + (open_ & (unions[x] >= target)).to(xstar.dtype)
    # |{j in V(i): max_t lcp_t(i, j) >= x*(i)}|, the candidates before the always set: for counting
    size = torch.zeros_like(xstar)
    for x in xstar[qvalid[:, None].expand_as(xstar)].unique().tolist():
        if x not in unions:
            unions[x] = N[0, x] if L == 1 else union_at(x)
        size = torch.where(xstar == x, unions[x], size)
    size = size * qvalid[:, None]
    return (d - xstar).view(B, Hkv * g, Q), size.view(B, Hkv * g, Q)


# Always-set keys are checked against the forest in chunks of this many per query: (B, Hkv, g*Q, 64) int64
# per tree at a time, 38 MB for SmolLM2 at 8192 tokens, whatever the window.
ALWAYS_CHUNK = 64


def forest_always_overlap(cands, shift: torch.Tensor) -> torch.Tensor:
    """Sum over query heads and valid queries of |{j in A(i) ∩ V(i): some tree shares i's x*(i)-bit prefix}|
    (A: self, sinks, window; the pairs counted both by the forest and by the always set), int64 0-d.
    shift (B, Hq, Q) = d - x*(i). Memory O(Q * ALWAYS_CHUNK) per head: A(i) is enumerated by position."""
    spec = cands.spec
    L, B, Hkv, g, Q = cands.qcodes.shape
    K, dev, gQ = cands.K, cands.qcodes.device, g * Q
    S, W = int(spec.sink_tokens), int(spec.local_window)
    qc = cands.qcodes.to(torch.int64).reshape(L, B, Hkv, gQ)
    kc = cands.kcodes.to(torch.int64)  # (L, B, Hkv, K)
    sh = shift.reshape(B, Hkv, gQ)
    qvalid = cands.key_valid[:, K - Q:].repeat(1, g)  # (B, g*Q)
    qpos = (cands.count[:, K - Q:] - 1).repeat(1, g)  # (B, g*Q): position p(i) = valid keys before it
    # slot of each position (B, K + 1); padding keys write to the unused column K
    kpos = torch.where(cands.key_valid, cands.count - 1, K)
    slot_of = torch.full((B, K + 1), K - 1, dtype=torch.int64, device=dev)
    slot_of.scatter_(1, kpos, torch.arange(K, device=dev).expand(B, K))
    # A(i) by position, each once: sinks [0, min(S, p + 1)), window [max(p - W + 1, S), p], self when neither
    offs = [("sink", o) for o in range(S)] + [("local", o) for o in range(W)]
    if spec.include_self and W == 0:
        offs.append(("self", 0))
    total = torch.zeros((), dtype=torch.int64, device=dev)
    for a in range(0, len(offs), ALWAYS_CHUNK):
        part = offs[a:a + ALWAYS_CHUNK]
        pos, ok = [], []
        for kind, o in part:  # (B, g*Q) each
            if kind == "sink":
                pos.append(torch.full_like(qpos, o))
                ok.append(qpos >= o)
            elif kind == "local":
                pos.append(qpos - o)
                ok.append(qpos - o >= S)
            else:
                pos.append(qpos)
                ok.append(qpos >= S)
        pos = torch.stack(pos, -1).clamp(min=0)  # (B, g*Q, c)
        ok = torch.stack(ok, -1) & qvalid[..., None]
        j = slot_of.gather(1, pos.flatten(1))  # (B, g*Q*c) key slots
        hit = torch.zeros(B, Hkv, gQ, len(part), dtype=torch.bool, device=dev)
        for t in range(L):
            kj = kc[t].gather(2, j[:, None].expand(B, Hkv, -1)).view(B, Hkv, gQ, len(part))
            hit |= ((qc[t][..., None] ^ kj) >> sh[..., None]) == 0
        total = total + (hit & ok[:, None]).sum()
    return total
