"""Budgeted top-k selection (topk.py) and the +-1 agreement scores of lsh_topk's soft score, against plain
Python references: the folded integer path must pick exactly what sorting by (-score, slot) picks."""
import pytest
import torch

from lsh_bitnet.attention.candidates import agreement_dots, int8_matmul
from lsh_bitnet.attention.topk import INT32_FOLD_LIMIT, kth_largest, top_k_mask


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.int32])
@pytest.mark.parametrize("span", [0, 3, 40])
def test_kth_largest_equals_a_full_sort(dtype, span):
    """Unsorted selection then a sort of only its bottom: the k_i-th value of a descending sort, ties kept."""
    gen = torch.Generator().manual_seed(span)
    H, Qc, kc, k_max = 3, 50, 301, 40
    scores = torch.randint(-20, 21, (H, Qc, kc), generator=gen).to(dtype)  # many ties
    if dtype == torch.float32:
        scores[0] = torch.randn(Qc, kc, generator=gen)  # and a head with none
    k_i = k_max - torch.randint(0, span + 1, (H, Qc), generator=gen)
    k_i[0, 0] = 0  # a row with no budget reads as its best value, never out of range
    want = scores.sort(-1, descending=True).values.gather(-1, (k_i.clamp(min=1) - 1).unsqueeze(-1))
    assert torch.equal(kth_largest(scores.clone(), k_i, k_max), want)


def test_fold_is_exact_beyond_float32_integers():
    """Folds past 2**24 (where float32 would merge neighbouring slots) still pick by (-score, slot)."""
    gen = torch.Generator().manual_seed(7)
    rows, kc, bound = 30, 97, 1 << 20  # (2 * bound + 1) * kc ~ 2**27.6
    scores = torch.randint(-4, 5, (rows, kc), generator=gen, dtype=torch.int32) * (bound // 4)
    valid = torch.rand(rows, kc, generator=gen) < 0.9
    k_i = (torch.rand(rows, generator=gen) * (valid.sum(-1) + 1)).long().clamp(max=valid.sum(-1))
    got = top_k_mask(scores, valid, k_i, int(k_i.max()), int_bound=bound)
    assert torch.equal(got, reference_top_k(scores, valid, k_i))


def test_fold_falls_back_when_int32_cannot_hold_it():
    """A bound too large for an int32 fold takes the tie pass and is still exact."""
    kc = 64
    bound = INT32_FOLD_LIMIT // kc  # (2 * bound + 1) * kc > 2**31
    scores = torch.tensor([[bound, -bound] * (kc // 2)] * 3, dtype=torch.float32)
    valid = torch.ones(3, kc, dtype=torch.bool)
    k_i = torch.tensor([1, 5, 40])
    got = top_k_mask(scores.clone(), valid, k_i, 40, int_bound=bound)
    assert torch.equal(got, reference_top_k(scores, valid, k_i))


@pytest.mark.parametrize("dtype,n", [(torch.int8, 256), (torch.float32, 256), (torch.int8, 2), (torch.int8, 3)])
def test_agreement_dots_equal_float_matmul(dtype, n):
    gen = torch.Generator().manual_seed(1)
    B, Hkv, g, Qc, kc = 2, 3, 2, 5, 11
    sq = torch.randint(0, 2, (B, Hkv, g, Qc, n), generator=gen) * 2 - 1
    sk = torch.randint(0, 2, (B, Hkv, kc, n), generator=gen) * 2 - 1
    want = torch.einsum("bhgqn,bhkn->bhgqk", sq.double(), sk.double()).float()
    got = agreement_dots(sq.to(dtype), sk.to(dtype))
    assert got.dtype == (torch.int32 if dtype == torch.int8 else torch.float32)
    assert torch.equal(got.float(), want)


def test_cpu_scores_bits_as_int8():
    assert int8_matmul(torch.device("cpu"), 256) == hasattr(torch, "_int_mm")
    assert not int8_matmul(torch.device("meta"), 256)
    assert not int8_matmul(torch.device("cpu"), 1)  # torch's CPU _int_mm sums one-term products wrongly


@pytest.mark.parametrize("n_bits,n_tables", [(0, 1), (1, 1), (0, 2), (1, 2), (2, 1)])
def test_tiny_hashes_count_and_score_exactly(n_bits, n_tables):
    """One-hot collision counts and soft scores with 1-4 terms per dot product equal the dense counts."""
    from lsh_bitnet.attention.collisions import CollisionIndex
    from lsh_bitnet.attention.hashers import build_hasher

    gen = torch.Generator().manual_seed(n_bits * 7 + n_tables)
    B, Hkv, g, T, D = 2, 2, 2, 12, 8
    h = build_hasher("simhash", n_bits, D, Hkv, n_tables, 0, 1)
    q, k = torch.randn(B, Hkv * g, T, D, generator=gen), torch.randn(B, Hkv, T, D, generator=gen)
    qcodes = h.codes(q.view(B, Hkv, g * T, D)).view(B, Hkv, g, T, -1).permute(4, 0, 1, 2, 3).contiguous()
    kcodes = h.key_codes(k).permute(3, 0, 1, 2).contiguous()
    index = CollisionIndex(qcodes.int(), kcodes.int(), torch.ones(B, T, dtype=torch.bool), n_bits, 0)
    q_idx = torch.arange(T)
    dense = index.dense_counts(q_idx, T)
    if index.onehot_ok:
        assert torch.equal(index.onehot_counts(q_idx, T), dense)
    sq = (h.bits(q.view(B, Hkv, g * T, D)).flatten(-2).float() * 2 - 1).view(B, Hkv, g, T, -1)
    sk = h.key_bits(k).flatten(-2).float() * 2 - 1
    want = torch.einsum("bhgqn,bhkn->bhgqk", sq.double(), sk.double()).float()
    dtype = torch.int8 if int8_matmul(q.device, sq.shape[-1]) else torch.float32
    assert torch.equal(agreement_dots(sq.to(dtype), sk.to(dtype)).float(), want)
