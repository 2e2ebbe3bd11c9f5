"""The flex engine (SPEC section 8): compiled `flex_attention` over block masks built from block-level facts.

One call is a set of disjoint passes whose union is C(i):
- pass "always" in original order: the always-attend sets (self, sinks, local window), a band + columns;
- pass t per table, in that table's sorted order: tokens sorted by (code, slot), so every bucket is a
  contiguous run and a (query block, key block) pair can hold a candidate only where their code ranges
  overlap. Pass t keeps the pairs colliding in table t, in no earlier table and not in the always set.
Block masks come from per-block min/max of codes, slots and positions (O((T/128)^2) bools per head);
the element-wise mask_mod runs on partial blocks only. No tensor of O(T^2) elements is built.

Merging passes without log-sum-exp: compiled flex on CPU cannot return the LSE (torch 2.13), so slot 0 of
every key block is a *sentinel*: key 0, value e_sent, score s0(i) = scale * q_i . k_i (set by score_mod).
Values carry two extra columns, [v | 1 | e_sent]. Every visited block adds one sentinel, m(i) in all, so
a pass returns b = Z / (Z + m e^s0) in the ones column and a = m e^s0 / (Z + m e^s0) in the sentinel
column: Z / e^s0 = m b / a, the weight of the pass, and v-part / b is its normalised output. The
counts are the same trick with every score 0: |pass| = m b / a exactly (rounded; float32, counts < 2^22).
"""
import time
from typing import Dict, List, Tuple

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

BS = 128  # flex's default sparse block; the CPU kernel tiles by it
REAL = BS - 1  # real keys per key block: slot 0 is the sentinel
COUNT_DIM = 16  # q/k/v head dim of the counting pass: flex needs >= 16; scores are 0 anyway
FAR = 2 ** 62  # code of padding rows: sorts last and matches nothing valid
# One compiled graph per (padded shape, dtype, n_tables); a sweep over shapes must not fall back to eager.
torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit, 4096)

SEEN: Dict[Tuple, float] = {}  # compile key -> seconds of its first (compiling) call
STATS = {"compile_s": 0.0, "compiles": 0}


def bucket(n_blocks: int) -> int:
    """Round a block count up to 1/8-octave steps so a growing cache recompiles O(log T) times, not per block."""
    step = 1 << max(0, n_blocks.bit_length() - 4)
    return -(-n_blocks // step) * step


def _pass(q, k, v, kv_num, kv_idx, full_num, full_idx, qmeta, kmeta, qcodes, kcodes, s0, consts, t_cur, g, scale,
          counting: bool):
    """One flex pass. qmeta (3, B, Hq, Qp) = slot, count, valid; kmeta (3, B, Hkv, Kp) likewise (sorted order).

    qcodes (L, B, Hq, Qp), kcodes (L, B, Hkv, Kp); consts = [include_self, sinks, window] (int64 (3,)), tensors so
    that a sweep over them reuses one compiled graph;
    t_cur: -1 for the always pass, else the table of this pass (0-d int64).
    """
    n_tables = qcodes.shape[0]

    def mask_mod(b, h, qi, ki):
        hk = h // g
        qs, qn, qv = qmeta[0, b, h, qi], qmeta[1, b, h, qi], qmeta[2, b, h, qi]
        ks, kn, kv = kmeta[0, b, hk, ki], kmeta[1, b, hk, ki], kmeta[2, b, hk, ki]
        allowed = (kv > 0) & (qv > 0) & (ks <= qs)
        always = ((consts[0] > 0) & (ks == qs)) | (kn <= consts[1]) | (qn - kn < consts[2])
        cur = t_cur < 0
        prev = t_cur < -1  # False, shaped like t_cur
        for t in range(n_tables):
            eq = qcodes[t, b, h, qi] == kcodes[t, b, hk, ki]
            cur = torch.where(t_cur == t, eq & ~always, cur)
            prev = prev | (eq & (t < t_cur))
        cand = torch.where(t_cur < 0, always, cur & ~prev) & allowed
        return cand | (ki % BS == 0)  # the sentinel of every visited block

    def score_mod(score, b, h, qi, ki):
        if counting:
            return torch.where(ki % BS == 0, 0.0, score * 0.0)
        return torch.where(ki % BS == 0, s0[b, h, qi], score)

    bm = BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=BS, mask_mod=mask_mod,
                                  seq_lengths=(q.shape[2], k.shape[2]))
    return flex_attention(q, k, v, score_mod=score_mod, block_mask=bm, scale=scale, enable_gqa=g > 1)


