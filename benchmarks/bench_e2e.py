"""SmolLM2-135M perplexity forwards end to end, all 30 layers patched: each setting against attention=full,
side by side in one process (docs/BENCHMARKS.md, "End to end").

    nice python benchmarks/bench_e2e.py --text PATH/wikitext-2/valid.txt --seq-lens 4096,8192 --windows 1

For every seq_len: every flex setting first runs one warm-up forward (it compiles the flex graphs of that
padded shape; reported as compile_s, the engine's own timing: a graph's first call, less its second where the
warm-up ran it twice), then `--repeats` rounds time one forward per window and setting, settings interleaved
within a round so that load drifting on a shared machine hits them alike. Reported per setting: steady seconds
(sum over windows, best round), the ratio to full, the comparison ratio, the mean NLL over the windows (the
same for engines of the same variant), and the growth of the peak RSS during its timed forwards above the RSS
before them (VmHWM reset through /proc/self/clear_refs, Linux).
"""
import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"  # the offline default model's weights (conf/model/smollm2_135m.yaml)
HASHER = {"name": "simhash", "n_bits": 8, "seed": 0}  # lsh settings: 8-bit SimHash (forest: max_depth bits)
SETTINGS = {  # name -> attention config for patch_model (every layer patched)
    "full": {"name": "full"},
    "window_flex": {"name": "window", "sink_tokens": 4, "local_window": 256, "engine": "flex"},
    "window_masked": {"name": "window", "sink_tokens": 4, "local_window": 256, "engine": "masked"},
    # comparison ratio 0.035 at 4096 tokens (<= 0.10): one 8-bit table, 4 sinks and a 64-token window
    "lsh8_flex": {"name": "lsh", "n_tables": 1, "sink_tokens": 4, "local_window": 64, "engine": "flex"},
    "lsh8_masked": {"name": "lsh", "n_tables": 1, "sink_tokens": 4, "local_window": 64, "engine": "masked"},
    "forest_flex": {"name": "lsh_forest", "n_trees": 2, "max_depth": 12, "min_candidates": 64, "sink_tokens": 4,
                    "local_window": 64, "engine": "flex"},
    "forest_masked": {"name": "lsh_forest", "n_trees": 2, "max_depth": 12, "min_candidates": 64, "sink_tokens": 4,
                      "local_window": 64, "engine": "masked"},
}


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(field)


def windows_of(tok, text: str, seq_len: int, n: int) -> torch.Tensor:
    """(n, seq_len) token ids: the first n non-overlapping windows of the text."""
    ids = tok(Path(text).read_text()[: seq_len * n * 8], return_tensors="pt").input_ids[0]
    if ids.numel() < seq_len * n:
        raise SystemExit(f"{text}: {ids.numel()} tokens, fewer than {n} windows of {seq_len}")
    return ids[: seq_len * n].view(n, seq_len)


def forward(model, patch_cfg, windows):
    """One forward per window under a fresh patch: (seconds, mean NLL, comparison ratio, compile_s, RSS growth)."""
    from lsh_bitnet.attention import patch_model

    patch = patch_model(model, patch_cfg, HASHER)
    try:
        base = rss_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
        took, nll = 0.0, 0.0
        for w in windows:
            start = time.perf_counter()
            out = model(w[None], labels=w[None])
            took += time.perf_counter() - start
            nll += out.loss.item() / len(windows)
        grown = (rss_kib("VmHWM") - base) * 1024
        return took, nll, patch.cost_summary()["comparison_ratio"], patch.timing_summary()["compile_s"], grown
    finally:
        patch.unpatch()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", required=True, help="plain text, e.g. wikitext-2/valid.txt")
    ap.add_argument("--seq-lens", default="4096,8192")
    ap.add_argument("--windows", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--settings", default="full,window_flex,lsh8_flex", help=f"from {','.join(SETTINGS)}")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = args.settings.split(",")
    if names[0] != "full":
        raise SystemExit("--settings must start with full (the reference)")

    from lsh_bitnet.config import ModelConfig
    from lsh_bitnet.models import load_model

    cache = Path(os.environ.get("LSH_BITNET_CACHE", "~/.cache/lsh_bitnet")).expanduser()
    loaded = load_model(ModelConfig(name="smollm2_135m", gguf_file=GGUF_FILE, device="cpu"), cache)
    model, tok = loaded.model.eval(), loaded.tokenizer
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, model loaded, RSS "
          f"{rss_kib('VmRSS') / 2**20:.2f} GiB", flush=True)
    for T in (int(x) for x in args.seq_lens.split(",")):
        windows = windows_of(tok, args.text, T, args.windows)
        warm, best, res = {}, {}, {}
        with torch.no_grad():
            for name in names:  # warm-up: compiles flex graphs of this shape (full and masked compile nothing)
                if SETTINGS[name].get("engine") == "flex":
                    took, _, _, compile_s, _ = forward(model, SETTINGS[name], windows[:1])
                    warm[name] = (took, compile_s)
                    print(f"T={T} warm-up {name}: {took:.1f} s (compile_s {compile_s:.1f})", flush=True)
            for rep in range(args.repeats):
                for name in names:
                    r = forward(model, SETTINGS[name], windows)
                    print(f"T={T} round {rep} {name}: {r[0]:.1f} s, nll {r[1]:.4f}, ratio {r[2]:.4f} "
                          f"(load {os.getloadavg()[0]:.1f})", flush=True)
                    if name not in best or r[0] < best[name]:
                        best[name] = r[0]
                    res[name] = r
        print(f"\nSmolLM2-135M, eval.seq_len={T}, {args.windows} window(s), all 30 layers patched, best of "
              f"{args.repeats} (load {os.getloadavg()[0]:.1f})")
        print(f"{'setting':<14} {'warmup_s':>8} {'compile_s':>9} {'steady_s':>9} {'x full':>7} {'comp_ratio':>10} "
              f"{'nll':>8} {'peak_rss+':>10}")
        for name in names:
            w_s, c_s = warm.get(name, (0.0, 0.0))
            _, nll, ratio, _, grown = res[name]
            print(f"{name:<14} {w_s:>8.1f} {c_s:>9.1f} {best[name]:>9.1f} {best[name] / best['full']:>7.3f} "
                  f"{ratio:>10.4f} {nll:>8.4f} {grown / 2**30:>8.3f} GiB", flush=True)


if __name__ == "__main__":
    main()
