"""The flex engine (SPEC section 8): compiled `flex_attention` over block masks built from block-level facts.

One call is a set of disjoint passes whose union is C(i):
- pass "always" in original order: the always-attend sets (self, sinks, local window), a band + columns;
- pass t per table, in that table's sorted order: tokens sorted by (code, slot), so every bucket is a
  contiguous run and a (query block, key block) pair can hold a candidate only where their code ranges
  overlap. Pass t keeps the pairs colliding in table t, in no earlier table and not in the always set;
- lsh_forest: pass t per tree, keys sorted by code: the keys sharing query i's x*(i)-bit prefix are the code
  range [c >> s << s, (c >> s << s) + 2^s), s = d - x*(i), so a key block is visited where its codes meet the
  union of its query block's ranges (queries ordered by (s, code), so a block's ranges are alike). Pass t keeps
  the pairs sharing the prefix in tree t, in no earlier tree and not in the always set. x*(i) and the
  forest's candidate counts come from flex_forest.py (sorted group counts, not a (Q, K) tensor).
Block masks come from per-block min/max of codes, slots and positions (O((T/128)^2) bools per head);
the element-wise mask_mod runs on partial blocks only. No tensor of O(T^2) elements is built.

Merging passes on CUDA: flex returns each pass's float32 log-sum-exp (return_aux=AuxRequest(lse=True)); the
passes are weighted by softmax over their lse, and a counting pass (every score 0) counts exp(lse) candidates
per row. Slot 0 of every key block is then a dead key, masked out like padding.

Merging passes without log-sum-exp (CPU): compiled flex on CPU cannot return the LSE (torch 2.13), so slot 0 of
every key block is a *sentinel*: key 0, value e_sent, score s0(i) = scale * q_i . k_i (set by score_mod).
Values carry two extra columns, [v | 1 | e_sent]. Every visited block adds one sentinel, m(i) in all, so
a pass returns b = Z / (Z + m e^s0) in the ones column and a = m e^s0 / (Z + m e^s0) in the sentinel
column: Z / e^s0 = m b / a, the weight of the pass, and v-part / b is its normalised output. The
counts are the same trick with every score 0: |pass| = m b / a exactly (rounded; float32, counts < 2^22);
the always pass, and lsh table 0 of a call without padding, are counted in closed form instead (no second pass).
The sentinel columns come back at the passes' precision, so CPU runs bfloat16/float16 calls in float32.

Every table (tree) of a call runs one compiled graph: the table index is a tensor argument, and the
exclusion of earlier tables loops over all of them with `e < t` as part of the condition.
"""
import time
from types import SimpleNamespace
from typing import Dict, List, Optional, Tuple

import torch

from lsh_bitnet.attention.engines.flex_counts import always_counts, first_table_counts
from lsh_bitnet.attention.engines.flex_forest import forest_always_overlap, forest_shifts
from lsh_bitnet.attention.engines.flex_pass import (  # noqa: F401  (BS, REAL: re-exported)
    BS, COUNT_DIM, LSE_COUNT_MAX_KEYS, REAL, _compiled, _device_consts, _table_index, lse_merge)

FAR = 2 ** 62  # code of padding rows: sorts last and matches nothing valid
# One compiled graph per (padded shape, dtype, n_tables); a sweep over shapes must not fall back to eager.
torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit, 4096)

SEEN: Dict[Tuple, float] = {}  # compile key -> seconds of its first (compiling) call
RERUN: Dict[Tuple, float] = {}  # compile key -> seconds of its second call: what the first cost besides compiling
COMPILED: List[Tuple] = []  # compile keys in the order they compiled: a patch counts those after its start


