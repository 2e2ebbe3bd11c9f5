"""hasher=hadamard (SimHash over pseudo-random Hadamard rotations): bits against hyperplanes rebuilt by the naive
reference from the drawn signs, orthogonal rotations, nesting in tables, reproducibility, the counted work, config
checks, and the rules it serves (lsh, lsh_probe, lsh_topk) against the naive loop reference."""
import pytest
import torch

from naive_attention import naive_hadamard_planes, naive_hash_bits, naive_hash_ops, sylvester

D, HKV = 16, 2


def build(n_bits, n_tables, head_dim=D, seed=0, layer=1, rounds=1):
    from lsh_bitnet.registry import HASHERS

    return HASHERS.get("hadamard")(n_bits, head_dim, HKV, n_tables, seed, layer, rounds=rounds)


@pytest.mark.parametrize("n_bits,n_tables,rounds,head_dim", [(4, 3, 1, 16), (6, 5, 2, 16), (3, 7, 3, 12),
                                                              (16, 2, 1, 16), (0, 2, 1, 16)])
def test_bits_are_signs_of_the_reference_planes(n_bits, n_tables, rounds, head_dim):
    h = build(n_bits, n_tables, head_dim=head_dim, rounds=rounds)
    x = torch.randn(2, HKV, 9, head_dim, generator=torch.Generator().manual_seed(4))
    got = h.bits(x)
    assert got.shape == (2, HKV, 9, n_tables, n_bits)
    assert got.tolist() == [[[[list(t) for t in vec] for vec in head] for head in row]
                            for row in naive_hash_bits(x, h)]
    ref = torch.tensor(naive_hadamard_planes(h.signs, n_tables, n_bits, head_dim), dtype=torch.float64)
    assert torch.equal(h.planes, ref.view(h.planes.shape))


def test_one_rotation_is_orthogonal():
    """The P planes of one rotation are mutually orthogonal, each of squared norm P ** rounds (H H^T = P I)."""
    for rounds in (1, 3):
        h = build(4, 4, rounds=rounds)  # 16 bits = one rotation of P = 16
        M = h.planes[0].permute(0, 2, 1).reshape(16, D)  # (bits of all tables, D)
        assert torch.equal(M @ M.T, torch.eye(16, dtype=torch.float64) * 16 ** rounds)
    assert sylvester(4) == [[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]]


def test_nested_in_tables_and_reproducible():
    big = build(5, 9, seed=3)
    torch.manual_seed(99)  # the global RNG must not matter
    assert torch.equal(build(5, 9, seed=3).planes, big.planes)
    for tables in (1, 4, 8):
        assert torch.equal(build(5, tables, seed=3).planes, big.planes[:, :tables])
    assert not torch.equal(build(5, 9, seed=4).planes, big.planes)
    assert not torch.equal(build(5, 9, seed=3, layer=2).planes, big.planes)
    assert not torch.equal(big.planes[0], big.planes[1])  # KV heads differ


def test_ops_per_vector_counts_the_transform():
    """Per rotation and round: P log2 P additions and P sign flips; rotations = ceil(tables * bits / P)."""
    from lsh_bitnet.attention.hashers.simhash import SimHashHasher
    from lsh_bitnet.registry import HASHERS

    h = build(8, 32, head_dim=64, rounds=1)
    assert h.n_rotations == 4 and h.ops_per_vector == 4 * (64 * 6 + 64) == 1792
    assert build(8, 32, head_dim=64, rounds=3).ops_per_vector == 3 * 1792
    assert build(3, 7, head_dim=12).ops_per_vector == 2 * (16 * 4 + 16)  # 21 bits of P = 16: two rotations
    assert HASHERS.get("hadamard").ops_for(8, 64, 32, 1) == 1792
    assert SimHashHasher.ops_for(8, 64, 32) == 16384  # the same bits as Gaussian planes: 9x the work


def test_hash_ops_in_a_call_follow_the_reference():
    from lsh_bitnet.attention.kernel import SparseSpec, sparse_attention

    gen = torch.Generator().manual_seed(5)
    q, k, v = torch.randn(1, 4, 12, D, generator=gen), torch.randn(1, HKV, 12, D, generator=gen), \
        torch.randn(1, HKV, 12, D, generator=gen)
    kv = torch.ones(1, 12, dtype=torch.bool)
    kv[0, :2] = False
    h = build(4, 3)
    _, cost = sparse_attention(q, k, v, kv, spec=SparseSpec("lsh", n_tables=3), hasher=h)
    assert cost.hash_ops == naive_hash_ops(q, k, kv, variant="lsh", hasher_params=h) == 80 * (10 * 4 + 10 * 2)  # 12 bits: one rotation of P = 16


def test_config_checks_name_the_key():
    from conftest import compose_config
    from lsh_bitnet.errors import ConfigError
    from lsh_bitnet.validate import validate_fast

    with pytest.raises(ConfigError, match="hasher.rounds"):
        validate_fast(compose_config(["attention=lsh", "hasher=hadamard", "hasher.rounds=0"]))
    with pytest.raises(ConfigError, match="hadamard") as err:  # no closed-form p_ij: refused by name
        validate_fast(compose_config(["attention=lsh", "hasher=hadamard", "attention.estimator=sampling"]))
    assert "sampling" in str(err.value)
    validate_fast(compose_config(["attention=lsh_probe", "hasher=hadamard", "attention.fraction=0.1",
                                  "hasher.rounds=2"]))


RULE_CASES = [
    dict(variant="lsh", n_bits=3, n_tables=3),
    dict(variant="lsh_probe", n_bits=4, n_tables=4, probe_radius=1, fraction=0.3),
    dict(variant="lsh_topk", n_bits=3, n_tables=4, score="soft", fraction=0.25),
    dict(variant="lsh_topk", n_bits=3, n_tables=4, score="collisions", k=4),
]


@pytest.mark.parametrize("case", RULE_CASES, ids=lambda c: f"{c['variant']}-{c.get('score', '')}")
def test_rules_with_hadamard_match_the_naive_reference(case):
    """Prefill and a decode step of each hashed rule family, codes from this hasher, against the loop reference."""
    from lsh_bitnet.attention.kernel import SparseSpec, sparse_attention
    from naive_attention import naive_sparse_attention

    for mode, (Q, K) in (("prefill", (20, 20)), ("decode", (1, 24))):
        gen = torch.Generator().manual_seed(Q + K)
        q, k, v = torch.randn(2, 4, Q, D, generator=gen), torch.randn(2, HKV, K, D, generator=gen), \
            torch.randn(2, HKV, K, D, generator=gen)
        kv = torch.ones(2, K, dtype=torch.bool)
        kv[1, :3] = False
        h = build(case["n_bits"], case["n_tables"])
        fields = {key: val for key, val in case.items() if key not in ("variant", "n_bits")}
        spec = SparseSpec(case["variant"], sink_tokens=1, local_window=2, **fields)
        out, cost = sparse_attention(q, k, v, kv, spec=spec, hasher=h, scaling=0.3)
        ref_args = {key: val for key, val in case.items() if key != "n_bits"}
        ref, comparisons, full = naive_sparse_attention(q, k, v, kv, hasher_params=h, scaling=0.3, sink_tokens=1,
                                                        local_window=2, **ref_args)
        qv = kv[:, K - Q:][:, None, :, None]
        assert float(((out.double() - ref) * qv).abs().max()) <= 1e-5, (case, mode)
        assert (cost.comparisons, cost.full_comparisons) == (comparisons, full), (case, mode)
