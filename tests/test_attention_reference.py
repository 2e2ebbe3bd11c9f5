"""sparse_attention against the naive loop reference (tests/naive_attention.py), and the reference itself
against hand-computed cases (SPEC sections 3-4, docs/ATTENTION-API.md)."""
import math

import pytest
import torch

from naive_attention import (naive_candidates, naive_hash_bits, naive_hash_ops, naive_selection_ops,
                             naive_sparse_attention)

B, HQ, HKV, D = 3, 4, 2, 16  # GQA 2:1
T_PREFILL, K_DECODE = 32, 40
ATOL = 1e-5  # float32 implementation vs float64 reference
HASHERS = ("bit_sampling", "simhash")
# Always-attend grid (include_self, sink_tokens, local_window)
ALWAYS = [(s, sk, w) for s in (True, False) for sk in (0, 2) for w in (0, 4)]


# ----------------------------------------------------------------------------- helpers
def quantized(shape, gen):
    """Multiples of 1/4 in [-2, 2]: q . k is exact in float32, so oracle ties are real ties in both
    implementations, and bit_sampling sees exact zeros (bit = x[c] > 0 is strict)."""
    return (torch.randn(shape, generator=gen) * 4).round().clamp(-8, 8) / 4


def valid_mask(mode, n_keys):
    """(B, K) bool: row 0 unpadded, row 1 left-padded, row 2 left-padded and (prefill/chunk) right-padded."""
    kv = torch.ones(B, n_keys, dtype=torch.bool)
    kv[1, :5] = False
    kv[2, :2] = False
    if mode == "prefill":
        kv[2, -3:] = False  # padding query slots: ignored, not counted
    elif mode == "chunk":
        kv[2, -1:] = False
    return kv


def shapes(mode):
    return {"prefill": (T_PREFILL, T_PREFILL), "decode": (1, K_DECODE), "chunk": (3, K_DECODE)}[mode]


def make_hasher(cfg, layer_idx=0):
    from lsh_bitnet.attention.hashers import build_hasher

    h = None
    if cfg["variant"] == "lsh":
        h = build_hasher(cfg["hasher"], cfg["n_bits"], D, HKV, cfg["n_tables"], cfg.get("seed", 0), layer_idx)
    if cfg["variant"] == "lsh_forest":
        h = build_hasher(cfg["hasher"], cfg["max_depth"], D, HKV, cfg["n_trees"], cfg.get("seed", 0), layer_idx)
    if h is not None:
        h.center = cfg.get("center", "none")
    return h


def simhash_margin(x, hasher, g):
    """min |x . r| in float64 (vectorised: this only guards the test data, it is not the reference)."""
    planes = hasher.planes.double()  # (Hkv, n_tables, D, n_bits)
    heads = torch.arange(x.shape[1]) // g
    proj = torch.einsum("bhtd,hkdn->bhtkn", x.double(), planes[heads])
    return float(proj.abs().min()) if proj.numel() else math.inf


