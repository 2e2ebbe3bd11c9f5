"""The flex engine (SPEC section 8) against the masked engine, its block masks against the exact candidate
sets, compilation reuse, and the decode-time key-code cache.

Compiling flex graphs costs seconds each on CPU, so the engine-equality cases share a few shapes.
"""
import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from lsh_bitnet.attention import SparseSpec, build_hasher, patch_model, validate_attention_config
from lsh_bitnet.attention.candidates import Candidates
from lsh_bitnet.attention.engines import flex, flex_counts
from lsh_bitnet.attention.kernel import resolve_engine, sparse_attention_counts
from lsh_bitnet.errors import ConfigError
from lsh_bitnet.tasks._synthetic import cache_kwarg

B, HQ, HKV, D, T = 2, 4, 2, 16, 150
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def data(seed=0, T_=T, pad=True, dtype=torch.float32, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, h, T_, D, generator=gen) for h in (HQ, HKV, HKV))
    valid = torch.ones(B, T_, dtype=torch.bool)
    if pad:  # left padding on row 0, a hole in row 1
        valid[0, :9] = False
        valid[1, 60:63] = False
    return [x.to(device=device, dtype=dtype) for x in (q, k, v)] + [valid.to(device)]


def hasher_for(spec, bits=3):
    if spec.variant == "lsh_forest":  # a tree's code has max_depth bits
        return build_hasher("simhash", spec.max_depth, D, HKV, spec.n_trees, 0, 0)
    return build_hasher("simhash", bits, D, HKV, spec.n_tables, 0, 0) if spec.variant == "lsh" else None


def forest_depths(cands, q_idx):
    """x*(i) written out densely: (B, Hq, Qc) deepest x with |{j in V(i): max_t lcp_t(i, j) >= x}| >= target,
    lcp_t(i, j) >= x  <=>  code_t(i) >> (d - x) == code_t(j) >> (d - x). Also the per-pair max lcp (B, Hq, Qc, K)."""
    d, K = cands.bits, cands.K
    _, valid, _ = cands._sets(q_idx, K)  # (B, 1, 1, Qc, K)
    valid = valid.reshape(cands.B, 1, len(q_idx), K)
    qc = cands.qcodes[..., q_idx].flatten(2, 3).long()  # (L, B, Hq, Qc)
    kc = cands.kcodes.repeat_interleave(cands.g, 2).long()  # (L, B, Hq, K)
    lcp = torch.zeros(valid.shape[:1] + qc.shape[2:] + (K,), dtype=torch.int64)
    for x in range(1, d + 1):
        same = ((qc[..., None] >> (d - x)) == (kc[..., None, :] >> (d - x))).any(0)  # (B, Hq, Qc, K)
        lcp = torch.where(same, x, lcp)
    target = valid.sum(-1).clamp(max=cands.spec.min_candidates)  # (B, 1, Qc)
    n_at = torch.stack([((lcp >= x) & valid).sum(-1) for x in range(d + 1)])  # (d + 1, B, Hq, Qc)
    return (n_at >= target).sum(0) - 1, lcp


def both_engines(spec, q, k, v, valid, hasher, scaling=None):
    with torch.no_grad():
        ref, ref_counts = sparse_attention_counts(q, k, v, valid, spec=spec, hasher=hasher, engine="masked",
                                                  scaling=scaling)
        out, counts = sparse_attention_counts(q, k, v, valid, spec=spec, hasher=hasher, engine="flex",
                                              scaling=scaling)
    return ref, ref_counts, out, counts


