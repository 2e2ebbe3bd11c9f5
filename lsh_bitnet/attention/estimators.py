"""How each candidate is weighted (SPEC section 7, MagicPIG's sampling estimator).

softmax: w_j = exp(s_ij) over C(i). sampling: candidates are an importance sample drawn by the hash
family, w_j = exp(s_ij) / p_ij, i.e. the additive score term -log p_ij; always-attend keys have p = 1.
One table's collision probability p1 is the hasher's own (Hasher.log_p_collision, in its module under
attention/hashers/); m of L independent tables give p = P[Binomial(L, p1) >= m], computed here.
Everything here is elementwise on float64 tensors, so a block-sparse engine can call it as a score_mod.
"""
import math

import torch

from lsh_bitnet.attention.hashers.bit_sampling import log_p_bit_sampling  # noqa: F401 (re-exported)
from lsh_bitnet.attention.hashers.simhash import log_p_simhash  # noqa: F401 (re-exported)
from lsh_bitnet.attention.hostsync import sync_free

# Below this, 1 - P[X < m] loses digits to cancellation (float64 keeps ~16): those entries are summed
# from the upper terms instead.
CANCELLATION = 1e-3
# -log p is capped so a candidate whose p underflows to 0 gets a huge, finite weight (never inf - inf = NaN).
MAX_BIAS = 1e4


def _log_term(i: int, L: int, log_p1: torch.Tensor, log_q1: torch.Tensor) -> torch.Tensor:
    """log C(L, i) p1^i (1 - p1)^(L - i); a zero exponent contributes 0 even where its log is -inf."""
    out = math.lgamma(L + 1) - math.lgamma(i + 1) - math.lgamma(L - i + 1) + torch.zeros_like(log_p1)
    if i > 0:
        out = out + i * log_p1
    if L - i > 0:
        out = out + (L - i) * log_q1
    return out


def log_tail(log_p1: torch.Tensor, n_tables: int, m: int) -> torch.Tensor:
    """log P[Binomial(L, p1) >= m] from log p1 (float64, any shape)."""
    L = n_tables
    if m <= 0:
        return torch.zeros_like(log_p1)
    log_q1 = torch.log1p(-log_p1.exp())  # log(1 - p1); -inf where p1 == 1
    if m == 1:
        return torch.log(-torch.expm1(L * log_q1))
    lower = torch.zeros_like(log_p1)
    for i in range(m):  # P[X < m], m terms
        lower += _log_term(i, L, log_p1, log_q1).exp()
    out = torch.log((1.0 - lower).clamp(min=0.0))
    small = (1.0 - lower) < CANCELLATION
    if sync_free(log_p1.device):  # every entry through the upper terms: no boolean indexing (a host sync each)
        acc = torch.full_like(log_p1, -math.inf)
        for i in range(m, L + 1):
            acc = torch.logaddexp(acc, _log_term(i, L, log_p1, log_q1))
        return torch.where(small, acc, out)
    if bool(small.any()):
        lp, lq = log_p1[small], log_q1[small]
        acc = torch.full_like(lp, -math.inf)
        for i in range(m, L + 1):  # the upper terms, in log space: no cancellation
            acc = torch.logaddexp(acc, _log_term(i, L, lp, lq))
        out[small] = acc
    return out


def sampling_bias(log_p: torch.Tensor) -> torch.Tensor:
    """-log p_ij as float32, capped at MAX_BIAS."""
    return (-log_p).clamp(max=MAX_BIAS).float()