def make_data(mode, seed, hasher):
    """Q/K/V for one mode; reseeded until no simhash projection is within float32 rounding of 0."""
    Q, K = shapes(mode)
    for attempt in range(50):
        gen = torch.Generator().manual_seed(seed * 1000 + attempt)
        q, k = quantized((B, HQ, Q, D), gen), quantized((B, HKV, K, D), gen)
        v = torch.randn(B, HKV, K, D, generator=gen)
        if getattr(hasher, "planes", None) is None or min(simhash_margin(q, hasher, HQ // HKV),
                                                             simhash_margin(k, hasher, 1)) > 1e-4:
            return q, k, v, valid_mask(mode, K)
    raise AssertionError("no seed gave simhash margins > 1e-4")


REF_KEYS = ("variant", "include_self", "sink_tokens", "local_window", "n_tables", "n_trees", "max_depth",
            "min_candidates", "k", "fraction")


def run_ref(cfg, q, k, v, kv, hasher, scaling):
    args = {key: cfg[key] for key in REF_KEYS if key in cfg}
    return naive_sparse_attention(q, k, v, kv, hasher_params=hasher, scaling=scaling, **args)


def run_impl(cfg, q, k, v, kv, hasher, scaling):
    from lsh_bitnet.attention.kernel import SparseSpec, sparse_attention

    fields = {key: cfg[key] for key in REF_KEYS + ("query_chunk",) if key in cfg}
    Q, K = q.shape[2], k.shape[2]
    if getattr(hasher, "center", "none") == "prompt" and Q < K:  # a prefill sets mu; later calls keep the prompt's
        hasher.set_prompt_center(k[:, :, :K - Q], kv[:, :K - Q])
    out, cost = sparse_attention(q, k, v, kv, spec=SparseSpec(**fields), hasher=hasher, scaling=scaling)
    return out, cost


def query_valid(kv, Q):
    return kv[:, kv.shape[1] - Q:]  # (B, Q)


def assert_matches(cfg, mode, seed=0, scaling=0.25):
    hasher = make_hasher(cfg)
    q, k, v, kv = make_data(mode, seed, hasher)
    out, cost = run_impl(cfg, q, k, v, kv, hasher, scaling)
    ref, comparisons, full = run_ref(cfg, q, k, v, kv, hasher, scaling)
    Q = q.shape[2]
    qv = query_valid(kv, Q)
    assert out.shape == (B, HQ, Q, D)
    assert torch.isfinite(out).all(), f"{cfg} {mode}: non-finite output"
    diff = (out.double() - ref).abs().amax(-1)  # (B, Hq, Q)
    diff = diff.masked_fill(~qv[:, None, :], 0)
    if float(diff.max()) > ATOL:
        b, h, i = (int(x) for x in torch.nonzero(diff == diff.max())[0])
        C, _ = naive_candidates(q, k, kv, **{key: cfg[key] for key in REF_KEYS if key in cfg}, hasher_params=hasher)
        raise AssertionError(f"{cfg} {mode}: row {b} head {h} query {i} (slot {k.shape[2] - Q + i}) differs by "
                             f"{float(diff.max()):.3g}; reference C(i)={C[b][h][i]}; "
                             f"expected {ref[b, h, i, :4].tolist()} got {out[b, h, i, :4].tolist()}")
    assert (cost.comparisons, cost.full_comparisons) == (comparisons, full), \
        f"{cfg} {mode}: (comparisons, full_comparisons) got {(cost.comparisons, cost.full_comparisons)} " \
        f"expected {(comparisons, full)}"
    assert cost.hash_ops == naive_hash_ops(q, k, kv, variant=cfg["variant"], hasher_params=hasher)
    sel = naive_selection_ops(q, k, kv, variant=cfg["variant"], hasher_params=hasher, n_tables=cfg.get("n_tables", 1),
                              n_trees=cfg.get("n_trees", 1), max_depth=cfg.get("max_depth", 0))
    assert cost.selection_ops == sel, f"{cfg} {mode}: selection_ops {cost.selection_ops} != {sel}"
    if cfg["variant"] == "lsh_forest":  # the forest's promise, on the reference's sets (per query)
        C, V = naive_candidates(q, k, kv, **{key: cfg[key] for key in REF_KEYS if key in cfg}, hasher_params=hasher)
        short = [(b, h, i) for b in range(B) for h in range(HQ) for i in range(Q)
                 if C[b][h][i] is not None and len(C[b][h][i]) < min(cfg["min_candidates"], len(V[b][h][i]))]
        assert not short, f"{cfg} {mode}: queries (row, head, query) below min_candidates: {short[:5]}"
    return out, ref, cost, (q, k, v, kv, hasher)


# ----------------------------------------------------------------------------- case grid
def _cases():
    cases, n = [], 0
    for hasher in HASHERS:
        for n_bits in (0, 1, 3, 6):
            for n_tables in (1, 3):
                for include_self in (True, False):
                    sk, w = [(0, 0), (2, 4), (2, 0), (0, 4)][n % 4]
                    cases.append(dict(variant="lsh", hasher=hasher, n_bits=n_bits, n_tables=n_tables,
                                      include_self=include_self, sink_tokens=sk, local_window=w))
                    n += 1
    for hasher in HASHERS:
        for n_trees in (1, 2, 3):
            for max_depth in (1, 4, 8):
                # every min_candidates for bit_sampling; one (rotating) per tree shape for simhash
                mcs = (1, 5, 1000) if hasher == "bit_sampling" else ((1, 5, 1000)[(n_trees + max_depth) % 3],)
                for min_candidates in mcs:
                    s, sk, w = ALWAYS[n % 8]
                    cases.append(dict(variant="lsh_forest", hasher=hasher, n_trees=n_trees, max_depth=max_depth,
                                      min_candidates=min_candidates, include_self=s, sink_tokens=sk, local_window=w))
                    n += 1
    budgets = (dict(k=1), dict(k=3), dict(k=100), dict(fraction=0.25), dict(fraction=0.5), dict(fraction=1.0),
               dict(fraction=0.1))
    for b_idx, budget in enumerate(budgets):
        for a_idx in range(4):  # half the always-attend grid per budget, all of it across budgets
            s, sk, w = ALWAYS[(2 * a_idx + b_idx) % 8]
            cases.append(dict(variant="oracle_topk", include_self=s, sink_tokens=sk, local_window=w, **budget))
    for s, sk, w in ALWAYS + [(True, 1, 1), (False, 5, 9)]:
        cases.append(dict(variant="window", include_self=s, sink_tokens=sk, local_window=w))
    for s in (True, False):
        cases.append(dict(variant="full", include_self=s))
    for s, sk, w in ALWAYS:  # the always-attend grid in full for the hashed variants
        cases.append(dict(variant="lsh", hasher="simhash", n_bits=3, n_tables=2, include_self=s, sink_tokens=sk,
                          local_window=w))
        cases.append(dict(variant="lsh_forest", hasher="bit_sampling", n_trees=2, max_depth=6, min_candidates=5,
                          include_self=s, sink_tokens=sk, local_window=w))
    for i, c in enumerate(cases):
        c["query_chunk"] = (256, 5)[i % 2]  # 5 splits a 32-query prefill into uneven chunks
    return cases


def _case_id(c):
    return c["variant"] + ":" + ",".join(f"{k}={v}" for k, v in c.items() if k != "variant")


CASES = _cases()


# The caller's scaling (Gemma passes its own) on both the masked prefill and the gathered decode/chunk path;
# None (the default, D ** -0.5 = 0.25 here) on decode. 0.25 alone would not tell a dropped scaling from a kept one.
MODE_SCALING = (("prefill", 0.7), ("decode", None), ("chunk", 0.7))


@pytest.mark.parametrize("cfg", CASES, ids=[_case_id(c) for c in CASES])
def test_matches_reference(cfg):
    for seed, (mode, scaling) in enumerate(MODE_SCALING):
        assert_matches(cfg, mode, seed=seed + 7 * CASES.index(cfg), scaling=scaling)


# ----------------------------------------------------------------------------- targeted checks
@pytest.mark.parametrize("hasher", HASHERS)
@pytest.mark.parametrize("variant,tables", [("lsh", 1), ("lsh", 3), ("lsh_forest", 1), ("lsh_forest", 3)])
def test_zero_bits_equals_full(hasher, variant, tables):
    cfg = (dict(variant="lsh", hasher=hasher, n_bits=0, n_tables=tables) if variant == "lsh" else
           dict(variant="lsh_forest", hasher=hasher, max_depth=0, n_trees=tables, min_candidates=1))
    cfg.update(include_self=False, sink_tokens=0, local_window=0)
    for mode in ("prefill", "decode", "chunk"):
        out, _, cost, (q, k, v, kv, _) = assert_matches(cfg, mode)
        full_out, full_cost = run_impl(dict(variant="full"), q, k, v, kv, None, 0.25)
        qv = query_valid(kv, q.shape[2])[:, None, :, None]
        torch.testing.assert_close(out * qv, full_out * qv, atol=1e-6, rtol=0)
        assert cost.comparisons == cost.full_comparisons == full_cost.comparisons == full_cost.full_comparisons


def test_full_counts_are_triangular():
    q, k, v, _ = make_data("prefill", 0, None)
    kv = torch.ones(B, T_PREFILL, dtype=torch.bool)
    _, cost = run_impl(dict(variant="full"), q, k, v, kv, None, 0.25)
    assert cost.comparisons == cost.full_comparisons == B * HQ * T_PREFILL * (T_PREFILL + 1) // 2
    _, cost = run_impl(dict(variant="full"), q[:, :, -1:], k, v, kv, None, 0.25)
    assert cost.full_comparisons == B * HQ * T_PREFILL  # one decode step against S keys: S


@pytest.mark.parametrize("Q", [1, 3, K_DECODE])
def test_full_without_padding_matches_reference_and_stock_sdpa(Q):
    """No padding at all takes stock SDPA's path (no mask). A decode step (Q = 1) sees all K keys, not only key 0
    (SDPA's is_causal aligns its triangle top-left); a prefill (Q = K) is causal. The padded grid never gets here."""
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(21)
    q, k = quantized((B, HQ, Q, D), gen), quantized((B, HKV, K_DECODE, D), gen)
    v = torch.randn(B, HKV, K_DECODE, D, generator=gen)
    kv = torch.ones(B, K_DECODE, dtype=torch.bool)
    out, cost = run_impl(dict(variant="full"), q, k, v, kv, None, 0.7)
    ref, comparisons, full = naive_sparse_attention(q, k, v, kv, variant="full", scaling=0.7)
    assert float((out.double() - ref).abs().max()) <= ATOL
    assert cost.comparisons == cost.full_comparisons == comparisons == full
    if Q in (1, K_DECODE):  # what transformers' sdpa attention runs for these calls
        g = HQ // HKV
        stock = F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), scale=0.7,
                                               is_causal=Q > 1)
        torch.testing.assert_close(out, stock, atol=1e-6, rtol=0)