CASES = {  # (spec, query counts to test: prefill and a decode-like tail)
    "window_sinks_pad": (SparseSpec("window", sink_tokens=3, local_window=5), [T, 1]),
    "lsh_3tables_sinks_window_pad": (SparseSpec("lsh", n_tables=3, sink_tokens=2, local_window=4), [T]),
    "lsh_2tables_decode": (SparseSpec("lsh", n_tables=2, sink_tokens=1, local_window=2), [1, 40]),
    "lsh_no_self_empty_rows": (SparseSpec("lsh", n_tables=1, include_self=False), [T]),
    "forest_3trees_sinks_window_pad": (SparseSpec("lsh_forest", n_trees=3, max_depth=6, min_candidates=8,
                                                  sink_tokens=2, local_window=4), [T, 1]),
    "forest_2trees_decode": (SparseSpec("lsh_forest", n_trees=2, max_depth=8, min_candidates=16, sink_tokens=1,
                                        local_window=3), [40]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_flex_equals_masked(name):
    """Outputs to 1e-4 (float32) and identical integer counts, with padding, GQA 2:1 and decode steps, at the
    caller's scaling 0.7 (not the default D ** -0.5: an engine that dropped it would still agree there)."""
    spec, n_queries = CASES[name]
    q, k, v, valid = data(pad=name not in ("lsh_no_self_empty_rows", "lsh_2tables_decode", "forest_2trees_decode"))
    hasher = hasher_for(spec)
    for Q in n_queries:
        ref, ref_counts, out, counts = both_engines(spec, q[:, :, T - Q:], k, v, valid, hasher, scaling=0.7)
        assert torch.equal(counts, ref_counts), (name, Q, counts.tolist(), ref_counts.tolist())
        assert (out - ref).abs().max().item() <= 1e-4, (name, Q)
        assert 0 < counts[0] < counts[1]  # a real sparse case, not all or nothing
    if name == "lsh_no_self_empty_rows":
        assert (ref.abs().amax(-1) == 0).any()  # some C(i) empty: zero rows on both engines


def pass_sets(spec, cands, q_idx):
    """Exact pairs of each pass, written out from codes and positions: {t: (B, Hq, Q, K) bool}."""
    cand, valid = cands.mask(q_idx, cands.K)  # (B, Hkv|1, g|1, Q, K)
    Bq, Q, K = cand.shape[0], len(q_idx), cands.K
    cand = cand.expand(Bq, cands.Hkv, cands.g, Q, K).reshape(Bq, -1, Q, K)
    allowed = valid.reshape(Bq, 1, Q, K)
    slots = q_idx + cands.q_offset
    p_q = cands.count[:, slots] - 1  # (B, Q) positions
    p_k = cands.count - 1  # (B, K)
    j = torch.arange(K)
    always = (p_k[:, None, :] < spec.sink_tokens) | (p_q[:, :, None] - p_k[:, None, :] < spec.local_window)
    if spec.include_self:
        always = always | (j[None, None, :] == slots[None, :, None])
    always = (always[:, None] & allowed).expand_as(cand)
    sets, seen = {}, always.clone()
    if spec.include_self or spec.sink_tokens or spec.local_window:
        sets[-1] = always
    if spec.variant == "lsh_forest":
        xstar, _ = forest_depths(cands, q_idx)
        shift = (cands.bits - xstar)[..., None]  # (B, Hq, Q, 1)
    for t in range(0 if cands.qcodes is None else cands.qcodes.shape[0]):
        qc = cands.qcodes[t].reshape(Bq, -1, cands.Q)[..., q_idx].long()  # (B, Hq, Q)
        kc = cands.kcodes[t].repeat_interleave(cands.g, 1).long()  # (B, Hq, K)
        if spec.variant == "lsh_forest":  # tree t: x*(i)-bit prefix shared in this tree
            same = ((qc[..., None] ^ kc[..., None, :]) >> shift) == 0
        else:
            same = qc[..., None] == kc[..., None, :]
        hit = same & allowed & ~seen
        sets[t], seen = hit, seen | hit
    assert torch.equal(seen, cand)  # the passes are disjoint and their union is C(i)
    return sets


@pytest.mark.parametrize("spec", [SparseSpec("window", sink_tokens=3, local_window=200),
                                  SparseSpec("lsh", n_tables=3, sink_tokens=2, local_window=130),
                                  SparseSpec("lsh", n_tables=1, include_self=False),
                                  SparseSpec("lsh_forest", n_trees=3, max_depth=5, min_candidates=40, sink_tokens=2,
                                             local_window=130)],
                         ids=["window", "lsh3", "lsh1", "forest3"])
@pytest.mark.parametrize("Q", [400, 1])
def test_block_masks_cover_every_pair(spec, Q):
    """Every candidate pair lies in a partial or full block of its pass; full blocks hold pairs only."""
    K = 400
    q, k, v, valid = data(seed=1, T_=K)
    q = q[:, :, K - Q:]
    cands = Candidates(q, k, valid, spec, hasher_for(spec, bits=2))
    sets = pass_sets(spec, cands, torch.arange(Q))
    lays = dict(flex.layouts(q, k, valid, cands))
    assert sorted(lays) == sorted(sets)
    for t, lay in lays.items():
        exact = sets[t]  # (B, Hq, Q, K)
        for b in range(B):
            for h in range(HQ):
                qsrc, ksrc = lay.qsrc[b, h], lay.ksrc[b, h // (HQ // HKV)]
                qi, kj = (qsrc < Q).nonzero()[:, 0], (ksrc < K).nonzero()[:, 0]  # rows holding real tokens
                blocks = torch.zeros(lay.partial.shape[-2:], dtype=torch.int64)
                pairs = exact[b, h][qsrc[qi]][:, ksrc[kj]]  # (real query rows, real key rows) in pass order
                bi, bj = pairs.nonzero().unbind(1)
                blocks.index_put_((qi[bi] // flex.BS, kj[bj] // flex.BS), torch.ones_like(bi), accumulate=True)
                covered = lay.partial[b, h] | lay.full[b, h]
                assert not (blocks.bool() & ~covered).any(), f"pass {t}: a pair in a skipped block"
                for fq, fk in lay.full[b, h].nonzero().tolist():
                    rows = qi[(qi // flex.BS) == fq]
                    cols = kj[(kj // flex.BS) == fk]
                    assert len(cols) == flex.REAL and exact[b, h][qsrc[rows]][:, ksrc[cols]].all()
        if Q > 1 and t == -1 and spec.variant == "window":
            assert lay.full.any() and not (lay.partial | lay.full).all()  # the band has full and skipped blocks


@pytest.mark.parametrize("spec", [SparseSpec("lsh", n_tables=1, sink_tokens=1, local_window=3),
                                  SparseSpec("lsh_forest", n_trees=2, max_depth=6, min_candidates=8)],
                         ids=["lsh", "forest"])
def test_same_shape_does_not_recompile(spec):
    """A second call of the same padded shape, new data and a different length in the same block bucket."""
    hasher = hasher_for(spec)
    with torch.no_grad():
        q, k, v, valid = data(seed=2, T_=200, pad=False)
        sparse_attention_counts(q, k, v, valid, spec=spec, hasher=hasher, engine="flex")
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        compiles = len(flex.COMPILED)
        for seed, T_ in ((3, 200), (4, 210)):  # 200 and 210 keys both pad to 2 key blocks of 127
            q, k, v, valid = data(seed=seed, T_=T_, pad=False)
            sparse_attention_counts(q, k, v, valid, spec=spec, hasher=hasher, engine="flex")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    assert len(flex.COMPILED) == compiles


def test_compile_seconds_leave_out_the_run(monkeypatch):
    """compile_s is a graph's first call less its second; later calls are not timed, other patches not counted."""
    clock = iter([0.0, 5.0, 10.0, 10.5, 20.0, 22.0])  # first call 5 s, second 0.5 s; another graph once, 2 s
    monkeypatch.setattr(flex.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(flex, "COMPILED", [("old",)])
    monkeypatch.setattr(flex, "SEEN", {("old",): 7.0})
    monkeypatch.setattr(flex, "RERUN", {})
    x = torch.zeros(1)
    for key in [("a",), ("a",), ("a",), ("b",)]:  # the third call of "a" reads no clock
        flex._timed(key, lambda t: t, x)
    assert flex.compile_stats(1) == {"compile_s": pytest.approx(6.5), "compiles": 2}
    assert flex.compile_stats(0)["compiles"] == 3


@pytest.mark.parametrize("n_trees,max_depth,min_candidates,pad,Q", [(1, 6, 8, True, T), (4, 7, 24, True, T),
                                                                   (3, 12, 5, False, 30), (2, 5, 500, True, T),
                                                                   (3, 26, 3, True, T)])  # ids ranked: 3 x 26 bits
def test_forest_depths_without_dense_tensor(n_trees, max_depth, min_candidates, pad, Q):
    """x*(i) and the candidate count before the always set, from sorted group counts and inclusion-exclusion over
    trees, equal the dense prefix counts."""
    spec = SparseSpec("lsh_forest", n_trees=n_trees, max_depth=max_depth, min_candidates=min_candidates)
    q, k, v, valid = data(seed=5, pad=pad)
    cands = Candidates(q[:, :, T - Q:], k, valid, spec, hasher_for(spec))
    xstar, lcp = forest_depths(cands, torch.arange(Q))
    shift, size = flex.forest_shifts(cands)  # (B, Hq, Q) each
    got = cands.bits - shift
    q_valid = valid[:, T - Q:][:, None].expand_as(got)
    assert torch.equal(got[q_valid], xstar[q_valid])
    _, vis, _ = cands._sets(torch.arange(Q), T)  # (B, 1, 1, Q, K)
    size_ref = ((lcp >= xstar[..., None]) & vis.reshape(B, 1, Q, T)).sum(-1)  # keys sharing the x*-bit prefix
    assert torch.equal(size, size_ref * q_valid)
    assert len(set(xstar[q_valid].tolist())) > 1  # depths differ between queries: a real test of the search


@pytest.mark.parametrize("sinks,window,include_self,pad,Q", [(0, 0, True, True, T), (3, 0, True, True, T),
                                                             (2, 70, True, True, T), (0, 5, False, False, 20),
                                                             (4, 0, False, True, 1)])
def test_forest_counts_closed_form(sinks, window, include_self, pad, Q):
    """The forest's comparisons without counting passes (always set in closed form, the forest's candidates
    from the depth search, their overlap with the always set by position) equal the masked engine's count."""
    spec = SparseSpec("lsh_forest", n_trees=3, max_depth=6, min_candidates=12, sink_tokens=sinks,
                      local_window=window, include_self=include_self)
    q, k, v, valid = data(seed=6, pad=pad)
    q = q[:, :, T - Q:]
    hasher = hasher_for(spec)
    with torch.no_grad():
        _, ref = sparse_attention_counts(q, k, v, valid, spec=spec, hasher=hasher, engine="masked")
    cands = Candidates(q, k, valid, spec, hasher)
    c = flex._prepare(q, k, valid, cands)
    n = flex_counts.always_counts(cands.count[:, T - Q:], valid[:, T - Q:].long(), spec).sum() * HQ + c.forest_count
    assert n == ref[0] and 0 < n < ref[1]


def test_block_buckets_bound_recompiles():
    sizes = {flex.bucket(n) for n in range(1, 1025)}  # up to 128k keys
    assert len(sizes) <= 4 * 10 + 4 and all(n <= flex.bucket(n) <= 1.25 * n for n in range(1, 1025))


def test_engine_config_errors():
    hasher = {"name": "simhash", "n_bits": 4, "seed": 0}
    with pytest.raises(ConfigError, match="engine=flex cannot run attention=oracle_topk.*masked"):
        validate_attention_config({"name": "oracle_topk", "k": 4, "engine": "flex"}, hasher)
    with pytest.raises(ConfigError, match="attention.engine='fast' is not known"):
        validate_attention_config({"name": "lsh", "engine": "fast"}, hasher)
    with pytest.raises(ConfigError, match="engine=flex cannot run attention.min_collisions=2"):
        validate_attention_config({"name": "lsh", "engine": "flex", "min_collisions": 2}, hasher)
    with pytest.raises(ConfigError, match="engine=flex cannot run attention=lsh_topk .*every causal key.*masked"):
        validate_attention_config({"name": "lsh_topk", "fraction": 0.1, "engine": "flex"}, hasher)
    validate_attention_config({"name": "lsh", "engine": "flex"}, hasher)
    validate_attention_config({"name": "lsh_forest", "engine": "flex", "n_trees": 4}, hasher)
    with pytest.raises(ConfigError, match="engine=flex cannot run attention.n_trees=7.*masked"):
        validate_attention_config({"name": "lsh_forest", "engine": "flex", "n_trees": 7}, hasher)
    assert resolve_engine(SparseSpec("lsh_forest", engine="auto", n_trees=7), torch.zeros(1), 8192) == "masked"
    assert resolve_engine(SparseSpec("lsh_forest", engine="auto"), torch.zeros(1), 8192) == "flex"
    assert resolve_engine(SparseSpec("lsh_forest", engine="auto"), torch.zeros(1), 4096) == "masked"  # measured slower
    auto = SparseSpec("lsh", engine="auto")
    auto.min_collisions = 2  # a rule flex does not run (SPEC section 7): auto must fall back to masked
    assert resolve_engine(auto, torch.zeros(1), 8192) == "masked"
    assert resolve_engine(SparseSpec("lsh", engine="auto"), torch.zeros(1), 8192) == "flex"
    assert resolve_engine(SparseSpec("lsh", engine="auto"), torch.zeros(1), 1) == "masked"  # decode step
    assert resolve_engine(SparseSpec("oracle_topk", engine="auto", k=4), torch.zeros(1), 8192) == "masked"


# ----------------------------------------------------------------------------- key-code cache in decode
def tiny_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                      num_key_value_heads=2, num_hidden_layers=2, max_position_embeddings=128,
                      initializer_range=0.1, attn_implementation="sdpa")
    return LlamaForCausalLM(cfg).eval()


@torch.inference_mode()  # as evaluation runs: inference tensors keep no version counter
def generate(model, patch, prompt, steps):
    """Greedy loop with a KV cache; returns logits of every step and hash_ops after each forward."""
    cache, x, out, hash_ops = DynamicCache(), prompt, [], []
    for _ in range(steps + 1):
        logits = model(input_ids=x, use_cache=True, **{cache_kwarg(model): cache}).logits[:, -1]
        out.append(logits)
        hash_ops.append(patch.cost_summary()["hash_ops"])
        x = logits.argmax(-1, keepdim=True)
    return torch.stack(out), hash_ops


def test_decode_hashes_each_key_once():
    model = tiny_llama()
    attention = {"name": "lsh", "n_tables": 2, "sink_tokens": 1, "local_window": 2, "engine": "masked"}
    hasher_cfg = {"name": "simhash", "n_bits": 3, "seed": 0}
    prompt = torch.randint(3, 300, (1, 12), generator=torch.Generator().manual_seed(0))
    other = prompt.clone()
    other[0, 5] = (other[0, 5] + 1) % 300  # same first and last token, same length: must not hit the cache
    patch = patch_model(model, attention, hasher_cfg)
    try:
        hasher = patch.states[0].hasher
        per_token = hasher.ops_per_vector * (4 + 2) * 2  # (query heads + KV heads) x 2 layers
        cached, hops = generate(model, patch, prompt, steps=4)
        assert [b - a for a, b in zip(hops, hops[1:])] == [per_token] * 4  # one new query, one new key per step
        cost_cached = patch.cost_summary()
        patch.reset()
        cached_other, hops_other = generate(model, patch, other, steps=1)
        assert hops_other[0] == per_token * 12  # the whole prompt hashed again
        patch.reset()
        for state in patch.states:
            state.codecache = None  # the uncached path: every key hashed on every call
        uncached, hops_uncached = generate(model, patch, prompt, steps=4)
        cost_uncached = patch.cost_summary()
        uncached_other, _ = generate(model, patch, other, steps=1)
    finally:
        patch.unpatch()
    assert torch.equal(cached, uncached) and torch.equal(cached_other, uncached_other)
    assert cost_cached["comparisons"] == cost_uncached["comparisons"]
    assert hops_uncached[1] - hops_uncached[0] == hasher.ops_per_vector * (4 + 2 * 13) * 2  # 13 keys re-hashed


@CUDA
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float16, 2e-2), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("name", ["window_sinks_pad", "lsh_3tables_sinks_window_pad"])
def test_flex_equals_masked_cuda(name, dtype, tol):
    spec, n_queries = CASES[name]
    q, k, v, valid = data(dtype=dtype, device="cuda")
    hasher = hasher_for(spec)
    for Q in n_queries:
        ref, ref_counts, out, counts = both_engines(spec, q[:, :, T - Q:], k, v, valid, hasher)
        assert torch.equal(counts, ref_counts)
        assert (out.float() - ref.float()).abs().max().item() <= tol
