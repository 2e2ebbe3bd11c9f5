"""attention=lsh_probe (budgeted multi-probe buckets) against the naive loop reference (tests/naive_attention.py):
outputs, comparisons and exact selection_ops; both ways of scoring and of counting the keys found; its two limits
(radius K = lsh_topk's soft score, radius 0 with the whole budget = the union of buckets); decode == prefill,
padded row == row alone; config checks."""
import pytest
import torch

from naive_attention import naive_hash_ops, naive_selection_ops, naive_sparse_attention
from test_attention_reference import B, ATOL, HKV, HQ, query_valid
from test_attention_rules import make_case

ALWAYS = [(True, 0, 0), (False, 2, 4), (True, 2, 0), (False, 0, 4)]
SETTINGS = [  # (n_bits, n_tables, probe_radius, budget)
    (3, 4, 1, dict(k=3)), (4, 3, 2, dict(fraction=0.25)), (2, 5, 0, dict(fraction=0.5)), (3, 2, 3, dict(k=100)),
    (6, 4, 2, dict(fraction=0.3)), (0, 2, 0, dict(k=2)), (1, 3, 1, dict(fraction=1.0)),
]


def _cases():
    cases = []
    for n, (hasher, (bits, tables, radius, budget)) in enumerate(
            (h, s) for h in ("bit_sampling", "simhash") for s in SETTINGS):
        s, sk, w = ALWAYS[n % 4]
        cases.append(dict(variant="lsh_probe", hasher=hasher, n_bits=bits, n_tables=tables, probe_radius=radius,
                          include_self=s, sink_tokens=sk, local_window=w, center=("none", "fixed")[n % 2],
                          query_chunk=(256, 5)[n % 2], **budget))
    return cases


CASES = _cases()
REF_KEYS = ("variant", "include_self", "sink_tokens", "local_window", "n_tables", "k", "fraction", "probe_radius")


def spec_of(cfg):
    from lsh_bitnet.attention.spec import SparseSpec

    fields = {key: cfg[key] for key in REF_KEYS + ("query_chunk",) if key in cfg}
    return SparseSpec(fields.pop("variant"), **fields)


def check(cfg, mode, seed=0, scaling=0.1):
    """Output, comparisons, hash_ops and selection_ops against the reference; scaling 0.1, not D ** -0.5."""
    from lsh_bitnet.attention.kernel import sparse_attention

    q, k, v, kv, h = make_case(cfg, mode, seed)
    out, cost = sparse_attention(q, k, v, kv, spec=spec_of(cfg), hasher=h, scaling=scaling)
    ref_args = {key: cfg[key] for key in REF_KEYS if key in cfg}
    ref, comparisons, full = naive_sparse_attention(q, k, v, kv, hasher_params=h, scaling=scaling, center=h.mu,
                                                    **ref_args)
    qv = query_valid(kv, q.shape[2])[:, None, :, None]
    err = float(((out.double() - ref) * qv).abs().max())
    assert err <= ATOL, f"{cfg} {mode}: max error {err:.3g}"
    assert (cost.comparisons, cost.full_comparisons) == (comparisons, full), f"{cfg} {mode}"
    assert cost.hash_ops == naive_hash_ops(q, k, kv, variant="lsh_probe", hasher_params=h)
    sel = naive_selection_ops(q, k, kv, variant="lsh_probe", hasher_params=h, n_tables=cfg["n_tables"],
                              center=h.mu, probe_radius=cfg["probe_radius"])
    assert cost.selection_ops == sel, f"{cfg} {mode}: selection_ops {cost.selection_ops} != {sel}"
    return out, cost, (q, k, v, kv, h)


@pytest.mark.parametrize("cfg", CASES, ids=[",".join(f"{k}={v}" for k, v in c.items()) for c in CASES])
def test_lsh_probe_matches_reference(cfg):
    for seed, mode in enumerate(("prefill", "decode", "chunk")):
        check(cfg, mode, seed=seed + 11 * CASES.index(cfg))


def test_default_scaling_too():
    cfg = dict(CASES[4], query_chunk=7)
    check(cfg, "prefill", seed=3, scaling=None)


@pytest.mark.parametrize("way", ["onehot", "dense"])
def test_both_ways_of_scoring_agree_with_the_reference(way, monkeypatch):
    """One-hot matmuls and the dense popcount pass: each forced, the reference is met (sets and selection_ops)."""
    from lsh_bitnet.attention import probes

    ran = []
    for name in ("_matmul", "_dense"):
        real = getattr(probes.ProbeScores, name)
        monkeypatch.setattr(probes.ProbeScores, name,
                            lambda self, *a, _real=real, _name=name: ran.append(_name) or _real(self, *a))
    if way == "dense":
        monkeypatch.setattr(probes, "ONEHOT_MAX_BITS", -1)
    for n, cfg in enumerate(CASES[:6]):
        check(dict(cfg, query_chunk=7), "prefill", seed=n)
    assert {"onehot": "_matmul", "dense": "_dense"}[way] in ran and (way == "onehot" or "_matmul" not in ran)


