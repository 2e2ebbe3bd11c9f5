"""Decode steps over byte-packed codes (packed.py): lsh_topk by collisions without a candidate mask
(engines/decode_topk.py) and m-of-L / union buckets from packed collision counts, each with the masked engine's
outputs (to float32 rounding) and counts, the loop reference's candidates and costs; the code cache's packed
codes kept in step with its codes."""
import pytest
import torch

from lsh_bitnet.attention import packed
from lsh_bitnet.attention.hashers import build_hasher
from lsh_bitnet.attention.kernel import SparseSpec, sparse_attention, sparse_attention_counts
from lsh_bitnet.attention.rules.lsh import LSHAttention
from lsh_bitnet.attention.rules.lsh_topk import LSHTopK
from naive_attention import naive_selection_ops, naive_sparse_attention

D = 16


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "eager"])
@pytest.mark.parametrize("n_tables", [1, 5, 8, 9, 17, 255])
def test_differing_tables_counts_every_table_whose_code_differs(n_tables, compiled, monkeypatch):
    monkeypatch.setattr(packed, "COMPILE", compiled)
    if not compiled:  # no compiled function may run
        monkeypatch.setattr(packed, "_COMPILED", {})
        monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("compiled with COMPILE = False"))
    gen = torch.Generator().manual_seed(n_tables)
    kcodes = torch.randint(0, 256, (2, 3, 50, n_tables), generator=gen)  # (B, Hkv, K, L): high bits set too
    qcodes = kcodes[:, :, [0, 7, 49]].clone()  # (B, Hkv, g=3, L): some keys' own codes, then perturbed
    qcodes[..., 1, : n_tables // 2] ^= 0x80  # the byte's top bit (the word's sign bit in its last byte)
    qcodes[..., 2, :] = 255 - qcodes[..., 2, :]
    expected = (qcodes[:, :, :, None, :] != kcodes[:, :, None, :, :]).sum(-1)  # (B, Hkv, g, K)
    qw, kw = packed.word_major(qcodes), packed.word_major(kcodes)
    got = packed.differing_tables(qw, kw)
    assert got.dtype == torch.int32 and torch.equal(got.long(), expected)
    assert not compiled or packed._COMPILED.get(packed._differing) not in (None, False)  # compiled where asked
    K = kcodes.shape[2]
    order, differing = packed.collision_order(qw, kw)
    assert torch.equal(order.long(), expected * K + torch.arange(K)) and int(differing) == int(expected.sum())
    cand, differing = packed.collision_candidates(qw, kw, n_tables // 2)
    assert torch.equal(cand, expected <= n_tables // 2) and int(differing) == int(expected.sum())

def test_differing_tables_falls_back_to_eager_when_compilation_fails(monkeypatch):
    def broken(fn, **kw):
        def run(*a):
            raise RuntimeError("no C++ compiler here")
        return run

    monkeypatch.setattr(packed, "_COMPILED", {})
    monkeypatch.setattr(torch, "compile", broken)
    codes = torch.randint(0, 256, (1, 2, 9, 8), generator=torch.Generator().manual_seed(0))
    words = packed.word_major(codes)
    with pytest.warns(RuntimeWarning, match="runs eagerly"):
        got = packed.differing_tables(words[..., :1], words)
    assert torch.equal(got, packed._differing(words[..., :1], words))
    assert packed._COMPILED[packed._differing] is False


def _inputs(seed, B, Hq, Hkv, K):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, 1, D, generator=gen)
    k, v = torch.randn(B, Hkv, K, D, generator=gen), torch.randn(B, Hkv, K, D, generator=gen)
    return q, k, v, torch.ones(B, K, dtype=torch.bool)


def packed_calls(monkeypatch):
    """A list that grows by one per packed count (every one goes through packed._run)."""
    calls, real = [], packed._run
    monkeypatch.setattr(packed, "_run", lambda *a: calls.append(1) or real(*a))
    return calls


def fast_and_masked(rule, spec, h, inputs, monkeypatch):
    """(out, counts) of the packed decode path, asserted taken, then of the masked engine (the path switched off)."""
    q, k, v, kv = inputs
    calls = packed_calls(monkeypatch)
    out, counts = sparse_attention_counts(q, k, v, kv, spec=spec, hasher=h, scaling=0.3)
    assert calls, "the decode step did not take the packed-code path"
    monkeypatch.setattr(rule, "one_query_call", classmethod(lambda *a: None))
    return (out, counts), sparse_attention_counts(q, k, v, kv, spec=spec, hasher=h, scaling=0.3)


CASES = [  # (n_bits, n_tables, budget, include_self, sink_tokens, local_window, K)
    (8, 8, dict(fraction=0.05), True, 4, 8, 300),
    (8, 12, dict(fraction=0.3), True, 2, 3, 40),  # two words per key, the second half full
    (3, 4, dict(k=4), False, 0, 0, 24),  # coarse codes: many ties, broken by the lower slot
    (2, 1, dict(k=50), True, 1, 2, 24),  # k above K: every key
    (8, 16, dict(k=1), False, 5, 30, 20),  # sinks and window overlap, cover every key
    (5, 3, dict(fraction=1.0), True, 0, 1, 7),
]


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
@pytest.mark.parametrize("hasher", ["simhash", "bit_sampling", "hadamard"])
def test_a_decode_step_equals_the_masked_engine_and_the_reference(case, hasher, monkeypatch):
    n_bits, n_tables, budget, include_self, sinks, window, K = case
    B, Hq, Hkv = 2, 6, 2
    q, k, v, kv = _inputs(K + n_tables, B, Hq, Hkv, K)
    h = build_hasher(hasher, n_bits, D, Hkv, n_tables, 3, 0)
    spec = SparseSpec("lsh_topk", n_tables=n_tables, include_self=include_self, sink_tokens=sinks,
                      local_window=window, score="collisions", **budget)
    (out, counts), (masked, masked_counts) = fast_and_masked(LSHTopK, spec, h, (q, k, v, kv), monkeypatch)
    torch.testing.assert_close(out, masked, atol=1e-6, rtol=0)  # the same keys, summed in another order
    assert torch.equal(counts, masked_counts)
    ref, comparisons, full = naive_sparse_attention(q, k, v, kv, variant="lsh_topk", hasher_params=h, scaling=0.3,
                                                    n_tables=n_tables, include_self=include_self, sink_tokens=sinks,
                                                    local_window=window, score="collisions", **budget)
    assert float((out.double() - ref).abs().max()) <= 1e-5
    assert counts[:2].tolist() == [comparisons, full]
    assert int(counts[3]) == naive_selection_ops(q, k, kv, variant="lsh_topk", hasher_params=h, n_tables=n_tables,
                                                 score="collisions")


BUCKET_CASES = [  # (n_bits, n_tables, min_collisions, include_self, sink_tokens, local_window, K)
    (8, 8, 1, True, 4, 8, 300),  # the union
    (6, 32, 2, True, 2, 3, 60),  # four words per key
    (3, 4, 3, False, 0, 0, 24),
    (8, 12, 2, True, 1, 30, 20),  # the window covers every key
    (2, 3, 3, False, 0, 0, 9),  # rows with no candidate: zeros
]


@pytest.mark.parametrize("case", BUCKET_CASES, ids=[str(i) for i in range(len(BUCKET_CASES))])
@pytest.mark.parametrize("hasher", ["simhash", "bit_sampling"])
def test_a_bucket_decode_step_equals_the_masked_engine_and_the_reference(case, hasher, monkeypatch):
    n_bits, n_tables, m, include_self, sinks, window, K = case
    B, Hq, Hkv = 2, 6, 2
    q, k, v, kv = _inputs(K + n_tables + m, B, Hq, Hkv, K)
    h = build_hasher(hasher, n_bits, D, Hkv, n_tables, 5, 0)
    spec = SparseSpec("lsh", n_tables=n_tables, min_collisions=m, include_self=include_self, sink_tokens=sinks,
                      local_window=window)
    (out, counts), (masked, masked_counts) = fast_and_masked(LSHAttention, spec, h, (q, k, v, kv), monkeypatch)
    assert torch.equal(out, masked) and torch.equal(counts, masked_counts)  # the same gather of the same set
    ref, comparisons, full = naive_sparse_attention(q, k, v, kv, variant="lsh", hasher_params=h, scaling=0.3,
                                                    n_tables=n_tables, min_collisions=m, include_self=include_self,
                                                    sink_tokens=sinks, local_window=window)
    assert float((out.double() - ref).abs().max()) <= 1e-5
    assert counts[:2].tolist() == [comparisons, full]
    assert int(counts[3]) == naive_selection_ops(q, k, kv, variant="lsh", hasher_params=h, n_tables=n_tables,
                                                 min_collisions=m)


def test_padding_soft_scores_and_wide_codes_keep_the_masked_engine(monkeypatch):
    """Where the packed path does not apply (a padding key, score=soft, sampling weights, codes of 9+ bits) the
    masked engine runs, and still matches the reference."""
    calls = packed_calls(monkeypatch)
    q, k, v, kv = _inputs(0, 2, 4, 2, 30)
    kv[1, :3] = False
    every = torch.ones_like(kv)
    for variant, n_bits, knobs, valid in (("lsh_topk", 8, dict(k=5, score="collisions"), kv),
                                          ("lsh_topk", 8, dict(k=5, score="soft"), every),
                                          ("lsh_topk", 9, dict(k=5, score="collisions"), every),
                                          ("lsh", 8, dict(min_collisions=2), kv),
                                          ("lsh", 4, dict(min_collisions=2, estimator="sampling"), every),
                                          ("lsh", 9, dict(min_collisions=2), every)):
        h = build_hasher("simhash", n_bits, D, 2, 4, 0, 0)
        spec = SparseSpec(variant, n_tables=4, sink_tokens=1, **knobs)
        out, cost = sparse_attention(q, k, v, valid, spec=spec, hasher=h)
        ref, comparisons, _ = naive_sparse_attention(q, k, v, valid, variant=variant, hasher_params=h, n_tables=4,
                                                     sink_tokens=1, **knobs)
        qv = valid[:, -1:][:, None, :, None]
        assert float(((out.double() - ref) * qv).abs().max()) <= 1e-5 and cost.comparisons == comparisons
    assert not calls


def test_the_code_cache_keeps_packed_codes_in_step_with_its_codes():
    from lsh_bitnet.attention.codecache import KeyCodeCache

    gen = torch.Generator().manual_seed(2)
    keys = torch.randn(1, 2, 12, D, generator=gen)
    h = build_hasher("simhash", 8, D, 2, 10, 0, 0)
    cache, pointers = KeyCodeCache(), []
    for K in range(8, 13):  # a prefill of 8 keys, then decode steps of one key each
        mask = object.__new__(type("Mask", (), {}))
        cache.begin_forward(mask, keys[:, :, :K], torch.ones(1, K, dtype=torch.bool))
        codes, reused = cache.codes(0, mask, keys[:, :, :K], h.key_codes, torch.int32, words=True)
        words = cache.words(0, K)
        assert reused == (0 if K == 8 else K - 1)
        expected = packed.word_major(h.key_codes(keys[:, :, :K]))  # (W, B, Hkv, K)
        assert words.shape == (2, 1, 2, K) and torch.equal(words, expected)
        assert torch.equal(codes, h.key_codes(keys[:, :, :K]).to(torch.int32).permute(3, 0, 1, 2))
        pointers.append(words.data_ptr())
    assert len(set(pointers[1:])) == 1  # decode steps write in place


@pytest.mark.parametrize("attention", [
    {"name": "lsh_topk", "n_tables": 8, "fraction": 0.2, "score": "collisions", "sink_tokens": 2, "local_window": 4},
    {"name": "lsh", "n_tables": 12, "min_collisions": 2, "sink_tokens": 2, "local_window": 4},
], ids=["lsh_topk", "m_of_l"])
def test_decode_steps_of_a_model_take_the_packed_path_and_match_the_prefill(attention, monkeypatch):
    """Greedy decode steps with the KV cache (codes cached, packed) give the logits of a prefill over the same
    tokens, with the packed path taken at every step."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lsh_bitnet.attention import patch_model

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128)
    model = LlamaForCausalLM(cfg).eval()
    calls = packed_calls(monkeypatch)
    ids = torch.randint(0, 64, (1, 36))
    patch = patch_model(model, attention, {"name": "simhash", "n_bits": 6, "seed": 0})
    try:
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                                 pad_token_id=0, return_dict_in_generate=True, output_logits=True)
            whole = model(out.sequences).logits  # one prefill over the prompt and the generated tokens
    finally:
        patch.unpatch()
    assert len(calls) == 4 * cfg.num_hidden_layers  # the 4 decode steps after the prompt's, every layer
    for i, logits in enumerate(out.logits):
        torch.testing.assert_close(logits, whole[:, 35 + i], atol=1e-5, rtol=0)


def test_compile_seconds_of_the_packed_count_leave_out_the_run(monkeypatch):
    """As the flex engine's: per graph (word count) the first call less the second, the whole first call of a graph
    that ran once; only graphs compiled after `start`; and a patch's timing reports them in compile_s."""
    monkeypatch.setattr(packed, "_FIRST", {1: 5.0, 4: 2.0})  # keys stand for (function, word count)
    monkeypatch.setattr(packed, "_SECOND", {1: 0.5})
    monkeypatch.setattr(packed, "COMPILED", [1, 4])
    assert packed.compile_stats(0) == {"compile_s": pytest.approx(6.5), "compiles": 2}
    assert packed.compile_stats(1) == {"compile_s": pytest.approx(2.0), "compiles": 1}
    monkeypatch.setattr(packed, "COMPILED", [1])
    from transformers import LlamaConfig, LlamaForCausalLM

    from lsh_bitnet.attention import patch_model

    model = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    patch = patch_model(model, {"name": "lsh_topk", "n_tables": 2, "k": 2}, {"name": "simhash", "n_bits": 2})
    try:
        packed.COMPILED.append(4)  # compiled while patched
        assert patch.timing_summary()["compile_s"] == pytest.approx(2.0)
    finally:
        patch.unpatch()