_COMPILED = {}


def _compiled(counting: bool):
    if counting not in _COMPILED:
        fn = lambda *a: _pass(*a, counting=counting)  # noqa: E731
        _COMPILED[counting] = torch.compile(fn, dynamic=False, fullgraph=True)
    return _COMPILED[counting]


def _ordered(blocks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(B, H, nQ, nK) bool -> kv_num (B, H, nQ) int32, kv_idx (B, H, nQ, nK) int32 (True columns first)."""
    num = blocks.sum(-1, dtype=torch.int32)
    idx = torch.argsort((~blocks).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return num, idx.contiguous()


def _block_stats(x: torch.Tensor, valid: torch.Tensor, size: int):
    """Per block of `size` along the last dim: (min, max) of x over valid rows; empty blocks give (FAR, -FAR)."""
    shp = x.shape[:-1] + (x.shape[-1] // size, size)
    xv = x.view(shp)
    vv = valid.view(shp)
    lo = torch.where(vv, xv, torch.full_like(xv, FAR)).amin(-1)
    hi = torch.where(vv, xv, torch.full_like(xv, -FAR)).amax(-1)
    return lo, hi


def flex_sparse_attention(query, key, value, key_valid, cands, scaling: float):
    """Output (B, Hq, Q, Dv) and comparisons (int64 0-d) for window / lsh, equal to the masked engine's."""
    spec = cands.spec
    B, Hq, Q, D = query.shape
    Hkv, K, Dv = key.shape[1], key.shape[2], value.shape[-1]
    g = Hq // Hkv
    dev = query.device
    nQb, nKb = bucket(-(-Q // BS)), bucket(-(-K // REAL))
    Qp, Kp = nQb * BS, nKb * BS

    # Original-order metadata (one extra dummy row at the end stands for every padding slot).
    count = cands.count  # (B, K)
    kslot = torch.arange(K, device=dev).expand(B, K)
    kvalid = key_valid.to(torch.int64)
    qslot, qcount, qvalid = kslot[:, K - Q:], count[:, K - Q:], kvalid[:, K - Q:]
    pad1 = lambda x, fill: torch.cat([x, torch.full_like(x[..., :1], fill)], -1)  # noqa: E731
    kmeta0 = torch.stack([pad1(kslot, FAR), pad1(count, FAR), pad1(kvalid, 0)])  # (3, B, K+1)
    qmeta0 = torch.stack([pad1(qslot, -1), pad1(qcount, -FAR), pad1(qvalid, 0)])  # (3, B, Q+1)
    if cands.qcodes is not None:
        L = cands.qcodes.shape[0]
        qc0 = cands.qcodes.reshape(L, B, Hq, Q).to(torch.int64)  # (L, B, Hq, Q): head h -> KV head h // g
        kc0 = cands.kcodes.to(torch.int64)  # (L, B, Hkv, K)
    else:
        L = 0
        qc0 = torch.zeros(0, B, Hq, Q, dtype=torch.int64, device=dev)
        kc0 = torch.zeros(0, B, Hkv, K, dtype=torch.int64, device=dev)
    qc0 = torch.cat([qc0, torch.full_like(qc0[..., :1], FAR)], -1)
    kc0 = torch.cat([kc0, torch.full_like(kc0[..., :1], -FAR)], -1)

    # s0(i) = scale * q_i . k_slot(i): a reference score on the scale of the row (float32)
    qf = query.float()
    s0 = (qf * key[:, :, K - Q:].float().repeat_interleave(g, 1)).sum(-1) * scaling  # (B, Hq, Q)
    consts = torch.tensor([int(spec.include_self), int(spec.sink_tokens), int(spec.local_window)],
                          dtype=torch.int64, device=dev)

    inc_self, sinks, window = bool(spec.include_self), int(spec.sink_tokens), int(spec.local_window)
    passes: List[int] = ([-1] if (inc_self or sinks > 0 or window > 0) else []) + list(range(L))
    num = torch.zeros(B, Hq, Q, Dv, dtype=torch.float64, device=dev)
    den = torch.zeros(B, Hq, Q, dtype=torch.float64, device=dev)
    n_cmp = torch.zeros((), dtype=torch.int64, device=dev)
    for t in passes:
        # Orders: original for the always pass; (code, slot) per head for table t. Padding rows go last.
        if t < 0:
            qsrc = torch.arange(Q, device=dev).expand(B, Hq, Q)
            ksrc = torch.arange(K, device=dev).expand(B, Hkv, K)
        else:
            qkey = torch.where(qvalid[:, None].bool(), qc0[t, ..., :Q], FAR)  # (B, Hq, Q)
            kkey = torch.where(kvalid[:, None].bool(), kc0[t, ..., :K], FAR)  # (B, Hkv, K)
            # codes < 2**62 and slots < 2**20 would overflow a packed key: sort twice (stable) instead
            qsrc = torch.sort(qkey, dim=-1, stable=True).indices  # slots ascending within a code
            ksrc = torch.sort(kkey, dim=-1, stable=True).indices
        qsrc = torch.cat([qsrc, torch.full((B, Hq, Qp - Q), Q, device=dev, dtype=torch.int64)], -1)  # (B, Hq, Qp)
        # Keys: REAL per block behind the block's sentinel slot; trailing slots are padding (index K).
        kpad = torch.full((B, Hkv, nKb * REAL - K), K, device=dev, dtype=torch.int64)
        kreal = torch.cat([ksrc, kpad], -1).view(B, Hkv, nKb, REAL)
        ksrc = torch.cat([torch.full_like(kreal[..., :1], K), kreal], -1).view(B, Hkv, Kp)  # (B, Hkv, Kp)
        bq = torch.arange(B, device=dev).view(B, 1, 1)
        qmeta = qmeta0[:, bq, qsrc]  # (3, B, Hq, Qp)
        kmeta = kmeta0[:, bq, ksrc]  # (3, B, Hkv, Kp)
        hq = torch.arange(Hq, device=dev).view(1, Hq, 1)
        hk = torch.arange(Hkv, device=dev).view(1, Hkv, 1)
        qcodes = qc0[:, bq, hq, qsrc]  # (L, B, Hq, Qp)
        kcodes = kc0[:, bq, hk, ksrc]  # (L, B, Hkv, Kp)

        # Block-level facts -> which blocks may hold a pair (partial) and which hold only pairs (full).
        qv, kv = qmeta[2] > 0, kmeta[2] > 0  # (B, Hq, Qp), (B, Hkv, Kp)
        qs_lo, qs_hi = _block_stats(qmeta[0], qv, BS)  # (B, Hq, nQb)
        qn_lo, qn_hi = _block_stats(qmeta[1], qv, BS)
        ks_lo, ks_hi = _block_stats(kmeta[0], kv, BS)  # (B, Hkv, nKb)
        kn_lo, kn_hi = _block_stats(kmeta[1], kv, BS)
        q_all = qv.view(B, Hq, nQb, BS).all(-1)
        k_all = kv.view(B, Hkv, nKb, BS)[..., 1:].all(-1)
        rep = lambda x: x.repeat_interleave(g, 1)[:, :, None, :]  # noqa: E731  (B, Hkv, nKb) -> (B, Hq, 1, nKb)
        ks_lo, ks_hi, kn_lo, kn_hi, k_all = map(rep, (ks_lo, ks_hi, kn_lo, kn_hi, k_all))
        qcol = lambda x: x[..., :, None]  # noqa: E731  (B, Hq, nQb) -> (B, Hq, nQb, 1)
        causal = ks_lo <= qcol(qs_hi)  # also False where either block is empty (FAR / -FAR)
        all_in = k_all & qcol(q_all) & (ks_hi <= qcol(qs_lo))  # every pair valid and causal
        self_may = inc_self & (ks_lo <= qcol(qs_hi)) & (ks_hi >= qcol(qs_lo))
        sink_may = (kn_lo <= sinks) if sinks > 0 else torch.zeros_like(causal)
        win_may = (qcol(qn_lo) - kn_hi < window) if window > 0 else torch.zeros_like(causal)
        if t < 0:
            may = causal & (self_may | sink_may | win_may)
            full = all_in & (((kn_hi <= sinks) if sinks > 0 else False) | (qcol(qn_hi) - kn_lo < window))
        else:
            qk_lo, qk_hi = _block_stats(qcodes[t], qv, BS)
            kk_lo, kk_hi = map(rep, _block_stats(kcodes[t], kv, BS))
            may = causal & (kk_lo <= qcol(qk_hi)) & (kk_hi >= qcol(qk_lo))
            one_code = (kk_lo == kk_hi) & (kk_lo == qcol(qk_lo)) & qcol(qk_lo == qk_hi)
            full = (all_in & one_code & (ks_hi < qcol(qs_lo)) & ~sink_may & ~win_may) if t == 0 \
                else torch.zeros_like(may)
        partial = may & ~full
        kv_num, kv_idx = _ordered(partial)
        full_num, full_idx = _ordered(full)
        m = (kv_num + full_num).to(torch.float32).repeat_interleave(BS, -1)  # (B, Hq, Qp): sentinels per row

        t_cur = torch.tensor(t, dtype=torch.int64, device=dev)
        common = (kv_num, kv_idx, full_num, full_idx, qmeta, kmeta, qcodes, kcodes)
        # Main pass: [v | 1 | e_sent] values; sentinel keys are 0 (their score comes from score_mod).
        bk = torch.arange(B, device=dev).view(B, 1, 1)
        kmask = (kmeta[2] > 0)[..., None]  # padding and sentinel rows hold zeros
        kx = key[bk, hk, ksrc.clamp(max=K - 1)] * kmask  # (B, Hkv, Kp, D)
        vx = torch.zeros(B, Hkv, Kp, Dv + 2, dtype=value.dtype, device=dev)
        vx[..., :Dv] = value[bk, hk, ksrc.clamp(max=K - 1)] * kmask
        vx[..., Dv] = kmask[..., 0].to(value.dtype)
        vx[..., Dv + 1] = (torch.arange(Kp, device=dev) % BS == 0).to(value.dtype)
        bqq = torch.arange(B, device=dev).view(B, 1, 1)
        qx = query[bqq, hq, qsrc.clamp(max=Q - 1)] * (qsrc < Q)[..., None]  # (B, Hq, Qp, D)
        s0x = torch.where(qsrc < Q, s0[bqq, hq, qsrc.clamp(max=Q - 1)], 0.0)  # (B, Hq, Qp)
        key_ = ("main", tuple(qx.shape), tuple(kx.shape), Dv, qx.dtype, str(dev), L, scaling)
        o = _timed(key_, _compiled(False), qx, kx, vx, *common, s0x, consts, t_cur, g, scaling)  # (B, Hq, Qp, Dv+2)
        o = o.double()  # the merge divides by sentinel weights that may be tiny: float64 keeps it exact enough
        # counting pass, float32, every score 0: ones column over real keys, sentinel column
        zq = torch.zeros(B, Hq, Qp, COUNT_DIM, device=dev)
        zk = torch.zeros(B, Hkv, Kp, COUNT_DIM, device=dev)
        vc = torch.zeros(B, Hkv, Kp, COUNT_DIM, device=dev)
        vc[..., 0] = kmask[..., 0].float()
        vc[..., 1] = vx[..., Dv + 1].float()
        key_c = ("count", tuple(zq.shape), tuple(zk.shape), L, str(dev))
        oc = _timed(key_c, _compiled(True), zq, zk, vc, *common, s0x.float(), consts, t_cur, g, 1.0).double()

        # back to original query order; padding rows (qsrc == Q) drop out
        pos = torch.empty_like(qsrc)
        pos.scatter_(-1, qsrc, torch.arange(Qp, device=dev).expand(B, Hq, Qp))
        pos = pos[..., :Q]  # (B, Hq, Q): where original query i sits in this order
        o = o.gather(2, pos[..., None].expand(B, Hq, Q, Dv + 2))
        oc = oc.gather(2, pos[..., None].expand(B, Hq, Q, COUNT_DIM))
        mq = m.gather(2, pos)  # (B, Hq, Q)
        a, b = o[..., Dv + 1], o[..., Dv]
        ok = (mq > 0) & (b > 0)
        r = torch.where(ok, mq * b / a.clamp(min=1e-300), 0.0)  # Z / e^s0
        num += torch.where(ok[..., None], o[..., :Dv] / b.clamp(min=1e-300)[..., None], 0.0) * r[..., None]
        den += r
        okc = (mq > 0) & (oc[..., 0] > 0)
        n = torch.where(okc, mq * oc[..., 0] / oc[..., 1].clamp(min=1e-300), 0.0)
        n_cmp += torch.round(n).to(torch.int64).sum()
    out = torch.where(den[..., None] > 0, num / den.clamp(min=1e-300)[..., None], 0.0)
    return out.to(value.dtype), n_cmp


def _timed(key, fn, *args):
    """Call fn; the first call of each compile key is timed apart (compile_s)."""
    if key in SEEN:
        return fn(*args)
    start = time.perf_counter()
    out = fn(*args)
    if out.is_cuda:
        torch.cuda.synchronize()
    SEEN[key] = time.perf_counter() - start
    STATS["compile_s"] += SEEN[key]
    STATS["compiles"] += 1
    return out
