"""The gather path for few-query calls (engines/gather.py) against a dense masked softmax."""
import pytest
import torch

from lsh_bitnet.attention.engines.gather import gather_attention


def dense_reference(query, key, value, cand, bias, scaling):
    B, Hq, Q, D = query.shape
    Hkv, K = key.shape[1], key.shape[2]
    g = Hq // Hkv
    k = key.double().repeat_interleave(g, 1)  # (B, Hq, K, D)
    v = value.double().repeat_interleave(g, 1)
    s = torch.matmul(query.double(), k.transpose(-1, -2)) * scaling  # (B, Hq, Q, K)
    mask = cand.expand(B, Hkv, g, Q, K).reshape(B, Hq, Q, K)
    if bias is not None:
        s = s + bias.double().expand(B, Hkv, g, Q, K).reshape(B, Hq, Q, K)
    s = s.masked_fill(~mask, float("-inf"))
    w = torch.softmax(s, -1).nan_to_num(0.0)
    return torch.matmul(w, v)


@pytest.mark.parametrize("head_independent", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("Q", [1, 3])
def test_gather_equals_dense_masked_softmax(head_independent, with_bias, Q):
    gen = torch.Generator().manual_seed(Q * 4 + 2 * with_bias + head_independent)
    B, Hq, Hkv, K, D = 2, 6, 2, 50, 16
    q, k, v = (torch.randn(B, h, n, D, generator=gen) for h, n in ((Hq, Q), (Hkv, K), (Hkv, K)))
    shape = (B, 1, 1, Q, K) if head_independent else (B, Hkv, Hq // Hkv, Q, K)
    cand = torch.rand(shape, generator=gen) < 0.2
    cand[0, ..., 0, :] = False  # an empty row: zeros, like the masked engine's empty C(i)
    bias = torch.randn(shape, generator=gen) if with_bias else None
    out, n = gather_attention(q, k, v, cand, bias, 0.25)
    assert int(n) == int(cand.expand(B, Hkv, Hq // Hkv, Q, K).sum())
    ref = dense_reference(q, k, v, cand, bias, 0.25)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0)
    assert out[0, :, 0].abs().max() == 0


def test_gather_keeps_the_input_dtype():
    q, k, v = torch.randn(1, 2, 1, 8), torch.randn(1, 1, 10, 8), torch.randn(1, 1, 10, 8)
    cand = torch.ones(1, 1, 2, 1, 10, dtype=torch.bool)
    out, _ = gather_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), cand, None, 8 ** -0.5)
    assert out.dtype == torch.bfloat16 and out.shape == (1, 2, 1, 8)