@pytest.mark.parametrize("cfg", [
    dict(variant="lsh", hasher="simhash", n_bits=6, n_tables=1, include_self=False),
    dict(variant="lsh", hasher="bit_sampling", n_bits=6, n_tables=1, include_self=False, local_window=1),
    dict(variant="window", include_self=False, sink_tokens=0, local_window=0),
], ids=["lsh", "lsh_window1", "window_nothing"])
def test_empty_candidates_give_zero_rows(cfg):
    hasher = make_hasher(cfg)
    q, k, v, kv = make_data("prefill", 3, hasher)
    keys = ("variant", "include_self", "sink_tokens", "local_window", "n_tables")
    C, _ = naive_candidates(q, k, kv, **{x: cfg[x] for x in keys if x in cfg}, hasher_params=hasher)
    empty = [(b, h, i) for b in range(B) for h in range(HQ) for i in range(T_PREFILL) if C[b][h][i] == []]
    if cfg.get("local_window", 0) == 0:
        assert empty, "test data must produce at least one empty candidate set"
    out, _ = run_impl(cfg, q, k, v, kv, hasher, 0.25)
    assert not torch.isnan(out).any()
    for b, h, i in empty:
        assert torch.equal(out[b, h, i], torch.zeros(D)), f"row {b} head {h} query {i}: C(i) empty, got {out[b, h, i]}"
    assert_matches(cfg, "prefill", seed=3)


