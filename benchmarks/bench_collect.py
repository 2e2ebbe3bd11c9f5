"""How long the collector takes over a cluster-sized sweep, and how much memory (issue 26 item 5).

    python benchmarks/bench_collect.py --source multirun/quickstart --runs 1000,10000
    python benchmarks/bench_collect.py --source A --source B --runs 10000 --modes no-plot,group-plot

Makes the runs: every results.json under the --source directories (a handful of real runs, e.g. the
quickstart's; one per distinct job directory name) is copied, with its .hydra/ and samples.jsonl, over as
many seeds as it takes to reach --runs, into a temporary directory. Each copy gets its own `seed` and
`hasher.seed` and its metrics moved by a few parts in 10^4 (so that the seed is a swept key that changes
something, as in a real seed sweep; --identical keeps them as they were). Then each mode runs the collector
(`lsh_bitnet.report.collect.write_summary`) in a fresh process, which reports the seconds of the call (the
imports apart) and its peak RSS:
- `no-plot`: `lsh-bitnet-collect DIR --no-plot`;
- `plot`: with the Pareto plots;
- `group-plot`: `--group-seeds` with the plots (issue 26's second figure).
Targets (issue 26): 10,000 runs in <= 10 s without plots, <= 20 s with them, memory growing linearly.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODES = {"no-plot": {"plot": False, "group": False}, "plot": {"plot": True, "group": False},
         "group-plot": {"plot": True, "group": True}}
TARGET_S = {"no-plot": 10.0, "plot": 20.0, "group-plot": 20.0}  # at 10,000 runs

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from lsh_bitnet.report.collect import write_summary
imported = time.perf_counter() - t0
t0, c0 = time.perf_counter(), time.process_time()
write_summary(sys.argv[1], sys.argv[2], plot=sys.argv[3] == "1", group=sys.argv[4] == "1")
print(json.dumps({"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "import_s": imported,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def sources(dirs):
    """{job dir name: job dir} of every results.json under dirs; the first of a name wins."""
    found = {}
    for d in dirs:
        for path in sorted(Path(d).rglob("results.json")):
            found.setdefault(path.parent.name, path.parent)
    return found


def make_runs(jobs, n_runs: int, root: Path, identical: bool) -> int:
    """Copy the jobs over ceil(n_runs / len(jobs)) seeds under root; returns the number of runs made."""
    seeds = math.ceil(n_runs / len(jobs))
    records = {name: json.loads((d / "results.json").read_text()) for name, d in jobs.items()}
    made = 0
    for seed in range(seeds):
        for num, (name, job) in enumerate(sorted(jobs.items())):
            out = root / f"{seed * len(jobs) + num}_{name},seed={seed}"
            out.mkdir(parents=True)
            rec = json.loads(json.dumps(records[name]))  # a deep copy
            config = rec.get("config") or {}
            config["seed"] = seed
            if isinstance(config.get("hasher"), dict):
                config["hasher"]["seed"] = seed
            if not identical and isinstance(rec.get("metrics"), dict):
                jitter = 1 + 1e-4 * ((seed * 7 + num) % 5 - 2)
                rec["metrics"] = {k: v * jitter if isinstance(v, float) else v for k, v in rec["metrics"].items()}
            (out / "results.json").write_text(json.dumps(rec, indent=1))
            for extra in ("samples.jsonl", ".hydra"):
                src = job / extra
                if src.is_dir():
                    shutil.copytree(src, out / extra)
                elif src.is_file():
                    shutil.copyfile(src, out / extra)
            made += 1
    return made


def run_mode(root: Path, out: Path, mode: str, repo: Path = REPO) -> dict:
    opts = MODES[mode]
    env = dict(os.environ, PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(root), str(out), str(int(opts["plot"])),
                           str(int(opts["group"]))], capture_output=True, text=True, env=env, cwd=str(repo))
    if proc.returncode:
        raise SystemExit(f"collector failed ({mode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def different_tables(a: Path, b: Path):
    """Names of the tables (.md, .csv) that differ between two collector outputs (byte for byte)."""
    names = sorted({p.name for d in (a, b) for p in d.iterdir() if p.suffix in (".md", ".csv")})
    return [n for n in names if not ((a / n).is_file() and (b / n).is_file()
                                      and (a / n).read_bytes() == (b / n).read_bytes())]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", action="append", type=Path, default=None,
                    help="a run or sweep directory with real results.json files (repeatable; default "
                         "multirun/quickstart, what `make quickstart` writes)")
    ap.add_argument("--runs", default="1000,10000", help="comma-separated run counts to make and collect")
    ap.add_argument("--modes", default="no-plot,group-plot", help=f"from {','.join(MODES)}")
    ap.add_argument("--repeats", type=int, default=1, help="collector calls per mode and size (median reported)")
    ap.add_argument("--identical", action="store_true", help="copies keep the source metrics unchanged")
    ap.add_argument("--keep", type=Path, default=None, help="make the runs here and keep them (default: a temp dir)")
    ap.add_argument("--before", type=Path, default=None, metavar="CHECKOUT",
                    help="also time the collector of another checkout (e.g. a worktree of main) on the same runs, "
                         "alternating with this one's, and check that both write the same tables")
    args = ap.parse_args()
    jobs = sources(args.source or [REPO / "multirun" / "quickstart"])
    if not jobs:
        raise SystemExit("no results.json under --source: run `make quickstart` or pass a sweep directory")
    modes = [m for m in args.modes.split(",") if m]
    print(f"sources: {len(jobs)} runs ({', '.join(sorted(jobs))}); load {os.getloadavg()[0]:.1f}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
    print(f"{'runs':>7} {'mode':<11} {'code':<6} {'wall_s':>8} {'cpu_s':>8} {'import_s':>8} {'peak_rss_MB':>11} "
          f"{'MB/1k runs':>10} target", flush=True)
    repos = [("this", REPO)] + ([("before", args.before.resolve())] if args.before else [])
    for n in (int(x) for x in args.runs.split(",") if x):
        base = args.keep or Path(tempfile.mkdtemp(prefix="bench_collect_"))
        root = base / f"runs_{n}"
        try:
            made = make_runs(jobs, n, root, args.identical)
            for mode in modes:
                results = {name: [] for name, _ in repos}
                for _ in range(args.repeats):  # alternating: load drifting on a shared machine hits both alike
                    for name, repo in repos:
                        results[name].append(run_mode(root, base / f"out_{n}_{mode}_{name}", mode, repo))
                for name, _ in repos:
                    res = sorted(results[name], key=lambda r: r["wall_s"])[(args.repeats - 1) // 2]
                    target = TARGET_S[mode]  # for 10,000 runs; smaller sets show how the time grows
                    verdict = ("met" if res["wall_s"] <= target else "MISSED") + f" (<= {target:.0f} s)" \
                        if made >= 10000 else "-"
                    print(f"{made:>7} {mode:<11} {name:<6} {res['wall_s']:>8.2f} {res['cpu_s']:>8.2f} "
                          f"{res['import_s']:>8.2f} {res['peak_rss_mb']:>11.0f} {res['peak_rss_mb'] / made * 1000:>10.1f} "
                          f"{verdict}", flush=True)
                if args.before:
                    differ = different_tables(base / f"out_{n}_{mode}_this", base / f"out_{n}_{mode}_before")
                    print(f"{'':>7} tables {'identical' if not differ else 'DIFFER: ' + ', '.join(differ)}", flush=True)
        finally:
            if args.keep is None:
                shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
