"""Every rule's evaluation time against attention=full's, side by side in one process (issue 26 items 1, 2, 6).

    python benchmarks/bench_rules.py --task ppl --seq-len 1024 --rounds 3
    python benchmarks/bench_rules.py --task ppl --seq-len 4096 --rounds 3
    python benchmarks/bench_rules.py --task passkey --seq-len 4096 --rounds 2
    python benchmarks/bench_rules.py --task passkey --seq-len 8192 --rounds 1 --rules oracle,ltk_soft,forest

SmolLM2-135M-Instruct (the offline default model), float32, CPU, 1 thread (a shared machine: one thread per
process keeps the ratio from measuring the contention between threads). Each rule is its conf/variant preset,
composed as `launch.py +variant=NAME` composes it (centred presets get the runner's calibration centers).
One evaluation unit:
- `ppl`: one perplexity forward, `model(ids, labels=ids)`, over the first --seq-len tokens of --text;
- `passkey`: one passkey sample at --seq-len prompt tokens (dataset=passkey, sample 0, depth 0.1): the greedy
  generation of up to 8 tokens (metric=passkey_accuracy's max_new_tokens), prefill and decode steps.
Interleaved, so that load drifting on a shared machine hits both sides alike: full, rule 1, full, rule 2, ...,
full, round after round; a rule's ratio in a round is its time over the mean of the two full runs around it,
and the reported ratio is the median over rounds. Both the process's CPU time (time.process_time: what the
unit computes, little moved by other processes on a shared machine) and wall time are reported; the target
is judged on CPU time. Absolute seconds are comparable within one invocation only.
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# rule -> conf/variant preset (the settings of docs/FINDINGS.md and the long-context experiments)
RULES = {
    "window": "window_s4w240",
    "lsh_union": "bucket_bs4x4_sw",
    "lsh_m_of_l": "mp_k6_l64_m3_softmax",
    "ltk_soft": "ltk_soft_f07",
    "ltk_collisions": "ltk_collisions_f10",
    "oracle": "oracle10_sw",
    "forest": "forest_simhash_m16_sw",
    "lsh_probe": "work_saving_best",
}
# the same presets on a named engine (attention.engine; `auto` above), for --rules
ENGINES = {f"{rule}_{engine}": (rule, engine) for rule in ("window", "forest", "lsh_union") for engine in ("masked", "flex")}


def overrides_of(name: str):
    """conf overrides of a --rules name: its preset, and its engine for the ENGINES names."""
    rule, engine = ENGINES.get(name, (name, None))
    return [f"+variant={RULES[rule]}"] + ([f"attention.engine={engine}"] if engine else [])


def preset_of(name: str) -> str:
    rule, engine = ENGINES.get(name, (name, None))
    return RULES[rule] + (f" {engine}" if engine else "")
TARGET = {"forest": 2.0, "forest_masked": 2.0, "forest_flex": 2.0}  # issue 26: within 1.5x of full, forest 2x
DEFAULT_TEXT = REPO.parent / "shared" / "data" / "wikitext-2" / "valid.txt"


def compose(overrides):
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import lsh_bitnet.config  # noqa: F401  (registers the ConfigStore schemas)
    from lsh_bitnet.run.sweep import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def unit_ppl(text: Path, seq_len: int):
    """The dataset overrides and a function timing one perplexity forward (returns seconds, NLL)."""
    overrides = ["dataset=text_file", f"dataset.path={text}", "metric=perplexity", f"eval.seq_len={seq_len}"]

    def make(model, tokenizer):
        ids = tokenizer(text.read_text()[: seq_len * 8], return_tensors="pt").input_ids[:, :seq_len]
        if ids.shape[1] < seq_len:
            raise SystemExit(f"{text}: fewer than {seq_len} tokens")

        def run():
            return float(model(ids, labels=ids).loss)
        return run
    return overrides, make


def unit_passkey(seq_len: int):
    """One passkey sample at seq_len prompt tokens, generated greedily (returns seconds, correct)."""
    overrides = ["dataset=passkey", f"dataset.target_tokens={seq_len}", "dataset.n_samples=1",
                 "metric=passkey_accuracy", f"eval.seq_len={seq_len}"]

    def make(model, tokenizer):
        from lsh_bitnet.data.passkey import make_passkey_samples
        from lsh_bitnet.tasks._passkey import score_passkey
        from lsh_bitnet.tasks._synthetic import greedy_config

        cfg = compose(overrides)
        sample = make_passkey_samples(cfg.dataset, tokenizer, 0, 1)[0]
        gen = greedy_config(model, tokenizer, int(cfg.metric.max_new_tokens))

        def run():
            return float(score_passkey(model, tokenizer, sample, gen)["correct"])
        return run
    return overrides, make


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=("ppl", "passkey"), default="ppl")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rules", default=",".join(RULES), help=f"from {','.join(list(RULES) + list(ENGINES))}")
    ap.add_argument("--text", type=Path, default=DEFAULT_TEXT, help="plain text for --task ppl")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-warmup", dest="warmup", action="store_false", help="time each rule's first unit too")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = [n for n in args.rules.split(",") if n]

    from lsh_bitnet.attention import patch_model
    from lsh_bitnet.attention.centering import centers_for_run
    from lsh_bitnet.models import load_model_cached

    overrides, make = unit_ppl(args.text, args.seq_len) if args.task == "ppl" else unit_passkey(args.seq_len)
    cfgs = {"full": compose(overrides + ["+variant=full"])}
    cfgs.update({n: compose(overrides + overrides_of(n)) for n in names})
    cache_dir = Path(os.environ.get("LSH_BITNET_CACHE", "~/.cache/lsh_bitnet")).expanduser()
    loaded = load_model_cached(cfgs["full"].model, cache_dir)
    model = loaded.model.eval()
    centers = {n: centers_for_run(c, loaded, cache_dir) for n, c in cfgs.items()}
    run = make(model, loaded.tokenizer)

    def timed(name):
        """(CPU seconds, wall seconds, the unit's value, cost summary) of one unit under `name`'s patch."""
        patch = patch_model(model, cfgs[name].attention, cfgs[name].hasher, centers=centers[name])
        try:
            with torch.inference_mode():
                cpu, wall = time.process_time(), time.perf_counter()
                value = run()
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            return cpu, wall, value, patch.cost_summary()
        finally:
            patch.unpatch()

    print(f"task={args.task} T={args.seq_len} threads={torch.get_num_threads()} torch {torch.__version__} "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    timed("full")  # warm-up: allocator, caches, the native kernels' build
    if args.warmup:  # one untimed unit per rule: a flex engine compiles its graphs in its first call
        for name in names:
            timed(name)
    ratios = {n: {"cpu": [], "wall": []} for n in names}
    seconds = {n: {"cpu": [], "wall": []} for n in ["full"] + names}
    info = {}
    before = timed("full")
    for r in range(args.rounds):
        for name in names:
            cpu, wall, value, cost = timed(name)
            after = timed("full")
            for i, kind in enumerate(("cpu", "wall")):
                seconds[name][kind].append((cpu, wall)[i])
                seconds["full"][kind].append(after[i])
                ratios[name][kind].append((cpu, wall)[i] / ((before[i] + after[i]) / 2))
            info[name] = (value, cost["comparison_ratio"], cost.get("engine"))
            print(f"round {r} {name:<15} cpu {cpu:8.2f} s (full {before[0]:7.2f}/{after[0]:7.2f}) x {ratios[name]['cpu'][-1]:5.2f}"
                  f"   wall {wall:8.2f} s x {ratios[name]['wall'][-1]:5.2f}  (load {os.getloadavg()[0]:.1f})", flush=True)
            before = after
    value_name = "nll" if args.task == "ppl" else "correct"
    med = statistics.median
    print(f"\ntask={args.task} T={args.seq_len}, {args.rounds} round(s), threads={torch.get_num_threads()}, "
          f"load {os.getloadavg()[0]:.1f}; x full = median over rounds of time / mean of the full runs around it")
    print(f"{'rule':<15} {'preset':<22} {'cpu_s':>7} {'x full':>7} {'wall_s':>7} {'x full':>7} {'target':>7} "
          f"{'comp_ratio':>10} {value_name:>8} engine")
    print(f"{'full':<15} {'full':<22} {med(seconds['full']['cpu']):>7.2f} {1.0:>7.2f} "
          f"{med(seconds['full']['wall']):>7.2f} {1.0:>7.2f}")
    for name in names:
        value, comp, engine = info[name]
        x, xw = med(ratios[name]["cpu"]), med(ratios[name]["wall"])
        target = TARGET.get(name, 1.5)
        print(f"{name:<15} {preset_of(name):<22} {med(seconds[name]['cpu']):>7.2f} {x:>7.2f} {med(seconds[name]['wall']):>7.2f} "
              f"{xw:>7.2f} {'met' if x <= target else 'MISSED':>7} {comp:>10.4f} {value:>8.4f} {engine}", flush=True)


if __name__ == "__main__":
    main()