@pytest.mark.parametrize("hasher", HASHERS)
@pytest.mark.parametrize("min_candidates", [1, 5, 1000])
@pytest.mark.parametrize("include_self", [True, False])
def test_forest_min_candidates_per_query(hasher, min_candidates, include_self):
    """One query head, one KV head: a decode call per query gives |C(i)| of that query alone."""
    from lsh_bitnet.attention.hashers import build_hasher
    from lsh_bitnet.attention.kernel import SparseSpec, sparse_attention

    T, max_depth = 24, 8
    h = build_hasher(hasher, max_depth, D, 1, 2, 0, 3)
    gen = torch.Generator().manual_seed(11)
    k = quantized((1, 1, T, D), gen)
    q = k + 0.25 * quantized((1, 1, T, D), gen)  # queries near their own key: deep shared prefixes
    v = torch.randn(1, 1, T, D, generator=gen)
    spec = SparseSpec(variant="lsh_forest", n_trees=2, max_depth=max_depth, min_candidates=min_candidates,
                      include_self=include_self)
    kw = dict(variant="lsh_forest", n_trees=2, max_depth=max_depth, min_candidates=min_candidates,
              include_self=include_self, hasher_params=h)
    prefill, _ = sparse_attention(q, k, v, torch.ones(1, T, dtype=torch.bool), spec=spec, hasher=h, scaling=0.25)
    sizes = []
    for i in range(T):
        kv = torch.ones(1, i + 1, dtype=torch.bool)
        out, cost = sparse_attention(q[:, :, i:i + 1], k[:, :, :i + 1], v[:, :, :i + 1], kv, spec=spec, hasher=h,
                                     scaling=0.25)
        _, comparisons, full = naive_sparse_attention(q[:, :, i:i + 1], k[:, :, :i + 1], v[:, :, :i + 1], kv, **kw)
        assert cost.comparisons >= min(min_candidates, i + 1), f"query {i}: |C(i)|={cost.comparisons}"
        assert (cost.comparisons, cost.full_comparisons) == (comparisons, full), f"query {i}"
        torch.testing.assert_close(out[0, 0, 0], prefill[0, 0, i], atol=1e-6, rtol=0)  # decode == prefill
        sizes.append(cost.comparisons)
    if min_candidates == 1:  # the data must make the forest actually prune, or this test proves little
        assert sum(sizes) < T * (T + 1) // 2