def bucket(n_blocks: int) -> int:
    """Round a block count up to quarter-octave steps (at most 25% padding blocks, never visited), so a growing
    cache recompiles 4 times per doubling, not once per block."""
    step = 1 << max(0, n_blocks.bit_length() - 3)
    return -(-n_blocks // step) * step


def _ordered(blocks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(B, H, nQ, nK) bool -> kv_num (B, H, nQ) int32, kv_idx (B, H, nQ, nK) int32 (True columns first)."""
    num = blocks.sum(-1, dtype=torch.int32)
    idx = torch.argsort((~blocks).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return num, idx.contiguous()


def _block_stats(x: torch.Tensor, valid: torch.Tensor, size: int):
    """Per block of `size` along the last dim: (min, max) of x over valid rows; empty blocks give (FAR, -FAR)."""
    shp = x.shape[:-1] + (x.shape[-1] // size, size)
    xv, vv = x.view(shp), valid.view(shp)
    lo = xv.masked_fill(~vv, FAR).amin(-1)
    hi = xv.masked_fill(~vv, -FAR).amax(-1)
    return lo, hi


def _with_sentinels(x: torch.Tensor, nKb: int) -> torch.Tensor:
    """(B, H, K, ...) in key order -> (B, H, nKb * BS, ...): REAL keys per block behind a zero sentinel slot."""
    B, H, K = x.shape[:3]
    pad = x.new_zeros((B, H, nKb * REAL - K) + x.shape[3:])
    blocks = torch.cat([x, pad], 2).view((B, H, nKb, REAL) + x.shape[3:])
    zero = blocks.new_zeros((B, H, nKb, 1) + x.shape[3:])
    return torch.cat([zero, blocks], 3).view((B, H, nKb * BS) + x.shape[3:])


def _layout(c: SimpleNamespace, t: int) -> SimpleNamespace:
    """Order and block masks of pass t (-1: always pass): which (query block, key block) may hold a pair
    (partial: mask_mod decides per element) and which hold only pairs (full: no mask_mod)."""
    B, Hq, Hkv, Q, K, g, dev, nQb, nKb = c.B, c.Hq, c.Hkv, c.Q, c.K, c.g, c.dev, c.nQb, c.nKb
    Qp, bq, hq, hk, qvalid, key_valid = c.Qp, c.bq, c.hq, c.hk, c.qvalid, c.key_valid
    qc0, kc0, inc_self, sinks, window = c.qc0, c.kc0, c.inc_self, c.sinks, c.window
    qslot0, kslot0, qcount0, kcount0 = c.qslot0, c.kslot0, c.qcount0, c.kcount0
    # Orders: original for the always pass; (code, slot) per head for table t, padding rows last.
    if t < 0:
        qsrc = torch.arange(Q, device=dev).expand(B, Hq, Q)
        ksrc = torch.arange(K, device=dev).expand(B, Hkv, K)
    else:  # stable sort by code keeps slots ascending within a bucket
        qkey = qc0[t, ..., :Q]  # (B, Hq, Q)
        if c.qshift0 is not None:
            # Forest: queries grouped by depth first, then code, so a query block's prefix ranges are alike. Sorted
            # by code alone, the first queries (x* = 0: every key is a candidate) would sit in every query block
            # and make it visit every key block. Codes < 2^max_depth, max_depth <= 56 (rules/lsh_forest.py
            # FOREST_FLEX_MAX_DEPTH), so (shift, code) packs in one int64 below FAR.
            qkey = (c.qshift0[..., :Q] << int(c.bits)) | qkey
        qsrc = torch.sort(qkey.masked_fill(~qvalid[:, None], FAR), dim=-1, stable=True).indices
        ksrc = torch.sort(kc0[t, ..., :K].masked_fill(~key_valid[:, None], FAR), dim=-1, stable=True).indices
    qsrc = torch.cat([qsrc, qsrc.new_full((B, Hq, Qp - Q), Q)], -1)  # (B, Hq, Qp)
    ksrc = _with_sentinels(ksrc[..., None] + 1, nKb)[..., 0] - 1  # (B, Hkv, Kp), -1 at sentinel slots
    ksrc = ksrc.masked_fill(ksrc < 0, K)
    qslot, kslot = qslot0[bq, qsrc], kslot0[bq, ksrc]  # (B, Hq, Qp), (B, Hkv, Kp)
    qcount, kcount = qcount0[bq, qsrc], kcount0[bq, ksrc]
    qv, kv = qslot >= 0, kslot < FAR

    # Block-level facts -> blocks that may hold a pair (partial) and blocks holding only pairs (full).
    qs_lo, qs_hi = _block_stats(qslot, qv, BS)  # (B, Hq, nQb)
    qn_lo, qn_hi = _block_stats(qcount, qv, BS)
    rep = lambda x: x.repeat_interleave(g, 1)[:, :, None, :]  # noqa: E731  (B, Hkv, nKb) -> (B, Hq, 1, nKb)
    ks_lo, ks_hi = map(rep, _block_stats(kslot, kv, BS))
    kn_lo, kn_hi = map(rep, _block_stats(kcount, kv, BS))
    # rows past Q (qsrc == Q) may see a full block: their output is dropped; invalid real queries may not
    q_all = (qv | (qsrc == Q)).view(B, Hq, nQb, BS).all(-1)[..., None]  # (B, Hq, nQb, 1)
    k_all = rep(kv.view(B, Hkv, nKb, BS)[..., 1:].all(-1))
    col = lambda x: x[..., :, None]  # noqa: E731  (B, Hq, nQb) -> (B, Hq, nQb, 1)
    causal = ks_lo <= col(qs_hi)  # False where either block is empty (FAR / -FAR)
    all_in = k_all & q_all & (ks_hi <= col(qs_lo))  # every pair valid and causal
    self_may = (ks_hi >= col(qs_lo)) if inc_self else torch.zeros_like(causal)
    sink_may = kn_lo <= sinks  # some key is a sink (never with sinks = 0: positions count from 1)
    win_may = (col(qn_lo) - kn_hi < window) if window > 0 else torch.zeros_like(causal)
    if t < 0:
        may = causal & (self_may | sink_may | win_may)
        full = all_in & ((kn_hi <= sinks) | (col(qn_hi) - kn_lo < window))
    elif c.qshift0 is not None:  # forest tree t: query i matches the code range [lo_i, lo_i + 2^shift_i)
        qshift = c.qshift0[bq, hq, qsrc]  # (B, Hq, Qp)
        lo_i = (qc0[t][bq, hq, qsrc] >> qshift) << qshift
        qr_lo, _ = _block_stats(lo_i, qv, BS)  # per query block: the union of its queries' ranges
        _, qr_hi = _block_stats(lo_i + (1 << qshift) - 1, qv, BS)
        kk_lo, kk_hi = map(rep, _block_stats(kc0[t][bq, hk, ksrc], kv, BS))
        may = causal & (kk_lo <= col(qr_hi)) & (kk_hi >= col(qr_lo))
        full = torch.zeros_like(may)  # a key may share the prefix in an earlier tree: decided pair by pair
    else:
        qk_lo, qk_hi = _block_stats(qc0[t][bq, hq, qsrc], qv, BS)
        kk_lo, kk_hi = map(rep, _block_stats(kc0[t][bq, hk, ksrc], kv, BS))
        may = causal & (kk_lo <= col(qk_hi)) & (kk_hi >= col(qk_lo))
        one_code = (kk_lo == kk_hi) & (kk_lo == col(qk_lo)) & col(qk_lo == qk_hi)
        full = all_in & one_code & (ks_hi < col(qs_lo)) & ~sink_may & ~win_may if t == 0 else \
            torch.zeros_like(may)  # later tables exclude earlier collisions pair by pair
    kv_num, kv_idx = _ordered(may & ~full)
    full_num, full_idx = _ordered(full)
    m = (kv_num + full_num).repeat_interleave(BS, -1)  # (B, Hq, Qp): sentinels seen by each row
    return SimpleNamespace(qsrc=qsrc, ksrc=ksrc, qslot=qslot, kslot=kslot, qcount=qcount, kcount=kcount, qv=qv,
                           kv=kv, partial=may & ~full, full=full, kv_num=kv_num, kv_idx=kv_idx, full_num=full_num,
                           full_idx=full_idx, m=m)


def _prepare(query, key, key_valid, cands, all_valid: Optional[bool] = None) -> SimpleNamespace:
    """Original-order metadata shared by the passes; index K (keys) / Q (queries) is a dummy padding row.
    all_valid: whether key_valid has no padding, if the caller knows (registry.py: once per forward)."""
    spec = cands.spec
    B, Hq, Q, D = query.shape
    Hkv, K = key.shape[1], key.shape[2]
    g = Hq // Hkv
    dev = query.device
    nQb, nKb = bucket(-(-Q // BS)), bucket(-(-K // REAL))
    Qp, Kp = nQb * BS, nKb * BS
    if all_valid is None:
        all_valid = bool(key_valid.all())  # one host sync; without padding the mask reads slots only
    padded = not all_valid

    count = cands.count  # (B, K)
    slot = torch.arange(K, device=dev).expand(B, K)
    kslot0 = torch.cat([slot.masked_fill(~key_valid, FAR), torch.full((B, 1), FAR, device=dev)], -1)  # (B, K+1)
    kcount0 = torch.cat([count, torch.full((B, 1), FAR, device=dev)], -1)
    qvalid = key_valid[:, K - Q:]  # (B, Q)
    qslot0 = torch.cat([slot[:, K - Q:].masked_fill(~qvalid, -1), torch.full((B, 1), -1, device=dev)], -1)
    qcount0 = torch.cat([count[:, K - Q:], torch.full((B, 1), -FAR, device=dev)], -1)  # (B, Q+1)
    L = 0 if cands.qcodes is None else cands.qcodes.shape[0]
    qc0 = kc0 = None
    if L:
        qc0 = cands.qcodes.reshape(L, B, Hq, Q).to(torch.int64)  # (L, B, Hq, Q): head h -> KV head h // g
        kc0 = cands.kcodes.to(torch.int64)  # (L, B, Hkv, K)
        qc0 = torch.cat([qc0, torch.full_like(qc0[..., :1], FAR)], -1)
        kc0 = torch.cat([kc0, torch.full_like(kc0[..., :1], -FAR)], -1)
    qshift0 = forest_count = None
    if spec.rule.flex_passes == "tree":  # (B, Hq, Q + 1): d - x*(i), the code bits below the shared prefix
        shift, forest_size = forest_shifts(cands)
        forest_count = forest_size.sum() - forest_always_overlap(cands, shift)  # |C(i) \ A(i)| over heads, i
        qshift0 = torch.cat([shift, shift.new_zeros(B, Hq, 1)], -1)

    inc_self, sinks, window = bool(spec.include_self), int(spec.sink_tokens), int(spec.local_window)
    bq, hq, hk = (torch.arange(n, device=dev) for n in (B, Hq, Hkv))
    bq, hq, hk = bq.view(B, 1, 1), hq.view(1, Hq, 1), hk.view(1, Hkv, 1)
    passes: List[int] = ([-1] if (inc_self or sinks > 0 or window > 0) else []) + list(range(L))
    sentinel = (torch.arange(Kp, device=dev) % BS == 0)  # (Kp,)
    return SimpleNamespace(spec=spec, bits=cands.bits, D=D, Kp=Kp, padded=padded, count=count, L=L, sentinel=sentinel,
                           B=B, Hq=Hq, Hkv=Hkv, Q=Q, K=K, g=g, dev=dev, nQb=nQb, nKb=nKb, Qp=Qp, bq=bq, hq=hq, hk=hk,
                           qvalid=qvalid, key_valid=key_valid, qc0=qc0, kc0=kc0, inc_self=inc_self, sinks=sinks, window=window,
                           qslot0=qslot0, kslot0=kslot0, qcount0=qcount0, kcount0=kcount0, passes=passes,
                           qshift0=qshift0, forest_count=forest_count,
                           consts=_device_consts((int(inc_self), sinks, window, K - Q, Q, K), str(dev)))


def layouts(query, key, key_valid, cands):
    """[(t, layout)] of every pass (t = -1: the always pass), block masks only: what tests inspect."""
    c = _prepare(query, key, key_valid, cands)
    return [(t, _layout(c, t)) for t in c.passes]


def flex_sparse_attention(query, key, value, key_valid, cands, scaling: float, all_valid: Optional[bool] = None):
    """Output (B, Hq, Q, Dv) and comparisons (int64 0-d) for window / lsh / lsh_forest, equal to the masked engine's.
    all_valid: key_valid has no padding, when the caller knows it (else one host sync finds out)."""
    out_dtype = value.dtype
    lse = lse_merge(query.device)
    if not lse and query.dtype in (torch.float16, torch.bfloat16):
        # The sentinel columns would come back at the query's precision: in float16 a pass's mass underflows once
        # its best key scores ~10 nats above s0, in bfloat16 the weights are off by up to ~0.4%. CPU runs float32.
        query, key, value = query.float(), key.float(), value.float()
    c = _prepare(query, key, key_valid, cands, all_valid)
    spec, B, Hq, Hkv, Q, K, D, g, dev = c.spec, c.B, c.Hq, c.Hkv, c.Q, c.K, c.D, c.g, c.dev
    Dv, nKb, Qp, Kp, padded, L, bq, hq, hk = value.shape[-1], c.nKb, c.Qp, c.Kp, c.padded, c.L, c.bq, c.hq, c.hk
    qc0, kc0, qvalid, count, sentinel = c.qc0, c.kc0, c.qvalid, c.count, c.sentinel
    consts = c.consts
    if lse:
        s0 = None  # no sentinel scores: the passes return their log-sum-exp
    else:  # s0(i) = scale * q_i . k_slot(i): a reference score on the scale of the row (float32)
        s0 = (query.float() * key[:, :, K - Q:].float().repeat_interleave(g, 1)).sum(-1) * scaling  # (B, Hq, Q)
    n_cmp = (always_counts(count[:, K - Q:], qvalid.to(torch.int64), spec).sum() * Hq)
    if c.forest_count is not None:  # the trees' passes counted in closed form: no counting passes
        n_cmp = n_cmp + c.forest_count
    masses: List[torch.Tensor] = []  # per pass (B, Hq, Q): its softmax mass Z / e^s0 (float64), or its lse (float32)
    outs: List[torch.Tensor] = []
    for t in c.passes:
        lay = _layout(c, t)
        qsrc, ksrc, qslot, kslot, qcount, kcount = lay.qsrc, lay.ksrc, lay.qslot, lay.kslot, lay.qcount, lay.kcount
        kv, m = lay.kv, lay.m
        kv_num, kv_idx, full_num, full_idx = lay.kv_num, lay.kv_idx, lay.full_num, lay.full_idx

        # Inputs in this order: queries (padding rows 0), keys/values with sentinel slots (k = 0).
        if t < 0:  # original order: a reshape, not a gather
            kx = _with_sentinels(key, nKb)
            vx = _with_sentinels(value, nKb)
            qx = torch.cat([query, query.new_zeros(B, Hq, Qp - Q, D)], 2)
            s0x = None if lse else torch.cat([s0, s0.new_zeros(B, Hq, Qp - Q)], -1)
        else:
            kidx = ksrc.clamp(max=K - 1)
            kx = key[bq, hk, kidx].masked_fill(~kv[..., None], 0)  # (B, Hkv, Kp, D)
            vx = value[bq, hk, kidx].masked_fill(~kv[..., None], 0)
            qidx = qsrc.clamp(max=Q - 1)
            qx = query[bq, hq, qidx].masked_fill(~(qsrc < Q)[..., None], 0)  # (B, Hq, Qp, D)
            s0x = None if lse else s0[bq, hq, qidx]
        if not lse:  # [v | 1 | e_sent]
            vx = torch.cat([vx, kv[..., None].to(vx.dtype), sentinel.expand(B, Hkv, Kp)[..., None].to(vx.dtype)], -1)
        qcodes = qc0[:, bq, hq, qsrc] if L else qslot[None]  # (L, B, Hq, Qp); unused by the always pass
        kcodes = kc0[:, bq, hk, ksrc] if L else kslot[None]
        qshift = c.qshift0[bq, hq, qsrc] if c.qshift0 is not None else qslot  # (B, Hq, Qp); unused by lsh
        tix = _table_index(max(t, 0), dev)
        args = (tix, kv_num, kv_idx, full_num, full_idx, qslot, kslot, qcount, kcount, qcodes, kcodes, qshift)
        kind = "always" if t < 0 else ("tree" if c.qshift0 is not None else "table")
        res = _timed(("main", kind, padded, lse, tuple(qx.shape), tuple(kx.shape), Dv, qx.dtype, str(dev), L, scaling),
                     _compiled(kind, padded, False, not lse), qx, kx, vx, *args,
                     consts if s0x is None else s0x, consts, g, scaling)
        o, pass_lse = res if lse else (res, None)
        # back to original query order; padding rows (qsrc == Q) drop out
        if t < 0:
            pos = None
            o, mq = o[:, :, :Q], m[..., :Q]
            pass_lse = None if pass_lse is None else pass_lse[..., :Q]
        else:
            pos = torch.empty_like(qsrc).scatter_(-1, qsrc, torch.arange(Qp, device=dev).expand(B, Hq, Qp))[..., :Q]
            o, mq = o.gather(2, pos[..., None].expand(B, Hq, Q, o.shape[-1])), m.gather(2, pos)  # (B, Hq, Q, Dv [+ 2])
            pass_lse = None if pass_lse is None else pass_lse.gather(2, pos)
        if lse:  # each pass normalised by flex; its log-sum-exp (float32) weighs it (-inf: an empty pass)
            ok = (mq > 0) & torch.isfinite(pass_lse)
            masses.append(torch.where(ok, pass_lse.float(), float("-inf")))  # (B, Hq, Q)
            outs.append(torch.where(ok[..., None], o.float(), 0.0))  # (B, Hq, Q, Dv)
        else:
            a, b = o[..., Dv + 1].double(), o[..., Dv].double()
            ok = (mq > 0) & (b > 0)
            # Z / e^s0, this pass's softmax mass (float64: a may be tiny), and its normalised output (float32)
            masses.append(torch.where(ok, mq * b / a.clamp(min=1e-300), 0.0))  # (B, Hq, Q)
            normed = o[..., :Dv].float() / o[..., Dv:Dv + 1].float().clamp(min=1e-30)
            outs.append(torch.where(ok[..., None], normed, 0.0))  # (B, Hq, Q, Dv); rows of an empty pass may be NaN
        if t == 0 and not padded and kind == "table":
            n_cmp = n_cmp + first_table_counts(qc0[0, ..., :Q], kc0[0, ..., :K], spec, g, c.bits)
        elif kind == "table":
            n_cmp = n_cmp + _count_pass(c, lay, args, kind, pos, lse and K <= LSE_COUNT_MAX_KEYS)
    if not outs:  # include_self=false and nothing else: every C(i) is empty
        return value.new_zeros(B, Hq, Q, Dv).to(out_dtype), n_cmp
    mass = torch.stack(masses)  # (P, B, Hq, Q)
    if lse:  # softmax over the passes' lse: the largest gets exp(0) = 1, so no row underflows as a whole
        top = mass.amax(0)
        w = torch.exp(mass - torch.where(torch.isfinite(top), top, 0.0))  # exp(-inf) = 0 for empty passes
        w = w / w.sum(0).clamp(min=1e-30)
    else:
        w = (mass / mass.sum(0).clamp(min=1e-300)).float()  # each pass's share of the softmax; 0 rows stay 0
    out = sum(w[p, ..., None] * outs[p] for p in range(len(outs)))
    return out.to(out_dtype), n_cmp


def _count_pass(c, lay, args, kind, pos, lse: bool) -> torch.Tensor:
    """|pass| summed over query heads and queries (int64 0-d), from a pass whose scores are all 0: exp(lse) per
    row (lse: float32, exact to 2^17 keys), or the sentinel trick m b / a (float32, counts < 2^22)."""
    B, Hq, Hkv, Q, Qp, Kp, g, dev = c.B, c.Hq, c.Hkv, c.Q, c.Qp, c.Kp, c.g, c.dev
    zq = torch.zeros(B, Hq, Qp, COUNT_DIM, device=dev)
    vc = torch.zeros(B, Hkv, Kp, COUNT_DIM, device=dev)
    mq = lay.m.gather(2, pos).double()
    if lse:
        _, n_lse = _timed(("count", kind, c.padded, True, tuple(zq.shape), tuple(vc.shape), str(dev), c.L),
                          _compiled(kind, c.padded, True, False), zq, vc, vc, *args, zq[..., 0], c.consts, g, 1.0)
        n_lse = n_lse.gather(2, pos).double()
        n = torch.where((mq > 0) & torch.isfinite(n_lse), n_lse.exp(), 0.0)
    else:  # ones column over real keys, sentinel column
        vc[..., 0], vc[..., 1] = lay.kv.float(), c.sentinel.float()
        oc = _timed(("count", kind, c.padded, False, tuple(zq.shape), tuple(vc.shape), str(dev), c.L),
                    _compiled(kind, c.padded, True, True), zq, vc, vc, *args, zq[..., 0], c.consts, g, 1.0)
        oc = oc.gather(2, pos[..., None].expand(B, Hq, Q, COUNT_DIM)).double()
        n = torch.where((mq > 0) & (oc[..., 0] > 0), mq * oc[..., 0] / oc[..., 1].clamp(min=1e-300), 0.0)
    return torch.round(n).to(torch.int64).sum()


def _timed(key, fn, *args):
    """Call fn; the first two calls of each compile key are timed, so compile_stats holds compilation alone."""
    if key in RERUN:
        return fn(*args)
    start = time.perf_counter()
    out = fn(*args)
    first = out[0] if isinstance(out, tuple) else out
    if first.is_cuda:
        torch.cuda.synchronize(first.device)  # its own device: model.device=cuda:1 must not wait on cuda:0
    took = time.perf_counter() - start
    if key in SEEN:
        RERUN[key] = took
    else:
        SEEN[key] = took
        COMPILED.append(key)
    return out


def compile_stats(start: int = 0) -> dict:
    """{"compile_s", "compiles"} of the graphs compiled after the first `start`: compilation seconds are each
    graph's first call less its second (the run itself), or the whole first call for a graph that ran once."""
    keys = COMPILED[start:]
    return {"compile_s": sum(SEEN[k] - min(RERUN.get(k, 0.0), SEEN[k]) for k in keys), "compiles": len(keys)}
