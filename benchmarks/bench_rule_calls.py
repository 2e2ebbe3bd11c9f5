"""One attention call per rule against attention=full's, on the model's own queries and keys (minutes, not hours).

    python benchmarks/bench_rule_calls.py --seq-len 4096 --layers 3,15,27 --rounds 3

The rules of benchmarks/bench_rules.py (the conf/variant presets, centred ones with the runner's calibration
centers). Queries, keys and values are captured from one SmolLM2-135M forward over the first --seq-len tokens of
--text (the layers given); each rule's call is then timed on them with `sparse_attention_counts` (the engine
`auto` picks), interleaved with full attention's call (stock SDPA, causal) on the same tensors: full, rule,
full, ... per layer and round. Ratio: a rule's CPU time over the mean of the two full calls around it, median
over layers and rounds. 1 thread. A forward's ratio is diluted by the rest of the model (bench_rules.py); this
one says what the attention call itself costs, and runs in a few minutes.
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_rules import DEFAULT_TEXT, ENGINES, RULES, compose, overrides_of, preset_of, unit_ppl  # noqa: E402


def capture(model, ids, layers):
    """{layer: (query, key, value)} of one forward (stock attention, through the patched interface)."""
    from lsh_bitnet.attention import patch_model, registry

    saved, calls = {}, [0]
    real = registry.sparse_attention_counts

    def hook(query, key, value, key_valid, **kw):
        if calls[0] in layers:
            saved[calls[0]] = (query.clone(), key.clone(), value.clone())
        calls[0] += 1
        return real(query, key, value, key_valid, **kw)

    registry.sparse_attention_counts = hook
    patch = patch_model(model, {"name": "full"}, None)
    try:
        with torch.inference_mode():
            model(ids)
    finally:
        patch.unpatch()
        registry.sparse_attention_counts = real
    return saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--layers", default="3,15,27")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rules", default=",".join(RULES), help=f"from {','.join(list(RULES) + list(ENGINES))}")
    ap.add_argument("--text", type=Path, default=DEFAULT_TEXT)
    args = ap.parse_args()
    torch.set_num_threads(1)
    names = [n for n in args.rules.split(",") if n]
    layers = [int(x) for x in args.layers.split(",")]

    from lsh_bitnet.attention.centering import centers_for_run
    from lsh_bitnet.attention.kernel import sparse_attention_counts
    from lsh_bitnet.attention.spec import SparseSpec, typed_hasher
    from lsh_bitnet.models import load_model_cached
    from lsh_bitnet.registry import HASHERS

    overrides, _ = unit_ppl(args.text, args.seq_len)
    cfgs = {n: compose(overrides + overrides_of(n)) for n in names}
    cache_dir = Path(os.environ.get("LSH_BITNET_CACHE", "~/.cache/lsh_bitnet")).expanduser()
    loaded = load_model_cached(compose(overrides).model, cache_dir)
    model, tok = loaded.model.eval(), loaded.tokenizer
    ids = tok(args.text.read_text()[: args.seq_len * 8], return_tensors="pt").input_ids[:, :args.seq_len]
    qkv = capture(model, ids, layers)
    T = ids.shape[1]
    valid = torch.ones(1, T, dtype=torch.bool)

    def setup(name, layer):
        cfg = cfgs[name]
        spec = SparseSpec.from_config(cfg.attention)
        hasher = None
        if spec.hashed:
            hcfg = typed_hasher(cfg.hasher)
            bits, tables = spec.hash_shape
            _, Hkv, _, D = qkv[layer][1].shape
            hasher = HASHERS.get(hcfg.name).from_config(hcfg, int(bits or hcfg.n_bits), D, Hkv, int(tables), layer)
            hasher.center = hcfg.center
            if hcfg.center == "calibration":
                hasher.mu = centers_for_run(cfg, loaded, cache_dir)[layer].float()
        return spec, hasher

    specs = {(n, layer): setup(n, layer) for n in names for layer in layers}
    full_spec = SparseSpec("full")

    def call(spec, hasher, layer):
        q, k, v = qkv[layer]
        start = time.process_time()
        with torch.inference_mode():
            _, counts = sparse_attention_counts(q, k, v, valid, spec=spec, hasher=hasher, all_valid=True,
                                                layer_idx=layer)
        return time.process_time() - start, counts

    for name in names:  # warm-up: the native kernels' build, a flex engine's compilation
        call(*specs[(name, layers[0])], layers[0])
    print(f"one attention call, T={T}, layers {layers}, {args.rounds} round(s), threads=1, torch {torch.__version__}, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    ratios = {n: [] for n in names}
    seconds = {n: [] for n in ["full"] + names}
    comp = {}
    for r in range(args.rounds):
        for layer in layers:
            before, _ = call(full_spec, None, layer)
            for name in names:
                took, counts = call(*specs[(name, layer)], layer)
                after, _ = call(full_spec, None, layer)
                ratios[name].append(took / ((before + after) / 2))
                seconds[name].append(took)
                seconds["full"].append(after)
                comp[name] = float(counts[0]) / float(counts[1])
                before = after
    med = statistics.median
    print(f"\n{'rule':<15} {'preset':<22} {'call_cpu_s':>10} {'x full':>7} {'comp_ratio':>10}   (load "
          f"{os.getloadavg()[0]:.1f})")
    print(f"{'full':<15} {'full':<22} {med(seconds['full']):>10.3f} {1.0:>7.2f}")
    for name in names:
        print(f"{name:<15} {preset_of(name):<22} {med(seconds[name]):>10.3f} {med(ratios[name]):>7.2f} "
              f"{comp[name]:>10.4f}", flush=True)


if __name__ == "__main__":
    main()