@pytest.mark.parametrize("cfg", [
    dict(variant="lsh", hasher="simhash", n_bits=3, n_tables=2, sink_tokens=2, local_window=4),
    dict(variant="lsh_forest", hasher="bit_sampling", n_trees=2, max_depth=6, min_candidates=5, sink_tokens=2),
    dict(variant="oracle_topk", fraction=0.25, local_window=4),
    dict(variant="window", sink_tokens=2, local_window=4),
    dict(variant="lsh", hasher="simhash", n_bits=3, n_tables=2, sink_tokens=2, center="prompt"),
    dict(variant="lsh_forest", hasher="bit_sampling", n_trees=2, max_depth=6, min_candidates=5, center="prompt"),
], ids=["lsh", "forest", "oracle", "window", "lsh_prompt_center", "forest_prompt_center"])
def test_padded_row_equals_row_alone(cfg):
    """A padded row gives what the row alone gives; with hasher.center=prompt, the padding keys must not enter mu."""
    hasher = make_hasher(cfg)
    for mode in ("prefill", "chunk"):
        q, k, v, kv = make_data(mode, 5, hasher)
        out, _ = run_impl(cfg, q, k, v, kv, hasher, 0.25)
        Q, K = q.shape[2], k.shape[2]
        for b in (1, 2):
            slots = torch.nonzero(kv[b]).flatten()
            lo, hi = int(slots[0]), int(slots[-1]) + 1  # the real tokens
            i0, i1 = max(lo, K - Q) - (K - Q), hi - (K - Q)  # the row's real queries
            if i1 <= i0:
                continue
            alone, cost = run_impl(cfg, q[b:b + 1, :, i0:i1], k[b:b + 1, :, lo:hi], v[b:b + 1, :, lo:hi],
                                   torch.ones(1, hi - lo, dtype=torch.bool), hasher, 0.25)
            torch.testing.assert_close(out[b, :, i0:i1], alone[0], atol=1e-6, rtol=0)
            _, row_cost = run_impl(cfg, q[b:b + 1], k[b:b + 1], v[b:b + 1], kv[b:b + 1], hasher, 0.25)
            assert (row_cost.comparisons, row_cost.full_comparisons) == (cost.comparisons, cost.full_comparisons)


def test_oracle_ties_go_to_lower_keys():
    """Keys with equal scores: the lower slot wins (here every key scores the same)."""
    from lsh_bitnet.attention.kernel import SparseSpec, sparse_attention

    T = 10
    q = torch.ones(1, 1, T, 4)
    k = torch.ones(1, 1, T, 4)
    v = torch.arange(T, dtype=torch.float32).view(1, 1, T, 1).expand(1, 1, T, 4).contiguous()
    kv = torch.ones(1, T, dtype=torch.bool)
    spec = SparseSpec(variant="oracle_topk", k=2, include_self=False)
    out, cost = sparse_attention(q, k, v, kv, spec=spec, hasher=None, scaling=1.0)
    # C(i) = {0, 1} for i >= 1: uniform weights over v = 0, 1
    assert torch.allclose(out[0, 0, 1:, 0], torch.full((T - 1,), 0.5)), out[0, 0, :, 0]
    assert cost.comparisons == 1 + 2 * (T - 1)


@pytest.mark.parametrize("fraction,n_keys,expected", [(0.07, 100, 7), (0.55, 100, 55), (0.1, 30, 3)])
def test_oracle_fraction_is_decimal(fraction, n_keys, expected):
    """ceil(fraction * |V|) of the fraction the user typed: float64 gives 0.07 * 100 = 7.000000000000001."""
    from lsh_bitnet.attention.kernel import SparseSpec, sparse_attention

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, n, 8, generator=gen) for n in (1, n_keys, n_keys))
    spec = SparseSpec(variant="oracle_topk", fraction=fraction, include_self=False)
    _, cost = sparse_attention(q, k, v, torch.ones(1, n_keys, dtype=torch.bool), spec=spec, hasher=None, scaling=1.0)
    assert cost.comparisons == expected, f"fraction={fraction} of {n_keys} keys: got {cost.comparisons} keys"


