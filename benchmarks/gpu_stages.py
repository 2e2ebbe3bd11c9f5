"""The stages of benchmarks/gpu_check.py: each takes the CUDA device and returns table rows
[stage, case, value, target, status] (status ok | FAIL | MISS). syncs_cpu_proxy is the dry run's stand-in."""
import contextlib
import math
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from lsh_bitnet.attention import SparseSpec, build_hasher, hostsync, kernel
from lsh_bitnet.attention.kernel import sparse_attention_counts

REPO = Path(__file__).resolve().parent.parent
HQ, HKV, D = 20, 5, 128  # BitNet b1.58 2B4T's attention
SYNC_BUDGET = 2  # host syncs per layer in a prefill (issue 29's target)


def _ok(good: bool, bad: str = "FAIL") -> str:
    return "ok" if good else bad


# ----------------------------------------------------------------------------- tests
def tests(dev):
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py",
           "tests/test_attention_flex.py::test_flex_equals_masked_cuda"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=420)
    last = (done.stdout.strip().splitlines() or ["no output"])[-1]
    return [["tests", "pytest tests/test_cuda.py + flex cuda", last.strip("= "), "all pass", _ok(done.returncode == 0)]]


# ----------------------------------------------------------------------------- SDPA backends
def sdpa(dev):
    from torch.nn.attention import SDPBackend

    rows, T = [], 4096
    g = torch.Generator(device=dev).manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        q = torch.randn(1, HQ, T, D, device=dev, dtype=dtype, generator=g)
        k, v = (torch.randn(1, HKV, T, D, device=dev, dtype=dtype, generator=g) for _ in range(2))
        j = torch.arange(T, device=dev)
        mask = (j <= j[T - 1024:, None])[None, None]  # (1, 1, 1024, T): the last masked-engine chunk, causal
        for case, qq, m, causal in (("full prefill", q, None, True), ("full decode", q[:, :, -1:], None, False),
                                    ("masked chunk", q[:, :, -1024:], mask, False)):
            key, value, gqa = kernel.sdpa_kv(qq, k, v, m)
            choice = SDPBackend(torch._fused_sdp_choice(qq, key, value, m, 0.0, causal, enable_gqa=gqa)).name
            bad = "FAIL" if dtype == torch.bfloat16 else "MISS"
            rows.append(["sdpa", f"{case} {str(dtype)[6:]}", choice, "not MATH", _ok(choice != "MATH", bad)])
    return rows


