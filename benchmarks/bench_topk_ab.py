"""One attention call per rule with another checkout's `attention/topk.py` against this one's, alternating, in one
process (issue 26 item 1: a selection change measured where it acts, and checked to give the same output).

    python benchmarks/bench_topk_ab.py --before /path/to/main --seq-len 4096 --rules oracle,ltk_soft --rounds 4

Queries, keys and values of one layer (--layer) come from a SmolLM2-135M forward over the first --seq-len tokens
of --text (bench_rule_calls.capture; cached in --cache). Each round calls the rule with the old and the new
`top_k_mask` (order alternating by round) and stock SDPA after each; medians of CPU time, 1 thread. `identical`:
outputs and counts of the two equal to the bit.
"""
import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_rule_calls import capture  # noqa: E402
from bench_rules import DEFAULT_TEXT, compose, overrides_of, unit_ppl  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True, help="a checkout whose lsh_bitnet/attention/topk.py is 'old'")
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--rules", default="oracle,ltk_soft")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--text", type=Path, default=DEFAULT_TEXT)
    ap.add_argument("--cache", type=Path, default=None, help="q/k/v cache file (default: none)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import lsh_bitnet.attention.topk as topk
    from lsh_bitnet.attention.centering import centers_for_run
    from lsh_bitnet.attention.kernel import sparse_attention_counts
    from lsh_bitnet.attention.spec import SparseSpec, typed_hasher
    from lsh_bitnet.models import load_model_cached
    from lsh_bitnet.registry import HASHERS

    spec_ = importlib.util.spec_from_file_location("topk_before", args.before / "lsh_bitnet/attention/topk.py")
    before = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(before)
    fns = {"old": before.top_k_mask, "new": topk.top_k_mask}
    overrides, _ = unit_ppl(args.text, args.seq_len)
    cache_dir = Path("~/.cache/lsh_bitnet").expanduser()
    loaded = load_model_cached(compose(overrides).model, cache_dir)
    if args.cache is not None and args.cache.exists():
        q, k, v = torch.load(args.cache)
    else:
        ids = loaded.tokenizer(args.text.read_text()[: args.seq_len * 8], return_tensors="pt").input_ids[:, :args.seq_len]
        q, k, v = capture(loaded.model.eval(), ids, [args.layer])[args.layer]
        if args.cache is not None:
            torch.save((q, k, v), args.cache)
    T, layer = q.shape[2], args.layer
    valid = torch.ones(1, T, dtype=torch.bool)

    def setup(name):
        cfg = compose(overrides + overrides_of(name))
        spec, hasher = SparseSpec.from_config(cfg.attention), None
        if spec.hashed:
            hcfg = typed_hasher(cfg.hasher)
            bits, tables = spec.hash_shape
            hasher = HASHERS.get(hcfg.name).from_config(hcfg, int(bits or hcfg.n_bits), q.shape[-1], k.shape[1],
                                                        int(tables), layer)
            hasher.center = hcfg.center
            if hcfg.center == "calibration":
                hasher.mu = centers_for_run(cfg, loaded, cache_dir)[layer].float()
        return spec, hasher

    def call(spec, hasher):
        with torch.inference_mode():
            start = time.process_time()
            out, counts = sparse_attention_counts(q, k, v, valid, spec=spec, hasher=hasher, all_valid=True,
                                                  layer_idx=layer)
            return time.process_time() - start, out, counts

    full = SparseSpec("full")
    print(f"T={T} layer {layer}, {args.rounds} rounds, 1 thread, torch {torch.__version__}", flush=True)
    for name in (n for n in args.rules.split(",") if n):
        spec, hasher = setup(name)
        seconds, outs = {"old": [], "new": [], "full": []}, {}
        for r in range(args.rounds):
            for which in (("old", "new") if r % 2 == 0 else ("new", "old")):
                topk.top_k_mask = fns[which]
                took, out, counts = call(spec, hasher)
                seconds[which].append(took)
                outs[which] = (out, counts)
                seconds["full"].append(call(full, None)[0])
        topk.top_k_mask = fns["new"]
        same = all(torch.equal(a, b) for a, b in zip(outs["old"], outs["new"]))
        m = {w: statistics.median(s) for w, s in seconds.items()}
        print(f"{name:<10} full {m['full']:.3f} s   old {m['old']:.3f} s (x{m['old'] / m['full']:.2f} full)   new "
              f"{m['new']:.3f} s (x{m['new'] / m['full']:.2f} full)   new/old {m['new'] / m['old']:.3f}   "
              f"identical={same}", flush=True)


if __name__ == "__main__":
    main()