# ----------------------------------------------------------------------------- hashers vs SPEC
@pytest.mark.parametrize("name", HASHERS)
@pytest.mark.parametrize("n_bits,n_tables", [(1, 1), (6, 3), (16, 2), (0, 2)])
def test_hasher_bits_follow_spec(name, n_bits, n_tables):
    from lsh_bitnet.attention.hashers import build_hasher

    h = build_hasher(name, n_bits, D, HKV, n_tables, 0, 1)
    x = quantized((2, HKV, 12, D), torch.Generator().manual_seed(2))  # exact zeros appear: bit must be 0
    if name == "bit_sampling":
        assert tuple(h.coords.shape) == (HKV, n_tables, n_bits)
        for hk in range(HKV):
            for t in range(n_tables):
                c = h.coords[hk, t].tolist()
                assert len(set(c)) == len(c) and all(0 <= ci < D for ci in c), c
        assert (x == 0).any()
    else:
        assert tuple(h.planes.shape) == (HKV, n_tables, D, n_bits)
        assert simhash_margin(x, h, 1) > 1e-4
    got = h.bits(x)
    assert got.shape == (2, HKV, 12, n_tables, n_bits) and got.dtype == torch.bool
    assert got.tolist() == [[[[list(t) for t in vec] for vec in head] for head in row]
                            for row in naive_hash_bits(x, h)]
    codes = h.codes(x)
    expected = [[[[sum(bit << (n_bits - 1 - i) for i, bit in enumerate(t)) for t in vec] for vec in head]
                 for head in row] for row in naive_hash_bits(x, h)]
    assert codes.tolist() == expected


def _params(h):
    return h.coords if hasattr(h, "coords") else h.planes


@pytest.mark.parametrize("name", HASHERS)
def test_hash_functions_independent_and_reproducible(name):
    from lsh_bitnet.attention.hashers import build_hasher

    a = _params(build_hasher(name, 6, D, HKV, 3, 0, 0))
    assert torch.equal(a, _params(build_hasher(name, 6, D, HKV, 3, 0, 0)))  # same seed, same layer
    assert not torch.equal(a, _params(build_hasher(name, 6, D, HKV, 3, 0, 1)))  # other layer
    assert not torch.equal(a, _params(build_hasher(name, 6, D, HKV, 3, 1, 0)))  # other seed
    assert not torch.equal(a[0], a[1])  # KV heads
    for hk in range(HKV):
        assert not torch.equal(a[hk, 0], a[hk, 1]) and not torch.equal(a[hk, 1], a[hk, 2])  # tables
    layers = [_params(build_hasher(name, 6, D, HKV, 3, 0, layer)) for layer in range(6)]
    assert all(not torch.equal(layers[i], layers[j]) for i in range(6) for j in range(i))


def test_bit_sampling_more_bits_than_head_dim_fails():
    from lsh_bitnet.attention.hashers import build_hasher

    with pytest.raises(ValueError, match="hasher.n_bits"):
        build_hasher("bit_sampling", D + 1, D, HKV, 1, 0, 0)
    build_hasher("bit_sampling", D, D, HKV, 1, 0, 0)  # exactly D distinct coordinates is fine


# ----------------------------------------------------------------------------- the reference, by hand
class FakeHasher:
    """Hand-chosen hash parameters for the reference (no implementation involved)."""

    def __init__(self, coords=None, planes=None):
        self.coords = None if coords is None else torch.tensor(coords)
        self.planes = None if planes is None else torch.tensor(planes, dtype=torch.float32)


def _t(rows):
    return torch.tensor(rows, dtype=torch.float32).view(1, 1, len(rows), -1)


def _cands(query, key, **kw):
    C, V = naive_candidates(query, key, torch.ones(1, key.shape[2], dtype=torch.bool), **kw)
    return C[0][0], V[0][0]


def test_reference_full_by_hand():
    q = _t([[1.0, 0], [1, 0], [0, 1]])
    k = _t([[1.0, 0], [-1, 0], [0, 2]])
    v = _t([[1.0, 0], [0, 1], [5, 5]])
    out, comparisons, full = naive_sparse_attention(q, k, v, torch.ones(1, 3, dtype=torch.bool), variant="full",
                                                    scaling=1.0)
    assert (comparisons, full) == (6, 6)
    e = math.e
    assert out[0, 0, 0].tolist() == [1.0, 0.0]
    assert torch.allclose(out[0, 0, 1], torch.tensor([e / (e + 1 / e), (1 / e) / (e + 1 / e)], dtype=torch.float64))
    w = [1.0, 1.0, e ** 2]  # q2 . k = 0, 0, 2
    assert torch.allclose(out[0, 0, 2], torch.tensor([(1 + 5 * w[2]) / sum(w), (1 + 5 * w[2]) / sum(w)],
                                                     dtype=torch.float64))