# ----------------------------------------------------------------------------- accuracy
def peaked_inputs(T, dev, dtype, peaked: bool, B=1, hq=8, hkv=2):
    """q, k, v, valid; peaked: a sink key ~25 nats above the self key and keys ~20 above it for the tables."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(B, hq, T, D, generator=gen)
    k = torch.randn(B, hkv, T, D, generator=gen)
    v = torch.rand(B, hkv, T, D, generator=gen) * 2 - 1  # values in [-1, 1]: 1e-2 is ~5 bfloat16 steps
    if peaked:
        u = torch.randn(D, generator=gen)
        u = u / u.norm()
        scale = D ** -0.5
        q = q + 4 * u  # q . k_sink * scale = 4 * a * scale
        k[:, :, 0] = (25 / (4 * scale)) * u
        k[:, :, 5::7] += (20 / (4 * scale)) * u
    return [x.to(dev, dtype) for x in (q, k, v)] + [torch.ones(B, T, dtype=torch.bool, device=dev)]


def accuracy(dev):
    rows, T = [], 1024
    spec = SparseSpec("lsh", n_tables=2, sink_tokens=1, local_window=16)
    hasher = build_hasher("simhash", 6, D, 2, 2, 0, 0)
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 1e-2)):
        for peaked in (False, True):
            q, k, v, valid = peaked_inputs(T, dev, dtype, peaked)
            with torch.no_grad():
                ref, ref_n = sparse_attention_counts(q.double(), k.double(), v.double(), valid, spec=spec,
                                                     hasher=hasher, engine="masked")
                t0 = time.perf_counter()
                out, n = sparse_attention_counts(q, k, v, valid, spec=spec, hasher=hasher, engine="flex")
                torch.cuda.synchronize(dev)
                first = time.perf_counter() - t0
                masked, masked_n = sparse_attention_counts(q, k, v, valid, spec=spec, hasher=hasher, engine="masked")
            name = f"{str(dtype)[6:]} {'peaked' if peaked else 'ordinary'}"
            if not peaked:
                rows.append(["accuracy", f"flex D=128 compile {str(dtype)[6:]}", f"{first:.1f} s", "compiles",
                             _ok(torch.isfinite(out).all().item())])
            for engine, o, c in (("flex", out, n), ("masked", masked, masked_n)):
                err = (o.double() - ref).abs().max().item()
                same = torch.equal(c, ref_n)
                rows.append(["accuracy", f"{engine} {name}", f"err {err:.1e}, counts {'equal' if same else 'DIFFER'}",
                             f"<= {tol:g}, equal", _ok(err <= tol and same)])
    return rows


# ----------------------------------------------------------------------------- host syncs
SYNC_RULES = {
    "full": {"name": "full"},
    "window masked": {"name": "window", "sink_tokens": 4, "local_window": 64, "engine": "masked"},
    "window flex": {"name": "window", "sink_tokens": 4, "local_window": 64, "engine": "flex"},
    "lsh masked": {"name": "lsh", "n_tables": 2, "engine": "masked"},
    "lsh flex": {"name": "lsh", "n_tables": 1, "engine": "flex"},
    "lsh_topk": {"name": "lsh_topk", "n_tables": 8, "fraction": 0.1},
    "oracle_topk": {"name": "oracle_topk", "fraction": 0.1},
    "sampling": {"name": "lsh", "n_tables": 8, "min_collisions": 2, "estimator": "sampling"},
}


def _tiny_llama(dev, n_layers=2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=256, intermediate_size=512, num_attention_heads=4,
                                        num_key_value_heads=2, num_hidden_layers=n_layers,
                                        max_position_embeddings=4096)).to(dev).eval()


def _count_syncs(model, attention, x, counted):
    """(prefill syncs, decode syncs) of one prefill of x and one decode step; counted() a context yielding a
    function that returns the count so far."""
    from transformers import DynamicCache

    from lsh_bitnet.attention import patch_model

    patch = patch_model(model, attention, {"name": "simhash", "n_bits": 4, "seed": 0})
    try:
        with torch.inference_mode():
            model(input_ids=x, past_key_values=DynamicCache(), use_cache=True)  # compiles, fills one-off caches
            cache, out = DynamicCache(), []
            with counted() as n:
                logits = model(input_ids=x, past_key_values=cache, use_cache=True).logits
            out.append(n())
            with counted() as n:
                model(input_ids=logits[:, -1:].argmax(-1), past_key_values=cache, use_cache=True)
            out.append(n())
    finally:
        patch.unpatch()
    return out


def _sync_rows(stage, model, x, counted, n_layers):
    rows = []
    for name, attention in SYNC_RULES.items():
        pre, dec = _count_syncs(model, attention, x, counted)
        rows.append([stage, name, f"prefill {pre / n_layers:g}/layer, decode {dec / n_layers:g}/layer",
                     f"<= {SYNC_BUDGET}/layer", _ok(pre <= SYNC_BUDGET * n_layers, "MISS")])
    return rows


def syncs(dev):
    @contextlib.contextmanager
    def counted():
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield lambda: sum("synchroniz" in str(w.message) for w in seen)
            finally:
                torch.cuda.set_sync_debug_mode("default")

    x = torch.randint(3, 300, (1, 2048), device=dev)
    return _sync_rows("syncs", _tiny_llama(dev), x, counted, 2)


def syncs_cpu_proxy():
    """The dry run's host syncs: hostsync.HostSyncCounter on CPU through the ways CUDA takes (flex eager, merged
    on its log-sum-exp as on CUDA), a 256-token prefill in chunks of 64."""
    from lsh_bitnet.attention.engines import flex, flex_pass

    counter = hostsync.HostSyncCounter()
    timed = flex._timed

    def uncounted(*args):  # the flex kernel itself: no host sync on CUDA
        counter.paused = True
        try:
            return timed(*args)
        finally:
            counter.paused = False

    @contextlib.contextmanager
    def counted():
        counter.by_op.clear()
        with counter:
            yield lambda: counter.total

    saved = (set(hostsync.SYNC_FREE_DEVICES), flex_pass.LSE_DEVICES, flex_pass.COMPILE, dict(flex_pass._COMPILED))
    hostsync.SYNC_FREE_DEVICES.add("cpu")
    flex_pass.LSE_DEVICES, flex_pass.COMPILE, flex._timed = ("cpu", "cuda"), False, uncounted
    flex_pass._COMPILED.clear()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x = torch.randint(3, 300, (1, 256))
            for rule in SYNC_RULES.values():
                rule.setdefault("query_chunk", 64)
            return _sync_rows("syncs (CPU proxy)", _tiny_llama("cpu"), x, counted, 2)
    finally:
        hostsync.SYNC_FREE_DEVICES.clear()
        hostsync.SYNC_FREE_DEVICES.update(saved[0])
        flex_pass.LSE_DEVICES, flex_pass.COMPILE, flex._timed = saved[1], saved[2], timed
        flex_pass._COMPILED.clear()
        flex_pass._COMPILED.update(saved[3])


# ----------------------------------------------------------------------------- speed and memory
SPEED = {  # name -> (spec, hasher bits, lengths)
    "window 4+256 flex": (SparseSpec("window", sink_tokens=4, local_window=256, engine="flex"), 0, (8192, 32768)),
    "lsh 8b x1 flex": (SparseSpec("lsh", n_tables=1, sink_tokens=4, local_window=64, engine="flex"), 8, (8192, 32768)),
    "lsh 8b x1 masked": (SparseSpec("lsh", n_tables=1, sink_tokens=4, local_window=64, engine="masked"), 8, (8192,)),
}


def _measure(fn, dev, repeats=3):
    """(median ms, peak MiB above the inputs) of fn() after a warm-up (the compile)."""
    fn()
    torch.cuda.synchronize(dev)
    base = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(dev)
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2], (torch.cuda.max_memory_allocated(dev) - base) / 2 ** 20


def speed(dev):
    rows = []
    for T in (8192, 32768):
        q, k, v, valid = peaked_inputs(T, dev, torch.bfloat16, False, hq=HQ, hkv=HKV)
        with torch.no_grad():
            base_ms, base_mib = _measure(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                                enable_gqa=True), dev)
            rows.append(["speed", f"SDPA {T}", f"{base_ms:.1f} ms, {base_mib:.0f} MiB", "baseline", "ok"])
            for name, (spec, bits, lengths) in SPEED.items():
                if T not in lengths:
                    continue
                hasher = build_hasher("simhash", bits, D, HKV, 1, 0, 0) if bits else None
                ms, mib = _measure(lambda: sparse_attention_counts(q, k, v, valid, spec=spec, hasher=hasher,
                                                                   all_valid=True), dev)
                x = base_ms / ms
                target = T == 32768 and spec.engine == "flex"
                rows.append(["speed", f"{name} {T}", f"{ms:.1f} ms ({x:.1f}x SDPA), {mib:.0f} MiB",
                             ">= 5x SDPA" if target else "-", _ok(x >= 5 or not target, "MISS")])
        del q, k, v
        torch.cuda.empty_cache()
    return rows


# ----------------------------------------------------------------------------- end to end
def e2e(dev):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from lsh_bitnet import config as _schemas  # noqa: F401  (ConfigStore schemas)
    from lsh_bitnet.run.runner import run
    from lsh_bitnet.run.sweep import register_resolvers

    register_resolvers()
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "text.txt"
        text.write_text(" ".join(f"Sentence {i} is about the river near town {i % 7}." for i in range(300)))
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[
                "model=tiny_bitnet", f"model.device={dev}", "attention=lsh", "hasher.n_bits=4", "attention.n_tables=2",
                "dataset=text_file", f"dataset.path={text}", "metric=perplexity", "eval.seq_len=256",
                "eval.max_batches=2", "eval.progress=false", "resume=false"])
        record = run(cfg, output_dir=Path(tmp) / "run")
    info, ppl = record["model_info"], record["metrics"].get("perplexity")
    peak = record["memory"]["peak_accelerator_bytes"]
    good = (ppl is not None and math.isfinite(ppl) and info["device"] == str(dev) and info["dtype"] == "bfloat16"
            and peak and record["cost"]["comparisons"] > 0)
    return [["e2e", f"tiny_bitnet lsh model.device={dev}",
             f"ppl {ppl:.1f}, {info['dtype']} on {info['device']}, peak {peak / 2 ** 20:.0f} MiB" if good else
             f"ppl {ppl}, {info.get('dtype')} on {info.get('device')}, peak {peak}", "finite, bf16, peak read", _ok(good)]]
