"""CUDA-only checks (issue 29), skipped without a GPU; benchmarks/gpu_check.py runs them first (`make gpu-check`).

Each compares the CUDA path with what the CPU tests hold it to: fused SDPA kernels (no math fallback in
bfloat16, nor in float32 GQA), the flex merge on flex's log-sum-exp, the host-sync budget under
torch.cuda.set_sync_debug_mode, device-independent hash codes, and the CUDA ways equal to the CPU ways.
"""
import warnings

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from lsh_bitnet.attention import SparseSpec, build_hasher, kernel
from lsh_bitnet.attention.kernel import sparse_attention_counts
from test_device_paths import data as cpu_data  # tests/ is on sys.path: pytest inserts a test file's directory

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
FUSED = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
# tests/test_attention_flex.py's shapes and padding: its CUDA test compiles the same flex graphs (gpu_check runs
# both in one process, so each graph compiles once).
B, HQ, HKV, D, T = 2, 4, 2, 16, 150


def data(dtype, seed=0, pad=True, T_=T):
    """tests/test_device_paths.py's inputs (same seeds, same padding), on the GPU."""
    return [x.cuda() for x in cpu_data(seed=seed, T_=T_, pad=pad, dtype=dtype)]


def run(spec, q, k, v, valid, hasher=None, engine=None):
    with torch.no_grad():
        return sparse_attention_counts(q, k, v, valid, spec=spec, hasher=hasher, engine=engine)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_full_attention_never_falls_back_to_math(dtype):
    """GQA full attention, prefill and decode, with only the fused kernels allowed."""
    q, k, v, valid = data(dtype, pad=False)
    with sdpa_kernel(FUSED):
        for Q in (T, 1):
            out, _ = run(SparseSpec("full"), q[:, :, T - Q:], k, v, valid)
            assert torch.isfinite(out).all()


@pytest.mark.parametrize("spec,dtype,tol", [
    (SparseSpec("window", sink_tokens=4, local_window=300), torch.float32, 1e-4),
    (SparseSpec("lsh", n_tables=3, sink_tokens=2, local_window=8), torch.float32, 1e-4),
    (SparseSpec("lsh", n_tables=3, sink_tokens=2, local_window=8), torch.bfloat16, 2e-2),
    (SparseSpec("lsh_forest", n_trees=2, max_depth=10, min_candidates=32), torch.bfloat16, 2e-2),
], ids=["window-fp32", "lsh3-fp32", "lsh3-bf16", "forest2-bf16"])
def test_flex_lse_equals_masked(spec, dtype, tol):
    """The window of 300 runs on 400 tokens: full blocks, which read no mask_mod (their sentinel slot is dropped
    by score_mod); the others share tests/test_attention_flex.py's shapes."""
    hasher = (build_hasher("simhash", spec.max_depth if spec.variant == "lsh_forest" else 4, D, HKV,
                           spec.n_trees if spec.variant == "lsh_forest" else spec.n_tables, 0, 0)
              if spec.hashed else None)
    q, k, v, valid = data(dtype, pad=spec.variant != "window", T_=400 if spec.variant == "window" else T)
    ref, ref_counts = run(spec, q, k, v, valid, hasher, engine="masked")
    out, counts = run(spec, q, k, v, valid, hasher, engine="flex")
    assert torch.equal(counts, ref_counts)
    assert (out.float() - ref.float()).abs().max() <= tol


def test_codes_do_not_depend_on_the_device():
    """float64 projections: the same codes on CPU and GPU, also within float32 rounding of a hyperplane."""
    h = build_hasher("simhash", 16, D, HKV, 4, seed=0, layer_idx=0)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(B, HKV, 512, D, generator=gen)
    r = h.planes[:, 0, :, 0]  # (Hkv, D)
    near = x - (x * r[None, :, None]).sum(-1, keepdim=True) / (r * r).sum(-1)[None, :, None, None] * r[None, :, None]
    for vecs in (x, near):
        assert torch.equal(h.codes(vecs), h.codes(vecs.cuda()).cpu())


@pytest.mark.parametrize("attention", [
    {"name": "window", "sink_tokens": 4, "local_window": 64, "engine": "masked"},
    {"name": "lsh", "n_tables": 2, "engine": "masked"},
    {"name": "lsh", "n_tables": 1, "engine": "flex"},
    {"name": "lsh", "n_tables": 8, "min_collisions": 2, "estimator": "sampling"},
    {"name": "lsh_topk", "n_tables": 8, "fraction": 0.1},
    {"name": "oracle_topk", "fraction": 0.1},
], ids=["window", "lsh", "lsh_flex", "sampling", "lsh_topk", "oracle_topk"])
def test_host_syncs_per_layer(attention):
    """torch.cuda.set_sync_debug_mode: at most 2 syncs per layer in a 2048-token prefill, 1 in a decode step."""
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    from lsh_bitnet.attention import patch_model

    torch.manual_seed(0)
    n_layers = 2
    model = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=256, intermediate_size=512, num_attention_heads=4,
                                         num_key_value_heads=2, num_hidden_layers=n_layers,
                                         max_position_embeddings=4096)).cuda().eval()
    patch = patch_model(model, attention, {"name": "simhash", "n_bits": 4, "seed": 0})
    x = torch.randint(3, 300, (1, 2048), device="cuda")
    try:
        with torch.inference_mode():
            model(input_ids=x, past_key_values=DynamicCache(), use_cache=True)  # compiles, fills one-off caches
            cache = DynamicCache()
            syncs = []
            for ids in (x, None):
                with warnings.catch_warnings(record=True) as seen:
                    warnings.simplefilter("always")
                    torch.cuda.set_sync_debug_mode("warn")
                    try:
                        logits = model(input_ids=x if ids is not None else logits[:, -1:].argmax(-1),
                                       past_key_values=cache, use_cache=True).logits
                    finally:
                        torch.cuda.set_sync_debug_mode("default")
                syncs.append(sum("synchroniz" in str(w.message) for w in seen))
    finally:
        patch.unpatch()
    assert syncs[0] <= 2 * n_layers and syncs[1] <= n_layers, syncs


def test_sync_free_ways_equal_cpu():
    """Counts identical and outputs within float32 noise of the CPU run, for the rules whose CUDA ways differ."""
    for spec, bits in ((SparseSpec("lsh", n_tables=8, min_collisions=2), 3),
                       (SparseSpec("lsh_topk", n_tables=8, fraction=0.1), 3),
                       (SparseSpec("lsh_topk", n_tables=4, k=16, score="soft"), 3),
                       (SparseSpec("oracle_topk", fraction=0.1), None)):
        hasher = build_hasher("simhash", bits, D, HKV, spec.n_tables, 0, 0) if bits else None
        q, k, v, valid = data(torch.float32)
        out, counts = run(spec, q, k, v, valid, hasher)
        ref, ref_counts = run(spec, q.cpu(), k.cpu(), v.cpu(), valid.cpu(), hasher)
        assert torch.equal(counts.cpu(), ref_counts), spec
        assert (out.cpu() - ref).abs().max() <= 1e-4, spec


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_gpu_keeps_its_own_device():
    q, k, v, valid = data(torch.bfloat16)
    q, k, v, valid = (x.to("cuda:1") for x in (q, k, v, valid))
    out, counts = run(SparseSpec("lsh", n_tables=2), q, k, v, valid, build_hasher("simhash", 4, D, HKV, 2, 0, 0),
                      engine="flex")
    assert out.device == torch.device("cuda", 1) and counts.device == torch.device("cuda", 1)
    assert kernel.native_gqa("cuda", torch.bfloat16, masked=False)
