"""Budgeted top-k selection (topk.py) and the +-1 agreement scores of lsh_topk's soft score, against plain
Python references: the folded integer path must pick exactly what sorting by (-score, slot) picks."""
import pytest
import torch

from lsh_bitnet.attention.candidates import agreement_dots, int8_matmul
from lsh_bitnet.attention.topk import FLOAT32_EXACT_INTS, top_k_mask


def reference_top_k(scores, valid, k_i):
    """Sort each row's valid slots by (-score, slot) and keep the first k_i: the rule, written out."""
    out = torch.zeros(scores.shape, dtype=torch.bool)
    for r in range(scores.shape[0]):
        slots = [j for j in range(scores.shape[1]) if valid[r, j]]
        slots.sort(key=lambda j: (-float(scores[r, j]), j))
        out[r, slots[:int(k_i[r])]] = True
    return out


@pytest.mark.parametrize("bound", [3, 32, 256])
def test_integer_scores_fold_ties_to_lower_slot(bound):
    gen = torch.Generator().manual_seed(bound)
    rows, kc = 40, 97
    # Few distinct values: nearly every k_i-th score is tied, the case the fold must settle by slot.
    scores = torch.randint(-bound, bound + 1, (rows, kc), generator=gen).float().div_(max(1, bound // 3)).round_()
    valid = torch.rand(rows, kc, generator=gen) < 0.8
    n_valid = valid.sum(-1)
    k_i = (torch.rand(rows, generator=gen) * (n_valid + 1)).long().clamp(max=n_valid)
    want = reference_top_k(scores, valid, k_i)
    folded = top_k_mask(scores.clone(), valid, k_i, int(k_i.max()), int_bound=bound)
    unfolded = top_k_mask(scores.clone(), valid, k_i, int(k_i.max()))
    from_int32 = top_k_mask(scores.to(torch.int32), valid, k_i, int(k_i.max()), int_bound=bound)
    assert torch.equal(folded, want) and torch.equal(unfolded, want) and torch.equal(from_int32, want)
    assert torch.equal(folded.sum(-1), k_i)


def test_fold_falls_back_when_float32_cannot_hold_it():
    """A bound too large for exact float32 folding takes the tie pass and is still exact."""
    kc = 64
    bound = FLOAT32_EXACT_INTS // kc  # (2 * bound + 1) * kc > 2**24
    scores = torch.tensor([[bound, -bound] * (kc // 2)] * 3, dtype=torch.float32)
    valid = torch.ones(3, kc, dtype=torch.bool)
    k_i = torch.tensor([1, 5, 40])
    got = top_k_mask(scores.clone(), valid, k_i, 40, int_bound=bound)
    assert torch.equal(got, reference_top_k(scores, valid, k_i))


@pytest.mark.parametrize("dtype", [torch.int8, torch.float32])
def test_agreement_dots_equal_float_matmul(dtype):
    gen = torch.Generator().manual_seed(1)
    B, Hkv, g, Qc, kc, n = 2, 3, 2, 5, 11, 256
    sq = torch.randint(0, 2, (B, Hkv, g, Qc, n), generator=gen) * 2 - 1
    sk = torch.randint(0, 2, (B, Hkv, kc, n), generator=gen) * 2 - 1
    want = torch.einsum("bhgqn,bhkn->bhgqk", sq.double(), sk.double()).float()
    got = agreement_dots(sq.to(dtype), sk.to(dtype))
    assert got.dtype == (torch.int32 if dtype == torch.int8 else torch.float32)
    assert torch.equal(got.float(), want)


def test_cpu_scores_bits_as_int8():
    assert int8_matmul(torch.device("cpu")) == hasattr(torch, "_int_mm")
    assert not int8_matmul(torch.device("meta"))
