"""Budgeted top-k selection shared by oracle_topk and lsh_topk (SPEC sections 3 and 7).

Budget: k_i = min(k, |V(i)|) or ceil(fraction * |V(i)|); the k_i best-scoring keys of V(i), ties to the
lower key slot.
"""
import functools
import math
from fractions import Fraction
from typing import Optional, Tuple

import torch

from lsh_bitnet.attention.hostsync import sync_free


@functools.lru_cache(maxsize=64)
def _budget_values(fraction: float, size: int) -> Tuple[int, ...]:
    frac = Fraction(repr(float(fraction)))
    return tuple(min(n, math.ceil(frac * n)) for n in range(size))


@functools.lru_cache(maxsize=64)
def _budget_table(fraction: float, size: int) -> torch.Tensor:
    return torch.tensor(_budget_values(fraction, size), dtype=torch.int64)


def fraction_budgets(fraction: float, n: int) -> torch.Tensor:
    """Oracle budgets ceil(fraction * m) for m = 0..n (at least), exact for the decimal the user typed.

    In float64, 0.07 * 100 = 7.000000000000001 would ceil to 8: the fraction is read as the decimal
    repr(fraction) and multiplied exactly. Tables grow by powers of two, so decode steps hit the cache.
    """
    return _budget_table(float(fraction), 1 << max(n, 1).bit_length())


@functools.lru_cache(maxsize=64)
def _budget_table_on(fraction: float, size: int, device: str) -> torch.Tensor:
    """_budget_table copied to `device` once, not once per query chunk (a host-to-device copy waits on CUDA)."""
    return _budget_table(fraction, size).to(device)


def row_count(mask: torch.Tensor) -> torch.Tensor:
    """Number of True per row of a bool (..., kc) tensor, as int64 (...). A uint8 sum is ~3x faster."""
    return mask.view(torch.uint8).sum(-1, dtype=torch.int32).to(torch.int64)


# Integer scores folded with their key slot must fit int32 (R = 256 bits at 8192 keys needs 4.2 M). int32
# rather than float32: exact far beyond 2**24, and CPU topk runs ~1.7x faster on int32 than on float32.
INT32_FOLD_LIMIT = 1 << 31


def kth_largest(s: torch.Tensor, k_i: torch.Tensor, k_max: int) -> torch.Tensor:
    """The k_i-th largest value of each row of s (..., Qc, kc), as (..., Qc, 1); k_i (..., Qc) in [0, k_max],
    0 read as 1.

    One unsorted top-k_max first: a linear-time selection, where a sorted one also sorts the k_max values
    (~1.4x the time for float rows of 8192 keys, ~2x for int32). Then only the bottom of those k_max
    values that some row's k_i reaches is sorted: in a chunk of queries k_i spans a few percent of k_max,
    since it grows with each query's causal keys.
    """
    k_i = k_i.clamp(min=1)
    top = s.topk(k_max, dim=-1, sorted=False).values  # (..., Qc, k_max), the k_max best in no order
    if sync_free(s.device):  # all k_max values: the same k_i-th best, without reading min(k_i) on the host
        depth = k_max
    else:
        depth = k_max - int(k_i.min()) + 1 if k_i.numel() else 1
    low = top.topk(depth, dim=-1, largest=False).values  # ascending: low[..., j] is the (k_max - j)-th best
    return low.gather(-1, (k_max - k_i).unsqueeze(-1))


def top_k_mask(scores: torch.Tensor, valid: torch.Tensor, k_i: torch.Tensor, k_max: int,
               int_bound: Optional[int] = None) -> torch.Tensor:
    """The k_i highest-scoring valid keys per query, ties to the lower key slot.

    scores (..., Qc, kc) float32 (may be overwritten), valid broadcastable to it, k_i (..., Qc) long with
    k_i <= |valid row|, k_max >= max(k_i). Returns (..., Qc, kc) bool. `int_bound` R says the scores are
    integers in [-R, R] (collision counts, agreeing bits; int32 or float32): each is then folded with its
    slot into one int32, (s + R) * kc + (kc - 1 - j), whose order is the rule's order with no ties
    left, so the tie pass (a cumsum over every row) is never needed.
    """
    if k_max <= 0:
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    kc = scores.shape[-1]
    folded = int_bound is not None and (2 * int_bound + 1) * kc <= INT32_FOLD_LIMIT
    if folded:  # int32 in [0, (2R + 1) * kc); invalid keys -1, below every valid one
        lower_first = torch.arange(kc - 1, -1, -1, dtype=torch.int32, device=scores.device)  # (kc,)
        s = scores.to(torch.int32).mul(kc).add_(lower_first.add_(int_bound * kc)).masked_fill_(~valid, -1)
    else:
        s = scores.float().masked_fill_(~valid, float("-inf"))
    kth = kth_largest(s, k_i, k_max)  # (..., Qc, 1): the k_i-th best score
    # Every row has a budget (no padding query) and a k_i-th score above the invalid keys' fill: `s >= kth`
    # then holds no invalid key and no row without a budget, so the three (rows x keys) ANDs with `valid` and
    # `k_i > 0` change nothing and are skipped (~9% of an oracle_topk call at 4096 tokens). Knowing it takes the
    # host two reads: where the host must not wait (sync_free), the ANDs run instead.
    every_row = not sync_free(s.device) and (
        k_i.numel() == 0 or bool(k_i.min() > 0) and (folded or bool((kth > float("-inf")).all())))
    chosen = s >= kth if every_row else (s >= kth) & (k_i > 0).unsqueeze(-1)
    if folded:  # distinct scores, invalid keys (-1) below every kth of a row with k_i > 0: exactly the k_i best
        return chosen
    excess = row_count(chosen) - k_i  # > 0 only where keys tie with the k_i-th score
    # float scores (the oracle) rarely tie: keep the lowest slots among the ties. Without ties the tie pass keeps
    # every tied key, so where the host must not wait for `any` (sync_free) it runs on every row.
    if sync_free(scores.device) or bool((excess > 0).any()):
        tied = s == kth
        need = k_i.unsqueeze(-1) - row_count(s > kth).unsqueeze(-1)
        chosen = (s > kth) | (tied & (tied.to(torch.int32).cumsum(-1, dtype=torch.int32) <= need))
    return chosen if every_row else chosen & valid & (k_i > 0).unsqueeze(-1)


def budget_of(k, fraction, n_visible: int) -> int:
    """k_i of one query that sees n_visible keys, on the host (what budgets gives it)."""
    if k is not None:
        return min(k, n_visible)
    return _budget_values(float(fraction), 1 << max(n_visible, 1).bit_length())[n_visible]


def budgets(k, fraction, n_valid: torch.Tensor, kc: int) -> Tuple[torch.Tensor, int]:
    """k_i (same shape as n_valid, long) and an upper bound k_max on them, for keys [0, kc)."""
    if k is not None:
        return n_valid.clamp(max=k), budget_of(k, None, kc)
    size = 1 << max(kc, 1).bit_length()  # fraction_budgets' table size
    table = _budget_table_on(float(fraction), size, str(n_valid.device))  # (>= kc + 1,) on the device
    return table[n_valid], budget_of(None, fraction, kc)  # k_max from host values: no device read
