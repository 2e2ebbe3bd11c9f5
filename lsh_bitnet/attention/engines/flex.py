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

Merging passes without log-sum-exp: compiled flex on CPU cannot return the LSE (torch 2.13), so slot 0 of
every key block is a *sentinel*: key 0, value e_sent, score s0(i) = scale * q_i . k_i (set by score_mod).
Values carry two extra columns, [v | 1 | e_sent]. Every visited block adds one sentinel, m(i) in all, so
a pass returns b = Z / (Z + m e^s0) in the ones column and a = m e^s0 / (Z + m e^s0) in the sentinel
column: Z / e^s0 = m b / a, the weight of the pass, and v-part / b is its normalised output. The
counts are the same trick with every score 0: |pass| = m b / a exactly (rounded; float32, counts < 2^22);
the always pass, and lsh table 0 of a call without padding, are counted in closed form instead (no second pass).
"""
import time
from types import SimpleNamespace
from typing import Dict, List, Tuple

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from lsh_bitnet.attention.engines.flex_counts import always_counts, first_table_counts
from lsh_bitnet.attention.engines.flex_forest import forest_always_overlap, forest_shifts

BS = 128  # flex's default sparse block; the CPU kernel tiles by it
REAL = BS - 1  # real keys per key block: slot 0 is the sentinel
COUNT_DIM = 16  # q/k/v head dim of the counting pass: flex needs >= 16; scores are 0 anyway
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


def _make_pass(kind: str, t: int, padded: bool, counting: bool):
    """The flex call of one pass. kind "always" (self, sinks, window), "table" (lsh table t minus earlier ones)
    or "tree" (lsh_forest tree t minus earlier ones: codes equal above the query's shift d - x*(i)).

    Flags are Python constants, so each (kind, t, padded, counting) is its own small graph: the mask does
    only the lookups it needs. Without padding a slot's position is the slot itself, so counts are not read.
    """

    def run(q, k, v, kv_num, kv_idx, full_num, full_idx, qslot, kslot, qcount, kcount, qcodes, kcodes, qshift, s0,
            consts, g: int, scale: float):
        # qslot (B, Hq, Qp) (-1: padding), kslot (B, Hkv, Kp) (FAR: padding or sentinel), sorted order;
        # qcount/kcount likewise (read only when padded); codes (L, B, H, len); qshift (B, Hq, Qp) (trees only);
        # consts = [self, sinks, window, K - Q, Q, K] (tensors: one graph serves every length of a bucket).
        def mask_mod(b, h, qi, ki):
            hk = h // g
            if kind == "always" and not padded:  # original order, no padding: slots from indices, no lookups
                qs = torch.where(qi < consts[4], qi + consts[3], -1)
                ks = ki - ki // BS - 1  # REAL keys behind each block's sentinel
                ks = torch.where((ki % BS != 0) & (ks < consts[5]), ks, 1 << 30)  # int32 indices here
            else:
                qs, ks = qslot[b, h, qi], kslot[b, hk, ki]
            if padded:
                qn, kn = qcount[b, h, qi], kcount[b, hk, ki]
                always = ((consts[0] > 0) & (ks == qs)) | (kn <= consts[1]) | (qn - kn < consts[2])
            else:  # position = slot
                always = ((consts[0] > 0) & (ks == qs)) | (ks < consts[1]) | (qs - ks < consts[2])
            cand = ks <= qs
            if kind == "always":
                cand = cand & always
            elif kind == "tree":  # shared prefix of x*(i) bits: the code bits above the query's shift agree
                sh = qshift[b, h, qi]
                cand = cand & ~always & (((qcodes[t, b, h, qi] ^ kcodes[t, b, hk, ki]) >> sh) == 0)
                for e in range(t):
                    cand = cand & (((qcodes[e, b, h, qi] ^ kcodes[e, b, hk, ki]) >> sh) != 0)
            else:
                cand = cand & ~always & (qcodes[t, b, h, qi] == kcodes[t, b, hk, ki])
                for e in range(t):  # disjoint passes: not already counted by an earlier table
                    cand = cand & (qcodes[e, b, h, qi] != kcodes[e, b, hk, ki])
            return cand | (ki % BS == 0)  # the sentinel of every visited block

        def score_mod(score, b, h, qi, ki):
            if counting:
                return torch.where(ki % BS == 0, 0.0, score * 0.0)
            return torch.where(ki % BS == 0, s0[b, h, qi], score)

        bm = BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=BS, mask_mod=mask_mod,
                                      seq_lengths=(q.shape[2], k.shape[2]), compute_q_blocks=False)
        return flex_attention(q, k, v, score_mod=score_mod, block_mask=bm, scale=scale, enable_gqa=g > 1)

    return torch.compile(run, dynamic=False, fullgraph=True)


_COMPILED: Dict[Tuple, object] = {}


def _compiled(*flags):
    if flags not in _COMPILED:
        _COMPILED[flags] = _make_pass(*flags)
    return _COMPILED[flags]


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
            # and make it visit every key block. Codes < 2^max_depth, so (shift, code) packs in one int64.
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


def _prepare(query, key, key_valid, cands) -> SimpleNamespace:
    """Original-order metadata shared by the passes; index K (keys) / Q (queries) is a dummy padding row."""
    spec = cands.spec
    B, Hq, Q, D = query.shape
    Hkv, K = key.shape[1], key.shape[2]
    g = Hq // Hkv
    dev = query.device
    nQb, nKb = bucket(-(-Q // BS)), bucket(-(-K // REAL))
    Qp, Kp = nQb * BS, nKb * BS
    padded = not bool(key_valid.all())  # one host sync; without padding the mask reads slots only

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
                           qshift0=qshift0, forest_count=forest_count)


def layouts(query, key, key_valid, cands):
    """[(t, layout)] of every pass (t = -1: the always pass), block masks only: what tests inspect."""
    c = _prepare(query, key, key_valid, cands)
    return [(t, _layout(c, t)) for t in c.passes]


def flex_sparse_attention(query, key, value, key_valid, cands, scaling: float):
    """Output (B, Hq, Q, Dv) and comparisons (int64 0-d) for window / lsh / lsh_forest, equal to the masked engine's."""
    c = _prepare(query, key, key_valid, cands)
    spec, B, Hq, Hkv, Q, K, D, g, dev = c.spec, c.B, c.Hq, c.Hkv, c.Q, c.K, c.D, c.g, c.dev
    Dv, nKb, Qp, Kp, padded, L, bq, hq, hk = value.shape[-1], c.nKb, c.Qp, c.Kp, c.padded, c.L, c.bq, c.hq, c.hk
    qc0, kc0, qvalid, count, sentinel = c.qc0, c.kc0, c.qvalid, c.count, c.sentinel
    # s0(i) = scale * q_i . k_slot(i): a reference score on the scale of the row (float32)
    s0 = (query.float() * key[:, :, K - Q:].float().repeat_interleave(g, 1)).sum(-1) * scaling  # (B, Hq, Q)
    consts = torch.tensor([int(spec.include_self), int(spec.sink_tokens), int(spec.local_window), K - Q, Q, K],
                          dtype=torch.int64, device=dev)
    n_cmp = (always_counts(count[:, K - Q:], qvalid.to(torch.int64), spec).sum() * Hq)
    if c.forest_count is not None:  # the trees' passes counted in closed form: no counting passes
        n_cmp = n_cmp + c.forest_count
    masses: List[torch.Tensor] = []
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
            s0x = torch.cat([s0, s0.new_zeros(B, Hq, Qp - Q)], -1)
        else:
            kidx = ksrc.clamp(max=K - 1)
            kx = key[bq, hk, kidx].masked_fill(~kv[..., None], 0)  # (B, Hkv, Kp, D)
            vx = value[bq, hk, kidx].masked_fill(~kv[..., None], 0)
            qidx = qsrc.clamp(max=Q - 1)
            qx = query[bq, hq, qidx].masked_fill(~(qsrc < Q)[..., None], 0)  # (B, Hq, Qp, D)
            s0x = s0[bq, hq, qidx]
        vx = torch.cat([vx, kv[..., None].to(vx.dtype), sentinel.expand(B, Hkv, Kp)[..., None].to(vx.dtype)], -1)
        qcodes = qc0[:, bq, hq, qsrc] if L else qslot[None]  # (L, B, Hq, Qp); unused by the always pass
        kcodes = kc0[:, bq, hk, ksrc] if L else kslot[None]
        qshift = c.qshift0[bq, hq, qsrc] if c.qshift0 is not None else qslot  # (B, Hq, Qp); unused by lsh
        args = (kv_num, kv_idx, full_num, full_idx, qslot, kslot, qcount, kcount, qcodes, kcodes, qshift)
        kind = "always" if t < 0 else ("tree" if c.qshift0 is not None else "table")
        o = _timed(("main", kind, t, padded, tuple(qx.shape), tuple(kx.shape), Dv, qx.dtype, str(dev), L, scaling),
                   _compiled(kind, max(t, 0), padded, False), qx, kx, vx, *args, s0x, consts, g, scaling)
        # back to original query order; padding rows (qsrc == Q) drop out
        if t < 0:
            pos = None
            o, mq = o[:, :, :Q], m[..., :Q]
        else:
            pos = torch.empty_like(qsrc).scatter_(-1, qsrc, torch.arange(Qp, device=dev).expand(B, Hq, Qp))[..., :Q]
            o, mq = o.gather(2, pos[..., None].expand(B, Hq, Q, Dv + 2)), m.gather(2, pos)  # (B, Hq, Q, Dv + 2)
        a, b = o[..., Dv + 1].double(), o[..., Dv].double()
        ok = (mq > 0) & (b > 0)
        # Z / e^s0, this pass's softmax mass (float64: a may be tiny), and its normalised output (float32)
        masses.append(torch.where(ok, mq * b / a.clamp(min=1e-300), 0.0))  # (B, Hq, Q)
        normed = o[..., :Dv].float() / o[..., Dv:Dv + 1].float().clamp(min=1e-30)
        outs.append(torch.where(ok[..., None], normed, 0.0))  # (B, Hq, Q, Dv); rows of an empty pass may be NaN
        if t == 0 and not padded and kind == "table":
            n_cmp = n_cmp + first_table_counts(qc0[0, ..., :Q], kc0[0, ..., :K], spec, g)
        elif kind == "table":  # counting pass, float32, every score 0: ones column over real keys, sentinel column
            zq = torch.zeros(B, Hq, Qp, COUNT_DIM, device=dev)
            vc = torch.zeros(B, Hkv, Kp, COUNT_DIM, device=dev)
            vc[..., 0], vc[..., 1] = kv.float(), sentinel.float()
            oc = _timed(("count", kind, t, padded, tuple(zq.shape), tuple(vc.shape), str(dev), L),
                        _compiled(kind, t, padded, True), zq, vc, vc, *args, s0x.float(), consts, g, 1.0)
            oc = oc.gather(2, pos[..., None].expand(B, Hq, Q, COUNT_DIM)).double()
            mq = mq.double()
            n = torch.where((mq > 0) & (oc[..., 0] > 0), mq * oc[..., 0] / oc[..., 1].clamp(min=1e-300), 0.0)
            n_cmp = n_cmp + torch.round(n).to(torch.int64).sum()
    if not outs:  # include_self=false and nothing else: every C(i) is empty
        return value.new_zeros(B, Hq, Q, Dv), n_cmp
    mass = torch.stack(masses)  # (P, B, Hq, Q)
    w = (mass / mass.sum(0).clamp(min=1e-300)).float()  # each pass's share of the softmax; 0 rows stay 0
    out = sum(w[p, ..., None] * outs[p] for p in range(len(outs)))
    return out.to(value.dtype), n_cmp


def _timed(key, fn, *args):
    """Call fn; the first two calls of each compile key are timed, so compile_stats holds compilation alone."""
    if key in RERUN:
        return fn(*args)
    start = time.perf_counter()
    out = fn(*args)
    if out.is_cuda:
        torch.cuda.synchronize()
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
