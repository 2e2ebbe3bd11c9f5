"""One flex pass of the flex engine (engines/flex.py): the compiled flex_attention call over a block mask, its
graphs (one per pass kind, padding, counting and merge: the table index is a tensor argument), and what decides
how passes are merged (the log-sum-exp on CUDA, sentinel keys on CPU).
"""
import functools
from typing import Dict, Tuple

import torch
from torch.nn.attention.flex_attention import AuxRequest, BlockMask, flex_attention

BS = 128  # flex's default sparse block; the CPU kernel tiles by it
REAL = BS - 1  # real keys per key block: slot 0 is the sentinel
COUNT_DIM = 16  # q/k/v head dim of the counting pass: flex needs >= 16; scores are 0 anyway
# Devices whose flex returns the log-sum-exp (CUDA: return_aux=AuxRequest(lse=True)); elsewhere sentinel keys.
LSE_DEVICES = ("cuda",)
# exp(float32 lse) of a counting pass is an exact count up to here (relative error ~1.5e-6: 0.2 at 2^17); beyond
# it the counting pass uses the sentinel trick (float32, exact below 2^22).
LSE_COUNT_MAX_KEYS = 1 << 17
COMPILE = True  # False: run the passes eagerly (tests of the lse merge on CPU, where compiled flex has no lse)


def _make_pass(kind: str, padded: bool, counting: bool, sentinel: bool):
    """The flex call of one pass. kind "always" (self, sinks, window), "table" (lsh table t minus earlier ones)
    or "tree" (lsh_forest tree t minus earlier ones: codes equal above the query's shift d - x*(i)).

    Flags are Python constants, so each (kind, padded, counting, sentinel) is its own small graph: the mask does
    only the lookups it needs. Without padding a slot's position is the slot itself, so counts are not read. The
    table index t is a tensor, so every table of a call shares one graph. sentinel: the mask keeps slot 0 of every
    visited block and score_mod gives it s0 (CPU: merging without the log-sum-exp); else the call returns the
    log-sum-exp and sentinel slots are out: mask_mod drops them in partial blocks, score_mod (-inf) in full ones.
    """

    def run(q, k, v, t, kv_num, kv_idx, full_num, full_idx, qslot, kslot, qcount, kcount, qcodes, kcodes, qshift, s0,
            consts, g: int, scale: float):
        # qslot (B, Hq, Qp) (-1: padding), kslot (B, Hkv, Kp) (FAR: padding or sentinel), sorted order;
        # qcount/kcount likewise (read only when padded); codes (L, B, H, len); qshift (B, Hq, Qp) (trees only);
        # t: 0-d int64, the pass's table; consts = [self, sinks, window, K - Q, Q, K] (tensors: one graph serves
        # every length of a bucket).
        L = qcodes.shape[0]

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
            cand = ks <= qs  # False at sentinel slots (ks FAR or 2^30)
            if kind == "always":
                cand = cand & always
            elif kind == "tree":  # shared prefix of x*(i) bits: the code bits above the query's shift agree
                sh = qshift[b, h, qi]
                cand = cand & ~always & (((qcodes[t, b, h, qi] ^ kcodes[t, b, hk, ki]) >> sh) == 0)
                for e in range(L - 1):  # disjoint passes: not sharing the prefix in an earlier tree e < t
                    cand = cand & ((((qcodes[e, b, h, qi] ^ kcodes[e, b, hk, ki]) >> sh) != 0) | (t <= e))
            else:
                cand = cand & ~always & (qcodes[t, b, h, qi] == kcodes[t, b, hk, ki])
                for e in range(L - 1):  # disjoint passes: not already counted by an earlier table e < t
                    cand = cand & ((qcodes[e, b, h, qi] != kcodes[e, b, hk, ki]) | (t <= e))
            return cand | (ki % BS == 0) if sentinel else cand  # the sentinel of every visited block

        def score_mod(score, b, h, qi, ki):
            if not sentinel:  # full blocks read no mask_mod: their sentinel slot is dropped here
                return torch.where(ki % BS == 0, float("-inf"), score)
            if counting:
                return torch.where(ki % BS == 0, 0.0, score * 0.0)
            return torch.where(ki % BS == 0, s0[b, h, qi], score)

        if not COMPILE:  # eager flex applies mask_mod to every pair: make it see the blocks as the kernels do
            mask_mod = _as_kernels_see_it(mask_mod, kv_num, kv_idx, full_num, full_idx)
        bm = BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=BS, mask_mod=mask_mod,
                                      seq_lengths=(q.shape[2], k.shape[2]), compute_q_blocks=False)
        if sentinel:
            return flex_attention(q, k, v, score_mod=score_mod, block_mask=bm, scale=scale, enable_gqa=g > 1)
        # counting: q and k are zeros, so every score is 0 and exp(lse) is the number of candidates
        out, aux = flex_attention(q, k, v, score_mod=score_mod, block_mask=bm, scale=scale, enable_gqa=g > 1,
                                  return_aux=AuxRequest(lse=True))
        return out, aux.lse

    return torch.compile(run, dynamic=False, fullgraph=True) if COMPILE else run


def _as_kernels_see_it(mask_mod, kv_num, kv_idx, full_num, full_idx):
    """mask_mod as the compiled kernels apply it: skipped blocks attend to nothing, full blocks to every pair
    (mask_mod unread), partial blocks by mask_mod. Eager flex (COMPILE = False, the tests) reads mask_mod on every
    pair, so a pass that relied on mask_mod inside a full block would pass there and fail on a GPU."""
    def dense(num, idx):  # (B, H, nQ) counts and (B, H, nQ, nK) indices -> (B, H, nQ, nK) bool
        listed = torch.arange(idx.shape[-1], device=idx.device) < num[..., None]
        return torch.zeros(idx.shape, dtype=torch.bool, device=idx.device).scatter_(-1, idx.long(), listed)

    partial, full = dense(kv_num, kv_idx), dense(full_num, full_idx)

    def seen(b, h, qi, ki):
        return full[b, h, qi // BS, ki // BS] | (partial[b, h, qi // BS, ki // BS] & mask_mod(b, h, qi, ki))

    return seen


_COMPILED: Dict[Tuple, object] = {}


def _compiled(*flags):
    if flags not in _COMPILED:
        _COMPILED[flags] = _make_pass(*flags)
    return _COMPILED[flags]


def lse_merge(device: torch.device) -> bool:
    """Whether passes are merged on flex's float32 log-sum-exp (CUDA) rather than by sentinel keys (CPU: compiled
    flex on CPU cannot return the log-sum-exp, torch 2.13)."""
    return device.type in LSE_DEVICES


@functools.lru_cache(maxsize=64)
def _device_consts(values: Tuple[int, ...], device: str) -> torch.Tensor:
    """The pass constants as a device tensor, copied once per (values, device): a prefill's layers share them,
    and a host-to-device copy per call would be a host sync per layer."""
    return torch.tensor(values, dtype=torch.int64, device=device)


def _table_index(t: int, device) -> torch.Tensor:
    return torch.full((), t, dtype=torch.int64, device=device)  # a fill, not a host-to-device copy
