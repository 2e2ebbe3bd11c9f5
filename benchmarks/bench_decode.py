"""Generation speed under dense prefill / sparse decode (attention.apply_to=decode; issue 26 item 4): decode tokens
per second of SmolLM2-135M after a prompt of T tokens, full attention against the rules, side by side in one process.

    nice python benchmarks/bench_decode.py --text PATH/wikitext-2/valid.txt --contexts 2048,4096,8192 --threads 1,2

Per context T: one dense prefill of the first T tokens of the text (every setting's prefill is full attention
under apply_to=decode, so it is shared), then per thread count and setting: patch the model, run two decode steps
that are not timed (in the first a hashed rule codes the T cached keys, what its prefill would have done; the
second is a decode step like the timed ones, where compiled code meets its shapes once), then time
`--new-tokens` greedy decode steps over the cache, and crop the cache back to T. Settings run in rounds
(`--repeats`, best round kept), interleaved so that load drifting on a shared machine hits them alike.
Reported per setting: decode tokens/s, the ratio to full's, attention's share of a decode step (the patch's
PhaseClock: attention calls over the model's forward), the decode comparison ratio, and for full the ceiling
1 / (1 - share): the speed-up a rule whose attention cost nothing would reach.

`--caches`: the KV cache the decode steps run on, `growable` (lsh_bitnet.models.kv_cache: new keys written into
spare capacity, what the tasks use) and/or `dynamic` (transformers' default, a `torch.cat` of the whole cache per
step and layer): each setting runs on each, side by side.
"""
import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"  # the offline default model's weights (conf/model/smollm2_135m.yaml)
SW = {"sink_tokens": 4, "local_window": 32}
WARMUP_STEPS = 2  # untimed decode steps per setting: the first codes the cached keys, the second is a decode step
SETTINGS = {  # name -> (attention config, hasher config); apply_to=decode is added to each
    "full": ({"name": "full"}, None),
    "window_s4w96": ({"name": "window", "sink_tokens": 4, "local_window": 96}, None),
    # lsh_topk by collisions (its key codes are cached from the prefill), 5% + 4 sinks + 32 local
    "ltk_coll_l32_f05": ({"name": "lsh_topk", "n_tables": 32, "score": "collisions", "fraction": 0.05, **SW},
                         {"name": "simhash", "n_bits": 8, "seed": 0}),
    "ltk_coll_l8_f05": ({"name": "lsh_topk", "n_tables": 8, "score": "collisions", "fraction": 0.05, **SW},
                        {"name": "simhash", "n_bits": 8, "seed": 0}),
    # the same with keys centred on the prompt's mean key (hasher.center=prompt, set from the cached prompt)
    "ltk_coll_l8_f05_pc": ({"name": "lsh_topk", "n_tables": 8, "score": "collisions", "fraction": 0.05, **SW},
                           {"name": "simhash", "n_bits": 8, "seed": 0, "center": "prompt"}),
    "ltk_coll_l32b6_f05_pc": ({"name": "lsh_topk", "n_tables": 32, "score": "collisions", "fraction": 0.05, **SW},
                              {"name": "simhash", "n_bits": 6, "seed": 0, "center": "prompt"}),
    "mp_k6_l32_m2_pc": ({"name": "lsh", "n_tables": 32, "min_collisions": 2, **SW},
                        {"name": "simhash", "n_bits": 6, "seed": 0, "center": "prompt"}),
    "mp_k6_l32_m3_pc": ({"name": "lsh", "n_tables": 32, "min_collisions": 3, **SW},
                        {"name": "simhash", "n_bits": 6, "seed": 0, "center": "prompt"}),
    # the soft score rehashes every key at every step (no code cache): 256 bits per key
    "ltk_soft_l32_f03": ({"name": "lsh_topk", "n_tables": 32, "score": "soft", "fraction": 0.03, **SW},
                         {"name": "simhash", "n_bits": 8, "seed": 0}),
    "mp_k6_l32_m2": ({"name": "lsh", "n_tables": 32, "min_collisions": 2, **SW},
                     {"name": "simhash", "n_bits": 6, "seed": 0}),
    "oracle_f05": ({"name": "oracle_topk", "fraction": 0.05, **SW}, None),
}


def prompt_of(tok, text: str, T: int) -> torch.Tensor:
    ids = tok(Path(text).read_text()[: T * 8], return_tensors="pt").input_ids[0]
    if ids.numel() < T + 1:
        raise SystemExit(f"{text}: {ids.numel()} tokens, fewer than {T + 1}")
    return ids[:T][None]  # (1, T)


