"""In-process caching: a 6-job basic-launcher sweep vs the same 6 jobs as separate processes.

Both sides run here, one after the other, in this invocation, so the ratio is meaningful on a noisy
machine (never compare the absolute seconds across invocations).

    python benchmarks/bench_sweep.py --text ../shared/data/wikitext-2/valid.txt

Prints: sweep wall time, the separate runs' total, the ideal "one load + 6 evaluations" built from the
separate runs' own load_s and eval_s, and the two ratios (the target: sweep <= 1.2x ideal).
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GRID = {"hasher.n_bits": ["2", "4", "8"], "attention.n_tables": ["1", "4"]}


def _launch(args, env_cache):
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "launch.py", *args, f"cache_dir={env_cache}", "eval.progress=false"],
                         cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"launch.py {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", required=True, help="a UTF-8 text file (e.g. WikiText-2 valid.txt)")
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--max-batches", type=int, default=4)
    parser.add_argument("--cache-dir", default=None, help="default: a fresh temp dir, warmed once first")
    args = parser.parse_args()

    common = [f"model={args.model}", "attention=lsh", "dataset=text_file", f"dataset.path={Path(args.text).resolve()}",
              "metric=perplexity", f"eval.seq_len={args.seq_len}", f"eval.max_batches={args.max_batches}"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = Path(args.cache_dir) if args.cache_dir else tmp / "cache"
        # Warm-up: converted weights and token cache on disk, so both sides load the same way.
        _launch(common + [f"hydra.run.dir={tmp}/warm"], cache)

        walls, loads, evals = [], [], []
        for n_bits in GRID["hasher.n_bits"]:
            for n_tables in GRID["attention.n_tables"]:
                run_dir = tmp / f"single_{n_bits}_{n_tables}"
                walls.append(_launch(common + [f"hasher.n_bits={n_bits}", f"attention.n_tables={n_tables}",
                                             f"hydra.run.dir={run_dir}"], cache))
                timing = json.loads((run_dir / "results.json").read_text())["timing"]
                loads.append(timing["load_s"])
                evals.append(timing["eval_s"])

        sweep = _launch(["-m", *common, *(f"{k}={','.join(v)}" for k, v in GRID.items()),
                         f"hydra.sweep.dir={tmp}/sweep"], cache)

    singles = sum(walls)
    # One process start + one load + 6 evaluations: the first single run whole, then 5 more evals.
    ideal = walls[0] + sum(evals[1:])
    print(f"6 separate runs (processes) : {singles:8.1f} s")
    print(f"one 6-job sweep (1 process) : {sweep:8.1f} s")
    print(f"ideal: 1 start+load, 6 evals: {ideal:8.1f} s   (load {loads[0]:.1f} s, evals {sum(evals):.1f} s,"
          f" from the separate runs)")
    print(f"sweep / separate runs       : {sweep / singles:8.2f}x")
    print(f"sweep / ideal               : {sweep / ideal:8.2f}x   (target <= 1.2x)")


if __name__ == "__main__":
    main()