def test_reference_bit_sampling_lsh_by_hand():
    h = FakeHasher(coords=[[[0]]])  # one KV head, one table, bit = x[0] > 0
    k = _t([[1.0, 0], [0, 3], [2, 0]])  # bits 1, 0 (zero is not > 0), 1
    q = _t([[-1.0, 0], [1, 0], [-1, 0]])  # bits 0, 1, 0
    v = _t([[1.0, 0], [0, 1], [2, 2]])
    kw = dict(variant="lsh", n_tables=1, hasher_params=h)
    assert _cands(q, k, include_self=True, **kw)[0] == [[0], [0, 1], [1, 2]]
    assert _cands(q, k, include_self=False, **kw)[0] == [[], [0], [1]]
    out, comparisons, full = naive_sparse_attention(q, k, v, torch.ones(1, 3, dtype=torch.bool),
                                                    include_self=False, scaling=1.0, **kw)
    assert (comparisons, full) == (2, 6)
    assert out[0, 0, 0].tolist() == [0.0, 0.0]  # empty C(0): zero output, not NaN
    assert out[0, 0, 1].tolist() == [1.0, 0.0] and out[0, 0, 2].tolist() == [0.0, 1.0]
    # sinks and window by hand: sink {0}, window of 2 -> {i-1, i}
    assert _cands(q, k, include_self=False, sink_tokens=1, local_window=2, **kw)[0] == [[0], [0, 1], [0, 1, 2]]
    # two tables: the union of the buckets; table 2 samples coordinate 1 (k bits 0, 1, 0; q bits 0, 0, 0)
    h2 = FakeHasher(coords=[[[0], [1]]])
    assert _cands(q, k, variant="lsh", n_tables=2, include_self=False, hasher_params=h2)[0] == [[0], [0], [0, 1, 2]]
    # n_bits = 0: one bucket, every causal key
    h0 = FakeHasher(coords=[[[]]])
    assert _cands(q, k, variant="lsh", n_tables=1, include_self=False, hasher_params=h0)[0] == [[0], [0, 1], [0, 1, 2]]


def test_reference_simhash_by_hand():
    h = FakeHasher(planes=[[[[1.0], [-1.0]]]])  # r = (1, -1): bit = x0 - x1 > 0
    k = _t([[2.0, 1], [1, 2], [3, 3]])  # bits 1, 0, 0 (x . r = 0 is not > 0)
    q = _t([[1.0, 0], [0, 1], [0, 1]])  # bits 1, 0, 0
    bits = naive_hash_bits(k, h)
    assert [vec[0] for vec in bits[0][0]] == [(True,), (False,), (False,)]
    assert _cands(q, k, variant="lsh", n_tables=1, include_self=False, hasher_params=h)[0] == [[0], [1], [1, 2]]


def test_reference_forest_by_hand():
    # tree 1 samples coords (0, 1, 2), tree 2 samples (2, 1, 0)
    h = FakeHasher(coords=[[[0, 1, 2], [2, 1, 0]]])
    k = _t([[1.0, 1, 1], [1, 1, -1], [1, -1, -1], [-1, -1, -1]])
    q = _t([[1.0, 1, 1], [-1, 1, 1], [1, 1, 1], [1, 1, -1]])
    # query 3: tree-1 bits 110, tree-2 bits 011; lcp over trees with keys 111/111, 110/011, 100/001, 000/000
    #   k0: max(2, 0) = 2, k1: max(3, 3) = 3, k2: max(1, 1) = 1, k3: max(0, 1) = 1
    kw = dict(variant="lsh_forest", n_trees=2, max_depth=3, include_self=False, hasher_params=h)
    expect = {1: [1], 2: [0, 1], 3: [0, 1, 2, 3], 4: [0, 1, 2, 3], 1000: [0, 1, 2, 3]}
    for mc, c3 in expect.items():
        C, _ = _cands(q, k, min_candidates=mc, **kw)
        assert C[3] == c3, (mc, C)
        assert C[0] == [0]  # the first query has one key: it is always found (depth 0 at worst)
        assert all(len(C[i]) >= min(mc, i + 1) for i in range(4))
    # query 1 (bits 011 / 110): k0 (111 / 111) agrees on 0 / 2 leading bits, k1 (110 / 011) on 0 / 0
    C, _ = _cands(q, k, min_candidates=1, **kw)
    assert C[1] == [0]
    assert _cands(q, k, min_candidates=2, **kw)[0][1] == [0, 1]
    assert _cands(q, k, min_candidates=1, **dict(kw, include_self=True))[0][3] == [1, 3]
    assert _cands(q, k, min_candidates=1, **dict(kw, sink_tokens=1, local_window=1))[0][3] == [0, 1, 3]
    # max_depth = 1: only the first bit of each tree counts
    h1 = FakeHasher(coords=[[[0], [2]]])
    kw1 = dict(kw, max_depth=1, hasher_params=h1)
    # query 3: tree-1 bit 1, tree-2 bit 0; keys tree-1 bits 1, 1, 1, 0, tree-2 bits 1, 0, 0, 0
    assert _cands(q, k, min_candidates=1, **kw1)[0][3] == [0, 1, 2, 3]
    assert _cands(q, k, min_candidates=1, **dict(kw1, hasher_params=FakeHasher(coords=[[[0], [0]]])))[0][3] == [0, 1, 2]


