"""The SPEC section 7 rules against the naive loop reference: m-of-L, lsh_topk, the sampling estimator,
centred keys, selection_ops; plus the closed-form collision probabilities against counting and sampling."""
import math
import random

import pytest
import torch

from naive_attention import (naive_candidates, naive_collision_prob, naive_prompt_center, naive_selection_ops,
                             naive_sparse_attention, table_shape)
from test_attention_reference import (ATOL, B, HKV, HQ, MODE_SCALING, D, FakeHasher, quantized, query_valid,
                                      shapes, simhash_margin, valid_mask)

REF_KEYS = ("variant", "include_self", "sink_tokens", "local_window", "n_tables", "k", "fraction", "min_collisions",
            "score", "estimator")


def prompt_center(k, kv, Q):
    """The reference's mean key for hasher.center=prompt (B, Hkv, D): the valid keys of the prompt, i.e. of the
    call at prefill (Q == K), else of the keys before the queries (what that prompt's prefill set)."""
    n = k.shape[2] if Q == k.shape[2] else k.shape[2] - Q
    return naive_prompt_center(k[:, :, :n], kv[:, :n])


def make_case(cfg, mode, seed):
    """(q, k, v, key_valid, hasher) with the hasher's mean key set (cfg['center']: none | fixed | prompt)."""
    from lsh_bitnet.attention.hashers import build_hasher

    h = build_hasher(cfg["hasher"], cfg["n_bits"], D, HKV, cfg["n_tables"], cfg.get("seed", 0), 1)
    Q, K = shapes(mode)
    kv = valid_mask(mode, K)
    for attempt in range(50):
        gen = torch.Generator().manual_seed(seed * 1000 + attempt)
        q, k = quantized((B, HQ, Q, D), gen), quantized((B, HKV, K, D), gen)
        v = torch.randn(B, HKV, K, D, generator=gen)
        mu = quantized((HKV, D), gen) if cfg.get("center") == "fixed" else None
        hashed = k if mu is None else k - mu[None, :, None, :]
        if cfg.get("center") == "prompt":
            hashed = k - prompt_center(k, kv, Q)[:, :, None, :]
        if cfg["hasher"] == "bit_sampling" or min(simhash_margin(q, h, HQ // HKV), simhash_margin(hashed, h, 1)) > 1e-4:
            break
    else:
        raise AssertionError("no seed gave simhash margins > 1e-4")
    if mu is not None:
        h.center, h.mu = "calibration", mu
    if cfg.get("center") == "prompt":
        h.center = "prompt"  # a prefill sets mu itself; a decode step or chunk keeps its prompt's
        if Q < K:
            h.set_prompt_center(k[:, :, :K - Q], kv[:, :K - Q])
    return q, k, v, kv, h


def check(cfg, mode, seed=0, scaling=0.25):
    from lsh_bitnet.attention.kernel import SparseSpec, sparse_attention

    q, k, v, kv, h = make_case(cfg, mode, seed)
    fields = {key: cfg[key] for key in REF_KEYS + ("query_chunk",) if key in cfg}
    out, cost = sparse_attention(q, k, v, kv, spec=SparseSpec(**fields), hasher=h, scaling=scaling)
    center = h.mu  # fixed: set by make_case; prompt: computed here, not read from the hasher under test
    if cfg.get("center") == "prompt":
        center = prompt_center(k, kv, q.shape[2])
        assert torch.allclose(h.mu.double(), center, atol=1e-6), f"{cfg} {mode}: mu is not the valid keys' mean"
    ref_args = {key: cfg[key] for key in REF_KEYS if key in cfg}
    ref, comparisons, full = naive_sparse_attention(q, k, v, kv, hasher_params=h, scaling=scaling, center=center,
                                                    **ref_args)
    qv = query_valid(kv, q.shape[2])[:, None, :, None]
    assert torch.isfinite(out).all()
    err = float(((out.double() - ref) * qv).abs().max())
    assert err <= ATOL, f"{cfg} {mode}: max error {err:.3g}"
    assert (cost.comparisons, cost.full_comparisons) == (comparisons, full), f"{cfg} {mode}"
    sel = naive_selection_ops(q, k, kv, variant=cfg["variant"], hasher_params=h, n_tables=cfg["n_tables"],
                              score=cfg.get("score", "collisions"), center=center, comparisons=comparisons,
                              estimator=cfg.get("estimator", "softmax"), min_collisions=cfg.get("min_collisions", 1))
    assert cost.selection_ops == sel, f"{cfg} {mode}: selection_ops {cost.selection_ops} != {sel}"
    return out, cost, (q, k, v, kv, h)


def _cases():
    cases, n = [], 0
    always = [(True, 0, 0), (False, 2, 4), (True, 2, 0), (False, 0, 4)]
    for hasher in ("bit_sampling", "simhash"):
        for n_bits, n_tables, m in [(0, 3, 2), (2, 4, 1), (2, 4, 2), (3, 4, 4), (4, 8, 3), (6, 8, 2), (1, 3, 3)]:
            s, sk, w = always[n % 4]
            for estimator in ("softmax", "sampling"):
                cases.append(dict(variant="lsh", hasher=hasher, n_bits=n_bits, n_tables=n_tables, min_collisions=m,
                                  include_self=s, sink_tokens=sk, local_window=w, estimator=estimator,
                                  center=("none", "fixed")[n % 2]))
            n += 1
        for n_bits, n_tables, budget, score in [(3, 4, dict(k=3), "collisions"), (2, 3, dict(fraction=0.25), "soft"),
                                                (4, 6, dict(fraction=0.5), "collisions"), (1, 2, dict(k=100), "soft"),
                                                (0, 2, dict(k=2), "collisions")]:
            s, sk, w = always[n % 4]
            cases.append(dict(variant="lsh_topk", hasher=hasher, n_bits=n_bits, n_tables=n_tables, score=score,
                              include_self=s, sink_tokens=sk, local_window=w, center=("none", "fixed")[n % 2],
                              **budget))
            n += 1
    for hasher in ("bit_sampling", "simhash"):  # the prompt's mean key, from the valid keys only (rows are padded)
        cases.append(dict(variant="lsh", hasher=hasher, n_bits=3, n_tables=4, min_collisions=2, include_self=False,
                          sink_tokens=2, local_window=0, estimator="sampling", center="prompt"))
        cases.append(dict(variant="lsh_topk", hasher=hasher, n_bits=3, n_tables=3, k=5, score="collisions",
                          include_self=True, sink_tokens=0, local_window=4, center="prompt"))
    for i, c in enumerate(cases):
        c["query_chunk"] = (256, 5)[i % 2]
    return cases


CASES = _cases()


@pytest.mark.parametrize("cfg", CASES, ids=[",".join(f"{k}={v}" for k, v in c.items()) for c in CASES])
def test_rules_match_reference(cfg):
    for seed, (mode, scaling) in enumerate(MODE_SCALING):  # the caller's scaling 0.7, and the default
        check(cfg, mode, seed=seed + 11 * CASES.index(cfg), scaling=scaling)


@pytest.mark.parametrize("way,pack_bits", [("sorted", 62), ("dense", 62), ("onehot", 62), ("dense", 4)])
def test_every_way_of_counting_collisions_agrees(way, pack_bits, monkeypatch):
    """The sorted, dense and one-hot counts all reach the reference (the choice is only a cost estimate);
    codes too wide to pack (pack_bits=4 here) fall back to dense counts and dense pair totals."""
    from lsh_bitnet.attention import collisions

    chosen = []
    for name in ("_sorted_counts", "onehot_counts", "dense_counts"):
        real = getattr(collisions.CollisionIndex, name)
        monkeypatch.setattr(collisions.CollisionIndex, name,
                            lambda self, *a, _real=real, _name=name: chosen.append(_name) or _real(self, *a))
    free, never = 0.0, 1e12
    monkeypatch.setattr(collisions, "SORTED_COST_PER_COLLISION", free if way == "sorted" else never)
    monkeypatch.setattr(collisions, "SORTED_COST_PER_PAIR", free if way == "sorted" else never)
    monkeypatch.setattr(collisions, "ONEHOT_MACS_PER_COMPARE", never if way == "onehot" else 1e-12)
    monkeypatch.setattr(collisions, "PACK_BITS", pack_bits)
    for m in (1, 2, 5):
        cfg = dict(variant="lsh", hasher="simhash", n_bits=3, n_tables=5, min_collisions=m, query_chunk=7,
                   include_self=False)
        for mode in ("prefill", "chunk"):
            check(cfg, mode, seed=m)
    check(dict(variant="lsh_topk", hasher="bit_sampling", n_bits=2, n_tables=4, k=4, query_chunk=7), "prefill")
    want = {"sorted": "_sorted_counts", "dense": "dense_counts", "onehot": "onehot_counts"}[way]
    # calls of fewer than SORT_MIN_QUERIES queries (chunk mode's small calls) are always dense
    assert want in chosen and set(chosen) <= {want, "dense_counts"}, f"{way}: ran {sorted(set(chosen))}"


@pytest.mark.parametrize("n_bits", [1, 3, 6, 7])
def test_collisions_per_query_without_a_sort_equal_the_sorted_ranges(n_bits):
    """Each query's causal collisions per table (pairs() and the sorted way's price) come from running
    per-bucket counts up to RUNNING_COUNT_MAX_BITS, with no sort: they equal the sorted ranges' sizes and a
    plain loop, with padding keys and queries after a cache (q_offset > 0)."""
    from lsh_bitnet.attention import collisions

    gen = torch.Generator().manual_seed(n_bits)
    L, Bn, H, g, K, Q = 3, 2, 2, 3, 40, 16
    kcodes = torch.randint(0, 1 << n_bits, (L, Bn, H, K), generator=gen, dtype=torch.int32)
    qcodes = torch.randint(0, 1 << n_bits, (L, Bn, H, g, Q), generator=gen, dtype=torch.int32)
    qcodes[:, :, :, 0] = kcodes[:, :, :, :Q]  # query head 0 repeats the first keys' codes: sure collisions
    key_valid = torch.rand(Bn, K, generator=gen) > 0.2
    index = collisions.CollisionIndex(qcodes, kcodes, key_valid, n_bits, K - Q)
    kc, qc, kv = kcodes.tolist(), qcodes.tolist(), key_valid.tolist()
    want = torch.zeros(L, Bn, H, g, Q, dtype=torch.int64)
    for t in range(L):
        for b in range(Bn):
            for h in range(H):
                for r in range(g):
                    for i in range(Q):
                        want[t, b, h, r, i] = sum(kv[b][j] and kc[t][b][h][j] == qc[t][b][h][r][i]
                                                  for j in range(K - Q + i + 1))
    assert (index._lo is None) == (n_bits <= collisions.RUNNING_COUNT_MAX_BITS)  # no sort unless needed
    assert want.sum() > 0 and torch.equal(index.n, want)
    assert torch.equal(index._ranges()[1], want)
    q_valid = key_valid[:, K - Q:]
    assert int(index.pairs(q_valid)) == int((want * q_valid[None, :, None, None, :]).sum())


def test_m1_is_union_and_m_equal_l_is_intersection():
    from lsh_bitnet.attention.kernel import SparseSpec, sparse_attention

    cfg = dict(variant="lsh", hasher="bit_sampling", n_bits=2, n_tables=3)
    q, k, v, kv, h = make_case(cfg, "prefill", 4)
    per_table = []
    for t in range(3):
        one = FakeHasher(coords=h.coords[:, t:t + 1].tolist())
        per_table.append(naive_candidates(q, k, kv, variant="lsh", n_tables=1, include_self=False, hasher_params=one)[0])
    for m, combine in ((1, set.union), (3, set.intersection)):
        C, _ = naive_candidates(q, k, kv, variant="lsh", n_tables=3, min_collisions=m, include_self=False,
                                hasher_params=h)
        n = 0
        for b in range(B):
            for hh in range(HQ):
                for i in range(q.shape[2]):
                    if C[b][hh][i] is None:
                        continue
                    assert C[b][hh][i] == sorted(combine(*(set(p[b][hh][i]) for p in per_table)))
                    n += len(C[b][hh][i])
        _, cost = sparse_attention(q, k, v, kv, spec=SparseSpec("lsh", n_tables=3, min_collisions=m,
                                                                include_self=False), hasher=h)
        assert cost.comparisons == n
    union = sparse_attention(q, k, v, kv, spec=SparseSpec("lsh", n_tables=3, include_self=False), hasher=h)[1]
    inter = sparse_attention(q, k, v, kv, spec=SparseSpec("lsh", n_tables=3, min_collisions=3, include_self=False),
                             hasher=h)[1]
    assert inter.comparisons < union.comparisons  # the data distinguishes the two


def _full(q, k, v, kv):
    from lsh_bitnet.attention.kernel import SparseSpec, sparse_attention

    return sparse_attention(q, k, v, kv, spec=SparseSpec("full"), scaling=0.25)[0]


@pytest.mark.parametrize("hasher", ["bit_sampling", "simhash"])
def test_sampling_with_every_key_and_p1_equals_full(hasher):
    """n_bits = 0: every key collides in every table with probability 1, so the weights are the softmax's."""
    cfg = dict(variant="lsh", hasher=hasher, n_bits=0, n_tables=4, min_collisions=2, estimator="sampling")
    for mode in ("prefill", "decode"):
        out, cost, (q, k, v, kv, _) = check(cfg, mode)
        qv = query_valid(kv, q.shape[2])[:, None, :, None]
        torch.testing.assert_close(out * qv, _full(q, k, v, kv) * qv, atol=1e-6, rtol=0)
        assert cost.comparisons == cost.full_comparisons


@pytest.mark.parametrize("score", ["collisions", "soft"])
def test_lsh_topk_with_budget_above_visible_equals_full(score):
    cfg = dict(variant="lsh_topk", hasher="simhash", n_bits=6, n_tables=3, score=score, k=10 ** 6, include_self=False)
    for mode in ("prefill", "chunk"):
        out, cost, (q, k, v, kv, _) = check(cfg, mode)
        qv = query_valid(kv, q.shape[2])[:, None, :, None]
        torch.testing.assert_close(out * qv, _full(q, k, v, kv) * qv, atol=1e-6, rtol=0)
        assert cost.comparisons == cost.full_comparisons


# ----------------------------------------------------------------------------- closed forms
def test_log_tail_matches_exact_binomial():
    from lsh_bitnet.attention.estimators import log_tail

    for L, m in [(1, 1), (4, 2), (32, 2), (128, 2), (128, 5), (75, 75), (10, 1)]:
        p1 = torch.tensor([1e-9, 1e-4, 0.01, 0.2, 0.5, 0.9, 1.0], dtype=torch.float64)
        got = log_tail(p1.log(), L, m).exp()
        for p, g in zip(p1.tolist(), got.tolist()):
            exact = math.fsum(math.comb(L, i) * p ** i * (1 - p) ** (L - i) for i in range(m, L + 1))
            assert g == pytest.approx(exact, rel=1e-9, abs=1e-300), (L, m, p)


def test_bit_sampling_probability_by_counting_and_by_sampling():
    """C(a, K)/C(D, K) equals the share of K-subsets inside the agreeing coordinates, and what the drawn
    hashers of many layers actually do."""
    from lsh_bitnet.attention.estimators import log_p_bit_sampling
    from lsh_bitnet.attention.hashers import build_hasher

    D, K = 8, 3
    for agree in range(D + 1):
        subsets = [sum(1 for c in s if c < agree) == K for s in __import__("itertools").combinations(range(D), K)]
        assert math.exp(float(log_p_bit_sampling(torch.tensor(float(agree)), K, D))) == pytest.approx(
            sum(subsets) / len(subsets), rel=1e-12) if agree >= K else sum(subsets) == 0
    q = torch.tensor([1.0, 1, 1, 1, 1, -1, -1, -1]).view(1, 1, 1, D)
    key = torch.tensor([1.0, 1, 1, 1, -1, -1, 1, 1]).view(1, 1, 1, D)  # agree on coordinates 0-3 and 5: a = 5
    hits = sum(int(build_hasher("bit_sampling", K, D, 1, 1, 0, layer).codes(q) ==
                   build_hasher("bit_sampling", K, D, 1, 1, 0, layer).codes(key)) for layer in range(4000))
    p = naive_collision_prob(q.flatten().tolist(), key.flatten().tolist(), "bit_sampling", K, 1, 1)
    assert p == pytest.approx(10 / 56) and abs(hits / 4000 - p) < 4 * math.sqrt(p * (1 - p) / 4000)


def test_simhash_probability_by_sampling():
    from lsh_bitnet.attention.hashers import build_hasher

    rng = random.Random(0)
    D, K = 6, 2
    q = torch.tensor([rng.gauss(0, 1) for _ in range(D)]).view(1, 1, 1, D)
    key = torch.tensor([rng.gauss(0, 1) for _ in range(D)]).view(1, 1, 1, D)
    hits = sum(int(build_hasher("simhash", K, D, 1, 1, 0, layer).codes(q) ==
                   build_hasher("simhash", K, D, 1, 1, 0, layer).codes(key)) for layer in range(4000))
    p = naive_collision_prob(q.flatten().tolist(), key.flatten().tolist(), "simhash", K, 1, 1)
    assert abs(hits / 4000 - p) < 4 * math.sqrt(p * (1 - p) / 4000), (hits / 4000, p)
    assert table_shape(build_hasher("simhash", K, D, 1, 1, 0, 0)) == (1, 1, K)