@pytest.mark.parametrize("bits", [1, 3, 8, 13])
def test_scores_and_keys_found_equal_a_loop(bits):
    """ProbeScores on random codes (padding keys, queries after a cache) against plain Python loops, every radius,
    both ways (one-hot up to 10 bits), in query chunks."""
    from lsh_bitnet.attention.probes import ProbeScores, n_probes

    gen = torch.Generator().manual_seed(bits)
    L, Bn, H, g, K, Q = 3, 2, 2, 2, 30, 12
    kcodes = torch.randint(0, 1 << bits, (L, Bn, H, K), generator=gen, dtype=torch.int64)
    qcodes = torch.randint(0, 1 << bits, (L, Bn, H, g, Q), generator=gen, dtype=torch.int64)
    dist = [[[[[[bin(int(qcodes[t, b, h, gi, i]) ^ int(kcodes[t, b, h, j])).count("1") for j in range(K)]
                for i in range(Q)] for gi in range(g)] for h in range(H)] for b in range(Bn)] for t in range(L)]
    key_valid = torch.rand(Bn, K, generator=gen) > 0.2
    q_valid = key_valid[:, K - Q:]
    j = torch.arange(K)
    for radius in sorted({0, 1, bits // 2, bits}):
        p = ProbeScores(qcodes, kcodes, key_valid, bits, radius, K - Q)
        assert p.onehot_ok == (bits <= 10)
        want_s = torch.tensor([[[[[sum(max(0, radius + 1 - dist[t][b][h][gi][i][j]) for t in range(L))
                                   for j in range(K)] for i in range(Q)] for gi in range(g)] for h in range(H)]
                               for b in range(Bn)], dtype=torch.int32)
        want_n = torch.tensor([[[[[sum(dist[t][b][h][gi][i][j] <= radius for t in range(L))
                                   for j in range(K)] for i in range(Q)] for gi in range(g)] for h in range(H)]
                               for b in range(Bn)], dtype=torch.int32)
        assert torch.equal(p._dense(torch.arange(Q), K)[0], want_s) and torch.equal(p._dense(torch.arange(Q), K)[1],
                                                                                     want_n), radius
        visible = ((j[None, :] <= j[K - Q:, None]) & key_valid[:, None, :] & q_valid[:, :, None])[:, None, None]
        for a, e in ((0, 5), (5, 9), (2, 12), (9, 12), (0, 12)):  # chunks in order, then going back
            q_idx = torch.arange(a, e)
            vis = visible[..., a:e, :K - Q + e]
            s, found = p.chunk(q_idx, K - Q + e, vis)
            assert torch.equal(s, want_s[..., a:e, :K - Q + e]), (radius, a, e)
            assert int(found) == int((want_n[..., a:e, :K - Q + e] * vis).sum()), (radius, a, e)
        assert n_probes(bits, radius) == sum(1 for x in range(1 << bits) if bin(x).count("1") <= radius)


def _masks(cfg, q, k, kv, h):
    from lsh_bitnet.attention.candidates import Candidates

    Q = q.shape[2]
    return Candidates(q, k, kv, spec_of(cfg), h).mask(torch.arange(Q), k.shape[2])[0]


@pytest.mark.parametrize("hasher", ["bit_sampling", "simhash"])
def test_radius_of_every_bit_is_lsh_topk_soft(hasher):
    """r = K visits every bucket: s_ij = L + agreeing bits, so the chosen keys are lsh_topk's (score=soft)."""
    for n, (bits, budget) in enumerate([(3, dict(k=4)), (5, dict(fraction=0.3)), (2, dict(fraction=0.05))]):
        cfg = dict(variant="lsh_probe", hasher=hasher, n_bits=bits, n_tables=3, probe_radius=bits, sink_tokens=1,
                   **budget)
        q, k, _, kv, h = make_case(cfg, "prefill", n)
        soft = dict(cfg, variant="lsh_topk", score="soft")
        soft.pop("probe_radius")
        from lsh_bitnet.attention.candidates import Candidates
        from lsh_bitnet.attention.spec import SparseSpec

        fields = {key: soft[key] for key in ("n_tables", "score", "sink_tokens", *budget)}
        want = Candidates(q, k, kv, SparseSpec("lsh_topk", **fields), h).mask(torch.arange(q.shape[2]),
                                                                             k.shape[2])[0]
        assert torch.equal(_masks(cfg, q, k, kv, h), want)


def test_radius_zero_with_the_whole_budget_is_the_union_of_buckets():
    from lsh_bitnet.attention.candidates import Candidates
    from lsh_bitnet.attention.spec import SparseSpec

    cfg = dict(variant="lsh_probe", hasher="simhash", n_bits=3, n_tables=4, probe_radius=0, fraction=1.0)
    q, k, _, kv, h = make_case(cfg, "prefill", 2)
    union = Candidates(q, k, kv, SparseSpec("lsh", n_tables=4), h).mask(torch.arange(q.shape[2]), k.shape[2])[0]
    assert torch.equal(_masks(cfg, q, k, kv, h), union.expand_as(_masks(cfg, q, k, kv, h)))


def test_decode_chooses_what_the_prefill_chooses():
    """Each query's set, from one prefill (in uneven chunks) and from a decode step over the keys up to it."""
    from lsh_bitnet.attention.candidates import Candidates

    cfg = dict(variant="lsh_probe", hasher="simhash", n_bits=4, n_tables=3, probe_radius=1, fraction=0.3,
               sink_tokens=1, local_window=2, center="fixed", query_chunk=6)
    q, k, _, kv, h = make_case(cfg, "prefill", 4)
    T = q.shape[2]
    prefill = _masks(cfg, q, k, kv, h)
    for a, e in ((0, 9), (9, 20), (20, T)):
        chunk = Candidates(q[:, :, a:e], k[:, :, :e], kv[:, :e], spec_of(cfg), h).mask(
            torch.arange(e - a), e)[0]
        assert torch.equal(chunk, prefill[..., a:e, :e])
    for i in range(T):
        step = Candidates(q[:, :, i:i + 1], k[:, :, :i + 1], kv[:, :i + 1], spec_of(cfg), h).mask(
            torch.zeros(1, dtype=torch.long), i + 1)[0]
        assert torch.equal(step[..., 0, :], prefill[..., i, :i + 1]), i


MODEL_CFG = {"name": "lsh_probe", "n_tables": 4, "probe_radius": 1, "fraction": 0.3, "sink_tokens": 1}
MODEL_HASHER = {"name": "simhash", "n_bits": 4}


def test_decode_with_cache_matches_prefill_in_a_model():
    from test_attention_model import T, generated_and_prefill, padded_batch, patched, tiny_model

    model = tiny_model("llama")
    x, mask, _ = padded_batch("left", n_pad=5)
    with patched(model, MODEL_CFG, MODEL_HASHER):
        steps, prefill = generated_and_prefill(model, x, mask)
    for step, step_logits in enumerate(steps):
        assert (step_logits - prefill[:, T - 1 + step]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_row_equals_row_alone(side):
    from test_attention_model import padded_and_alone, patched, tiny_model

    model = tiny_model("llama")
    with patched(model, MODEL_CFG, MODEL_HASHER) as patch:
        batch, alone, real, cost_batch, cost_a, cost_b = padded_and_alone(model, patch, side)
    assert (batch[0, real] - alone[0]).abs().max().item() <= 1e-5
    for key in ("comparisons", "full_comparisons", "hash_ops", "selection_ops"):
        assert cost_batch[key] == cost_a[key] + cost_b[key], key


def test_config_checks():
    from conftest import compose_config

    from lsh_bitnet.validate import validate_config

    base = ["attention=lsh_probe", "hasher=simhash", "hasher.n_bits=6"]
    cfg = compose_config(base + ["attention.fraction=0.1", "attention.probe_radius=6"])
    validate_config(cfg)
    assert (cfg.attention.n_tables, cfg.attention.probe_radius) == (32, 6)
    for overrides, message in (([], "exactly one of attention.k / attention.fraction"),
                               (["attention.k=4", "attention.probe_radius=7"], r"probe_radius must be in \[0, "
                                                                              r"hasher.n_bits=6\]"),
                               (["attention.k=4", "attention.probe_radius=-1"], "probe_radius"),
                               (["attention.k=4", "attention.n_tables=0"], "attention.n_tables must be >= 1"),
                               (["attention.k=4", "attention.engine=flex"], "attention.engine=flex cannot run"),
                               (["attention.k=4", "attention.estimator=sampling"], "estimator=sampling needs"),
                               (["attention.k=4", "attention.min_collisions=2"], "min_collisions")):
        with pytest.raises(Exception, match=message):
            validate_config(compose_config(base + overrides))
    assert B and HKV and HQ  # the shared data shapes this file relies on
