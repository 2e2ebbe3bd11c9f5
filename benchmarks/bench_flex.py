"""Attention alone at SmolLM2 shapes (9 query heads, 3 KV heads, d=64): each variant and engine against causal
SDPA, side by side in one process, next to its comparison ratio and the ideal speedup 1/ratio.

    python benchmarks/bench_flex.py --seq-lens 2048,4096,8192 --repeats 3
    python benchmarks/bench_flex.py --seq-lens 32768 --engines flex --memory      # + peak memory (Linux)
    python benchmarks/bench_flex.py --decode 8192                                 # one decode step vs a cache
    python benchmarks/bench_flex.py --e2e 4096 --repeats 1                        # SmolLM2 end to end

Random float32 q, k, v (so SimHash buckets are uniform); one attention call = one layer of one sequence.
Repeats interleave SDPA and every setting, best of --repeats. The first flex call of a shape compiles:
reported apart as first_s. Peak memory: growth of the peak RSS during one steady call above the inputs
(VmHWM reset through /proc/self/clear_refs), in a child process per setting.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lsh_bitnet.attention import SparseSpec, build_hasher  # noqa: E402
from lsh_bitnet.attention.kernel import sparse_attention_counts  # noqa: E402
from bench_e2e import rss_kib  # noqa: E402  (this folder's own helper: the script's folder is on sys.path)

HQ, HKV, D = 9, 3, 64
SETTINGS = {  # name -> (spec, hasher bits)
    "window": (SparseSpec("window", sink_tokens=4, local_window=256), 0),
    "lsh8": (SparseSpec("lsh", n_tables=1, sink_tokens=4, local_window=64), 8),
    "lsh8_t4": (SparseSpec("lsh", n_tables=4, sink_tokens=4, local_window=64), 8),
    # conf/attention/lsh_forest.yaml's trees (4 x 16 bits, 64 candidates) with 4 sinks and a 64-token window
    "forest": (SparseSpec("lsh_forest", n_trees=4, max_depth=16, min_candidates=64, sink_tokens=4, local_window=64),
               16),
}


def inputs(T: int, Q: int = None):
    g = torch.Generator().manual_seed(0)
    Q = T if Q is None else Q
    q = torch.randn(1, HQ, Q, D, generator=g)
    k, v = torch.randn(1, HKV, T, D, generator=g), torch.randn(1, HKV, T, D, generator=g)
    return q, k, v, torch.ones(1, T, dtype=torch.bool)


HASHERS = {}


def call(name, engine, q, k, v, valid):
    if name == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, is_causal=q.shape[2] > 1, enable_gqa=True), None
    spec, bits = SETTINGS[name]
    spec = SparseSpec(**{**spec.__dict__, "engine": engine})
    hasher, codes, reused = None, None, 0
    if bits:
        if name not in HASHERS:
            tables = spec.n_trees if spec.variant == "lsh_forest" else spec.n_tables
            HASHERS[name] = build_hasher("simhash", bits, D, HKV, tables, 0, 0)
        hasher = HASHERS[name]
        if q.shape[2] == 1:  # decode: the key-code cache holds the codes of the K - 1 cached keys
            K = k.shape[2]
            if (name, K) not in HASHERS:
                HASHERS[name, K] = hasher.codes(k[:, :, :K - 1])
            codes = torch.cat([HASHERS[name, K], hasher.codes(k[:, :, K - 1:])], 2)  # hash the new key only
            reused = K - 1
    return sparse_attention_counts(q, k, v, valid, spec=spec, hasher=hasher, engine=engine, key_codes=codes,
                                   reused_keys=reused)


def memory_child(name, engine, T):
    torch.set_num_threads(2)
    q, k, v, valid = inputs(T)
    with torch.no_grad():
        call(name, engine, q, k, v, valid)  # compile and warm up
        base = rss_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        call(name, engine, q, k, v, valid)
        peak = rss_kib("VmHWM")
    print(json.dumps({"grown_bytes": (peak - base) * 1024}))


E2E = {  # name -> attention config for patch_model (all layers patched)
    "full": {"name": "full"},
    "window_masked": {"name": "window", "sink_tokens": 4, "local_window": 256, "engine": "masked"},
    "window_flex": {"name": "window", "sink_tokens": 4, "local_window": 256, "engine": "flex"},
    "lsh8_flex": {"name": "lsh", "n_tables": 1, "sink_tokens": 4, "local_window": 64, "engine": "flex"},
}


def e2e(seq_len: int, repeats: int, text: str, names):
    """SmolLM2-135M forward over one window of real text, every layer patched: steady time and NLL."""
    from bench_attention import GGUF_FILE

    from lsh_bitnet.attention import patch_model
    from lsh_bitnet.config import ModelConfig
    from lsh_bitnet.models import load_model

    cache = Path(os.environ.get("LSH_BITNET_CACHE", "~/.cache/lsh_bitnet")).expanduser()
    loaded = load_model(ModelConfig(name="smollm2_135m", gguf_file=GGUF_FILE, device="cpu"), cache)
    model, tok = loaded.model.eval(), loaded.tokenizer
    ids = tok(Path(text).read_text()[: seq_len * 8], return_tensors="pt").input_ids[:, :seq_len]
    assert ids.shape[1] == seq_len, "text too short"
    hasher = {"name": "simhash", "n_bits": 8, "seed": 0}
    best, first, nll, ratio, compile_s = {}, {}, {}, {}, {}
    with torch.no_grad():
        for rep in range(repeats + 1):  # rep 0: first calls (compilation)
            for name in names:
                patch = patch_model(model, E2E[name], hasher)
                try:
                    start = time.perf_counter()
                    out = model(ids, labels=ids)
                    took = time.perf_counter() - start
                    if rep == 0:
                        first[name], nll[name] = took, out.loss.item()
                        ratio[name] = patch.cost_summary()["comparison_ratio"]
                        compile_s[name] = patch.timing_summary()["compile_s"]
                    else:
                        best[name] = min(best.get(name, 1e9), took)
                finally:
                    patch.unpatch()
    print(f"\nSmolLM2-135M, one window of {seq_len} tokens, all 30 layers patched (best of {repeats}; "
          f"load {os.getloadavg()[0]:.1f})")
    print(f"{'setting':<14} {'first_s':>8} {'compile_s':>9} {'steady_s':>9} {'x full':>7} {'comp_ratio':>10} {'nll':>8}")
    for name in names:
        print(f"{name:<14} {first[name]:>8.2f} {compile_s[name]:>9.2f} {best[name]:>9.2f} "
              f"{best[name] / best['full']:>7.3f} {ratio[name]:>10.4f} {nll[name]:>8.4f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq-lens", default="2048,4096,8192")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--engines", default="masked,flex")
    ap.add_argument("--masked-max", type=int, default=8192, help="skip the masked engine above this length")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--decode", type=int, default=0, help="cache length for one decode step (0: prefill table); "
                    "keys hashed earlier come from a key-code cache as in generation (codecache.py)")
    ap.add_argument("--e2e", type=int, default=0, help="SmolLM2 end to end at this eval.seq_len instead")
    ap.add_argument("--text", default="../shared/data/wikitext-2/valid.txt")
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.e2e:
        torch.set_num_threads(args.threads)
        return e2e(args.e2e, args.repeats, args.text, list(E2E))
    if args.memory_child:
        name, engine, T = args.memory_child.split(":")
        return memory_child(name, engine, int(T))
    torch.set_num_threads(args.threads)
    print(f"threads={torch.get_num_threads()} load={os.getloadavg()[0]:.1f} torch={torch.__version__}")
    runs = [(s, e) for s in args.settings.split(",") for e in args.engines.split(",")]
    lens = [args.decode] if args.decode else [int(x) for x in args.seq_lens.split(",")]
    for T in lens:
        q, k, v, valid = inputs(T, 1 if args.decode else None)
        todo = [("sdpa", "-")] + [(s, e) for s, e in runs if e == "flex" or T <= args.masked_max or args.decode]
        best, first, ratio = {}, {}, {}
        with torch.no_grad():
            for key in todo:  # first calls (compilation for flex), timed apart
                start = time.perf_counter()
                _, counts = call(*key, q, k, v, valid)
                first[key] = time.perf_counter() - start
                ratio[key] = 1.0 if counts is None else (counts[0] / counts[1]).item()
            for _ in range(args.repeats):
                for key in todo:
                    start = time.perf_counter()
                    call(*key, q, k, v, valid)
                    best[key] = min(best.get(key, 1e9), time.perf_counter() - start)
        sd = best["sdpa", "-"]
        label = f"decode step, cache {T}" if args.decode else f"T={T}"
        print(f"\n{label}  (best of {args.repeats}; load {os.getloadavg()[0]:.1f})")
        print(f"{'setting':<10} {'engine':<7} {'first_s':>8} {'steady_s':>9} {'x sdpa':>7} {'comp_ratio':>10} "
              f"{'ideal 1/r':>9} {'speedup':>8} {'of ideal':>8}")
        for key in todo:
            s, r = best[key], ratio[key]
            print(f"{key[0]:<10} {key[1]:<7} {first[key]:>8.2f} {s:>9.4f} {s / sd:>7.3f} {r:>10.4f} {1 / r:>9.1f} "
                  f"{sd / s:>8.2f} {(sd / s) * r:>8.2f}")
        if args.memory and not args.decode:
            q_bytes = sum(x.numel() * x.element_size() for x in (q, k, v))
            for key in todo:
                if key[0] == "sdpa":
                    continue
                out = subprocess.run([sys.executable, __file__, "--memory-child", f"{key[0]}:{key[1]}:{T}"],
                                     capture_output=True, text=True, check=True)
                grown = json.loads(out.stdout.strip().splitlines()[-1])["grown_bytes"]
                print(f"peak memory {key[0]}/{key[1]} T={T}: +{grown / 2**30:.3f} GiB above the inputs "
                      f"({q_bytes / 2**30:.3f} GiB of q, k, v)")


if __name__ == "__main__":
    main()
