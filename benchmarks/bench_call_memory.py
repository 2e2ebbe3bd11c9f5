"""Peak memory and time of one attention call per variant preset at a long prefill, SmolLM2-135M's shapes.

    python benchmarks/bench_call_memory.py --seq-len 8192 --variants full,window_s4w240,ltk_soft_f07

Why a call and not a model forward: a prefill runs its layers one after another and each call frees its
temporaries, so a model's peak is its forward without attention (weights, hidden states, the chunked
logits: docs/BENCHMARKS.md "End to end") plus the largest single call. One forward per variant at 8192
tokens costs minutes to tens of minutes here; one call costs seconds.

Each variant is composed exactly as `launch.py +variant=NAME` composes it (conf/variant/), and runs in its
own subprocess: query (1, 9, T, 64), key/value (1, 3, T, 64), random normal, float32, one call of the
engine `auto` picks, no grad. Reported: seconds, comparison ratio, and the peak RSS growth during the call
(ru_maxrss after minus the RSS before, Linux). `hasher.center=calibration` runs with a random mean key
(one subtraction per key: the same memory). Random keys collide less than real ones, so bucket rules
(lsh) count fewer candidates here than on the model; their masks are dense per query chunk either way.
"""
import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

HQ, HKV, HEAD_DIM = 9, 3, 64  # SmolLM2-135M: 9 query heads share 3 KV heads, head_dim 64
DEFAULT_VARIANTS = ("full,window_s4w240,oracle10_sw,bucket_bs4x4_sw,forest_simhash_m16_sw,mp_k6_l32_m2_softmax,"
                    "mp_k6_l64_m3_softmax,mp_k6_l32_m2,ltk_soft_f07,ltk_collisions_f10")


def compose_variant(name: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import lsh_bitnet.config  # noqa: F401  (registers the ConfigStore schemas)
    from lsh_bitnet.run.sweep import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=[f"+variant={name}"])


def child(name: str, seq_len: int) -> None:
    """Subprocess body: one call of variant `name`, printed as JSON."""
    from bench_e2e import rss_kib  # this folder's own helper (the script's folder is on sys.path)
    from lsh_bitnet.attention.hashers import build_hasher
    from lsh_bitnet.attention.kernel import sparse_attention_counts
    from lsh_bitnet.attention.spec import SparseSpec, typed_hasher

    cfg = compose_variant(name)
    spec = SparseSpec.from_config(cfg.attention)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, HQ, seq_len, HEAD_DIM, generator=gen)
    k, v = (torch.randn(1, HKV, seq_len, HEAD_DIM, generator=gen) for _ in range(2))
    valid = torch.ones(1, seq_len, dtype=torch.bool)
    hasher = None
    if spec.hashed:
        hcfg = typed_hasher(cfg.hasher)
        bits, tables = spec.hash_shape
        hasher = build_hasher(hcfg.name, int(bits or hcfg.n_bits), HEAD_DIM, HKV, int(tables), int(hcfg.seed), 0)
        hasher.center = hcfg.center
        if hcfg.center == "calibration":
            hasher.mu = torch.randn(HKV, HEAD_DIM, generator=gen)
    before = rss_kib("VmRSS:") * 1024
    with torch.no_grad():
        start = time.perf_counter()
        _, counts = sparse_attention_counts(q, k, v, valid, spec=spec, hasher=hasher)
        seconds = time.perf_counter() - start
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    print(json.dumps({"variant": name, "seconds": seconds, "ratio": float(counts[0]) / float(counts[1]),
                      "peak_growth_bytes": grown}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help="conf/variant preset names, comma-separated")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.seq_len)
    print(f"one attention call, T={args.seq_len}, query (1, {HQ}, T, {HEAD_DIM}), KV heads {HKV}, "
          f"threads={torch.get_num_threads()}")
    print(f"{'variant':<24} {'call_s':>8} {'comp_ratio':>11} {'peak_rss+':>11}")
    for name in [n for n in args.variants.split(",") if n]:
        out = subprocess.run([sys.executable, __file__, "--child", name, "--seq-len", str(args.seq_len)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            lines = out.stderr.strip().splitlines() or [f"exit code {out.returncode}"]
            print(f"{name:<24} failed: {next((x for x in lines if 'Error' in x), lines[-1])}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{name:<24} {r['seconds']:>8.2f} {r['ratio']:>11.4f} {r['peak_growth_bytes'] / 2**30:>7.3f} GiB",
              flush=True)


if __name__ == "__main__":
    main()