@torch.inference_mode()
def decode_run(model, name, cache, last_logits, T: int, steps: int):
    """(tokens/s, attention share, decode comparison ratio) of `steps` greedy steps after WARMUP_STEPS untimed ones."""
    from lsh_bitnet.attention import patch_model
    from lsh_bitnet.tasks._synthetic import cache_kwarg

    kw = cache_kwarg(model)

    attention, hasher = SETTINGS[name]
    patch = patch_model(model, dict(attention, apply_to="decode"), hasher)
    try:
        if hasher is not None and hasher.get("center") == "prompt":  # mu as the patched prefill would set it
            for state, layer in zip(patch.states, cache.layers):
                keys = layer.keys[:, :, :T]
                state.hasher.set_prompt_center(keys, torch.ones(keys.shape[0], T, dtype=torch.bool))
        tok = last_logits.argmax(-1, keepdim=True)  # (1, 1)
        out = model(input_ids=tok, use_cache=True, **{kw: cache})  # untimed: codes the cached keys
        for _ in range(WARMUP_STEPS - 1):  # untimed: compiled code (packed.differing_tables) sees its shapes
            out = model(input_ids=out.logits[:, -1].argmax(-1, keepdim=True), use_cache=True, **{kw: _cache(out)})
        patch.reset()
        start = time.perf_counter()
        for _ in range(steps):
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
            out = model(input_ids=tok, use_cache=True, **{kw: _cache(out)})
        took = time.perf_counter() - start
        timing, cost = patch.timing_summary(), patch.cost_summary()
    finally:
        patch.unpatch()
        cache.crop(-(cache.get_seq_length() - T))  # back to the prompt (a negative crop removes that many)
    return steps / took, timing["decode_attention_share"], cost["comparison_ratio"]


def _growable_copy(model, cache):
    """The prefill's cache copied into a growable one (lsh_bitnet.models.kv_cache), layer by layer."""
    from lsh_bitnet.models.kv_cache import growable_cache

    grown = growable_cache(model)
    for i, layer in enumerate(cache.layers):
        grown.layers[i].update(layer.keys, layer.values)
    return grown


def _cache(out):
    return out["cache"] if "cache" in out.keys() else out["past_key_values"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", required=True, help="plain text, e.g. wikitext-2/valid.txt")
    ap.add_argument("--contexts", default="2048,4096,8192")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--settings", default="full,ltk_coll_l32_f05,ltk_coll_l8_f05,mp_k6_l32_m2,window_s4w96",
                    help=f"from {','.join(SETTINGS)}; the first must be full")
    ap.add_argument("--caches", default="growable", help="growable and/or dynamic (comma-separated)")
    args = ap.parse_args()
    caches = args.caches.split(",")
    if not set(caches) <= {"growable", "dynamic"}:
        raise SystemExit(f"--caches takes growable and/or dynamic (got {args.caches})")
    names = args.settings.split(",")
    if names[0] != "full":
        raise SystemExit("--settings must start with full (the reference)")
    threads = [int(x) for x in args.threads.split(",")]

    from lsh_bitnet.config import ModelConfig
    from lsh_bitnet.models import load_model

    cache_dir = Path(os.environ.get("LSH_BITNET_CACHE", "~/.cache/lsh_bitnet")).expanduser()
    loaded = load_model(ModelConfig(name="smollm2_135m", gguf_file=GGUF_FILE, device="cpu"), cache_dir)
    model, tok = loaded.model.eval(), loaded.tokenizer
    print(f"torch {torch.__version__}, model loaded, load {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for T in (int(x) for x in args.contexts.split(",")):
        ids = prompt_of(tok, args.text, T)
        torch.set_num_threads(max(threads))
        start = time.perf_counter()
        with torch.inference_mode():
            pre = model(input_ids=ids, use_cache=True)  # dense prefill, shared by every setting
        print(f"T={T}: prefill {time.perf_counter() - start:.1f} s at {max(threads)} threads", flush=True)
        kv = {kind: _cache(pre) if kind == "dynamic" else _growable_copy(model, _cache(pre)) for kind in caches}
        for n in threads:
            torch.set_num_threads(n)
            best = {}
            for rep in range(args.repeats):
                for kind in caches:
                    for name in names:
                        r = decode_run(model, name, kv[kind], pre.logits[:, -1], T, args.new_tokens)
                        print(f"T={T} threads={n} {kind} round {rep} {name}: {r[0]:.2f} tok/s, attention share "
                              f"{r[1]:.3f}, decode ratio {r[2]:.4f} (load {os.getloadavg()[0]:.1f})", flush=True)
                        if (kind, name) not in best or r[0] > best[kind, name][0]:
                            best[kind, name] = r
            for kind in caches:
                for name in names:
                    rows.append((T, n, kind, name, *best[kind, name], best[kind, name][0] / best[kind, "full"][0]))
        del pre, kv
    print(f"\nSmolLM2-135M, {args.new_tokens} decode steps after a dense prefill (attention.apply_to=decode), "
          f"best of {args.repeats}, load {os.getloadavg()[0]:.1f}")
    print("| context | threads | KV cache | setting | decode tok/s | x full | attention share | decode ratio | ceiling |")
    print("|---|---|---|---|---|---|---|---|---|")
    for T, n, kind, name, tps, share, ratio, x in rows:
        ceiling = f"{1 / (1 - share):.2f}x" if name == "full" and share is not None and share < 1 else ""
        print(f"| {T} | {n} | {kind} | {name} | {tps:.2f} | {x:.3f} | {share:.3f} | {ratio:.4f} | {ceiling} |",
              flush=True)


if __name__ == "__main__":
    main()