def test_reference_oracle_by_hand():
    k = _t([[1.0], [3], [3], [2]])
    q = _t([[1.0], [1], [1], [1]])
    kw = dict(variant="oracle_topk", include_self=False)
    assert _cands(q, k, k=1, **kw)[0] == [[0], [1], [1], [1]]  # tie 1 vs 2 -> lower slot
    assert _cands(q, k, k=2, **kw)[0] == [[0], [0, 1], [1, 2], [1, 2]]
    assert _cands(q, k, k=3, **kw)[0][3] == [1, 2, 3]
    assert _cands(q, k, fraction=0.5, **kw)[0] == [[0], [1], [1, 2], [1, 2]]  # ceil(.5 * 1, 2, 3, 4) = 1, 1, 2, 2
    assert _cands(q, k, k=1, **dict(kw, include_self=True))[0] == [[0], [1], [1, 2], [1, 3]]
    qn = _t([[-1.0], [-1], [-1], [-1]])  # scores -1, -3, -3, -2
    assert _cands(qn, k, k=2, **kw)[0][3] == [0, 3]
    assert _cands(qn, k, k=3, **kw)[0][3] == [0, 1, 3]


def test_reference_window_and_positions_by_hand():
    q = torch.randn(1, 1, 6, 2)
    k = torch.randn(1, 1, 6, 2)
    kv = torch.tensor([[False, False, True, True, True, True]])  # positions: slot 2 -> 0, ..., slot 5 -> 3
    kw = dict(variant="window", include_self=False, sink_tokens=1, local_window=2)
    C, V = naive_candidates(q, k, kv, **kw)
    assert C[0][0] == [None, None, [2], [2, 3], [2, 3, 4], [2, 4, 5]]
    assert V[0][0][5] == [2, 3, 4, 5]
    _, comparisons, full = naive_sparse_attention(q, k, torch.randn(1, 1, 6, 2), kv, **kw)
    assert (comparisons, full) == (1 + 2 + 3 + 3, 1 + 2 + 3 + 4)  # padding queries are not counted
    # decode: the single query is the last slot; right padding makes it a padding query
    C, _ = naive_candidates(q[:, :, :1], k, kv, **kw)
    assert C[0][0] == [[2, 4, 5]]
    C, _ = naive_candidates(q[:, :, :1], k, torch.tensor([[True] * 5 + [False]]), **kw)
    assert C[0][0] == [None]


@pytest.mark.parametrize("variant", ["lsh", "lsh_forest", "oracle_topk", "window", "full"])
def test_reference_padding_and_gqa_consistency(variant):
    """The reference itself: a left-padded row equals the row alone; GQA heads equal repeated KV heads."""
    gen = torch.Generator().manual_seed(4)
    q, k, v = quantized((1, HQ, 10, D), gen), quantized((1, HKV, 10, D), gen), torch.randn(1, HKV, 10, D, generator=gen)
    planes = torch.randn(HKV, 2, D, 4, generator=gen)
    kw = dict(variant=variant, include_self=True, sink_tokens=1, local_window=2, n_tables=2, n_trees=2, max_depth=4,
              min_candidates=3, k=3, hasher_params=FakeHasher(planes=planes.tolist()))
    alone, c1, f1 = naive_sparse_attention(q, k, v, torch.ones(1, 10, dtype=torch.bool), **kw)
    pad = lambda x: torch.cat([torch.randn(1, x.shape[1], 4, D, generator=gen), x], dim=2)  # noqa: E731
    kv = torch.tensor([[False] * 4 + [True] * 10])
    padded, c2, f2 = naive_sparse_attention(pad(q), pad(k), pad(v), kv, **kw)
    assert (c1, f1) == (c2, f2)
    assert torch.allclose(padded[:, :, 4:], alone) and padded[:, :, :4].abs().sum() == 0
    # GQA: with g = 1 and each KV head repeated, the same outputs (hash params repeated accordingly)
    g = HQ // HKV
    kw_rep = dict(kw, hasher_params=FakeHasher(planes=planes.repeat_interleave(g, 0).tolist()))
    rep, c3, _ = naive_sparse_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1),
                                        torch.ones(1, 10, dtype=torch.bool), **kw_rep)
    assert torch.allclose(rep, alone) and c3 == c1
