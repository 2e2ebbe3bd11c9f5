"""Hashers: shapes, bit semantics, bit order of the packed codes, reproducibility, cost accounting."""
import pytest
import torch

from lsh_bitnet.attention.hashers import BitSamplingHasher, SimHashHasher, build_hasher

B, HKV, T, D = 2, 3, 5, 16


@pytest.fixture
def x():
    return torch.randn(B, HKV, T, D, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", ["bit_sampling", "simhash"])
def test_shapes_and_packing(name, x):
    h = build_hasher(name, n_bits=6, head_dim=D, n_kv_heads=HKV, n_tables=4, seed=0, layer_idx=0)
    bits, codes = h.bits(x), h.codes(x)
    assert bits.shape == (B, HKV, T, 4, 6) and bits.dtype == torch.bool
    assert codes.shape == (B, HKV, T, 4) and codes.dtype == torch.int64
    # bit 0 is the most significant bit of the code (the root of a forest tree)
    expected = sum(bits[..., b].long() << (6 - 1 - b) for b in range(6))
    assert torch.equal(codes, expected)
    assert int(codes.min()) >= 0 and int(codes.max()) < 2 ** 6


def test_bit_sampling_semantics(x):
    h = build_hasher("bit_sampling", 5, D, HKV, 3, seed=7, layer_idx=2)
    assert isinstance(h, BitSamplingHasher)
    assert h.coords.shape == (HKV, 3, 5) and h.coords.dtype == torch.long
    for hh in range(HKV):
        for t in range(3):
            c = h.coords[hh, t]
            assert len(set(c.tolist())) == 5 and int(c.min()) >= 0 and int(c.max()) < D  # distinct coordinates
            assert torch.equal(h.bits(x)[:, hh, :, t], x[:, hh][..., c] > 0)


def test_simhash_semantics(x):
    h = build_hasher("simhash", 4, D, HKV, 2, seed=3, layer_idx=1)
    assert isinstance(h, SimHashHasher)
    assert h.planes.shape == (HKV, 2, D, 4) and h.planes.dtype == torch.float32
    for hh in range(HKV):
        for t in range(2):
            assert torch.equal(h.bits(x)[:, hh, :, t], (x[:, hh] @ h.planes[hh, t]) > 0)


def test_known_code_by_hand():
    # bit_sampling over coordinates (c0, c1, c2): x[c0] > 0 is the leading bit.
    h = build_hasher("bit_sampling", 3, 4, 1, 1, seed=0, layer_idx=0)
    c = h.coords[0, 0]
    v = torch.full((1, 1, 1, 4), -1.0)
    v[..., c[0]] = 1.0  # only the leading bit set -> 0b100
    assert int(h.codes(v)) == 4
    v[..., c[0]], v[..., c[2]] = -1.0, 1.0  # only the last bit -> 0b001
    assert int(h.codes(v)) == 1


@pytest.mark.parametrize("name", ["bit_sampling", "simhash"])
def test_reproducible_and_independent(name):
    params = lambda h: h.coords if name == "bit_sampling" else h.planes  # noqa: E731
    a = build_hasher(name, 8, 64, 2, 2, seed=0, layer_idx=3)
    torch.manual_seed(123)  # the global RNG must not matter
    b = build_hasher(name, 8, 64, 2, 2, seed=0, layer_idx=3)
    assert torch.equal(params(a), params(b))
    assert not torch.equal(params(a), params(build_hasher(name, 8, 64, 2, 2, seed=1, layer_idx=3)))
    assert not torch.equal(params(a), params(build_hasher(name, 8, 64, 2, 2, seed=0, layer_idx=4)))
    p = params(a)  # per KV head and per table, functions differ
    assert not torch.equal(p[0, 0], p[1, 0]) and not torch.equal(p[0, 0], p[0, 1])


@pytest.mark.parametrize("name", ["bit_sampling", "simhash"])
def test_zero_bits_is_one_bucket(name, x):
    h = build_hasher(name, 0, D, HKV, 2, seed=0, layer_idx=0)
    assert h.bits(x).shape == (B, HKV, T, 2, 0)
    codes = h.codes(x)
    assert codes.shape == (B, HKV, T, 2) and not codes.any()


def test_ops_per_vector():
    assert build_hasher("simhash", 8, 64, 3, 2, 0, 0).ops_per_vector == 64 * 8 * 2
    assert build_hasher("bit_sampling", 8, 64, 3, 2, 0, 0).ops_per_vector == 8 * 2  # coordinate tests, not free


def test_bad_arguments():
    with pytest.raises(ValueError, match="hasher.n_bits"):
        build_hasher("bit_sampling", 17, 16, 1, 1, 0, 0)
    with pytest.raises(ValueError, match="attention.n_tables"):
        build_hasher("simhash", 4, 16, 1, 0, 0, 0)
    with pytest.raises(ValueError, match=r"allowed \['bit_sampling', 'hadamard', 'simhash'\]"):
        build_hasher("minhash", 4, 16, 1, 1, 0, 0)
    with pytest.raises(ValueError, match="expects"):
        build_hasher("simhash", 4, 16, 2, 1, 0, 0).codes(torch.randn(1, 3, 4, 16))  # wrong KV head count


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs(dtype, x):
    for name in ("bit_sampling", "simhash"):
        h = build_hasher(name, 6, D, HKV, 2, 0, 0)
        assert torch.equal(h.bits(x.to(dtype)), h.bits(x.to(dtype).float()))


# ----------------------------------------------------------------------------- nested functions (SPEC section 7)
@pytest.mark.parametrize("name", ["bit_sampling", "simhash"])
def test_functions_are_nested_over_bits_and_tables(name):
    params = lambda h: h.coords if name == "bit_sampling" else h.planes.transpose(-1, -2)  # noqa: E731  (Hkv, L, bits, ...)
    big = params(build_hasher(name, 12, 32, 3, 9, seed=5, layer_idx=4))
    for bits, tables in [(1, 1), (5, 9), (12, 2), (7, 4)]:
        small = params(build_hasher(name, bits, 32, 3, tables, seed=5, layer_idx=4))
        assert torch.equal(small, big[:, :tables, :bits]), (bits, tables)
    other_layer = params(build_hasher(name, 12, 32, 3, 9, seed=5, layer_idx=3))
    assert not torch.equal(other_layer, big)


@pytest.mark.parametrize("name", ["bit_sampling", "simhash"])
def test_comparison_counts_monotone_over_sweeps(name):
    """Nested functions make candidate sets nested: counts are exactly monotone, not just on average."""
    from lsh_bitnet.attention.kernel import SparseSpec, sparse_attention

    gen = torch.Generator().manual_seed(3)
    Hkv, g, T, D = 2, 2, 48, 16
    q, k, v = (torch.randn(1, Hkv * g, T, D, generator=gen), torch.randn(1, Hkv, T, D, generator=gen),
               torch.randn(1, Hkv, T, D, generator=gen))
    valid = torch.ones(1, T, dtype=torch.bool)

    def comparisons(bits, tables, m=1):
        h = build_hasher(name, bits, D, Hkv, tables, seed=0, layer_idx=2)
        spec = SparseSpec("lsh", n_tables=tables, min_collisions=m, include_self=False)
        return sparse_attention(q, k, v, valid, spec=spec, hasher=h)[1].comparisons

    over_bits = [comparisons(b, 3) for b in range(0, 9)]
    assert all(a >= b for a, b in zip(over_bits, over_bits[1:])), over_bits
    assert over_bits[0] > over_bits[-1]  # the sweep actually prunes
    over_tables = [comparisons(4, t) for t in range(1, 9)]
    assert all(a <= b for a, b in zip(over_tables, over_tables[1:])), over_tables
    assert over_tables[0] < over_tables[-1]
    over_m = [comparisons(3, 8, m) for m in range(1, 9)]
    assert all(a >= b for a, b in zip(over_m, over_m[1:])) and over_m[0] > over_m[-1], over_m


def test_simhash_codes_are_signs_of_exact_projections():
    """Vectors within float32 rounding of a hyperplane: the codes are the signs of the exact projections x.r
    (math.fsum of float64 products, exact for float32 inputs). A float32 or TF32 matmul gets some of them wrong,
    and differently on CPU and GPU: codes must not depend on the device."""
    import math

    h = build_hasher("simhash", 1, 64, 1, 1, seed=0, layer_idx=0)
    r = h.planes[0, 0, :, 0].double()  # (D,) float32 values
    x = torch.randn(400, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = (x - (x @ r / (r @ r))[:, None] * r).float()  # on the hyperplane, up to float32 rounding
    got = h.bits(x.view(1, 1, 400, 64))[0, 0, :, 0, 0]
    exact = torch.tensor([math.fsum((xi.double() * r).tolist()) > 0 for xi in x])
    assert torch.equal(got, exact)
