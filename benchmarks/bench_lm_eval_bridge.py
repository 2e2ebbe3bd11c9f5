"""The lm-eval bridge's overhead: metric=lm_eval's evaluation (our loaded model patched with attention=full,
through CountingHFLM, results and per-document records converted) against a plain lm-eval `hf` run (HFLM
loading the same checkpoint itself), same task, same documents, side by side in one process
(docs/BENCHMARKS.md, "lm-eval bridge overhead"). A third arm, lm-eval's HFLM on our loaded model left
unpatched (`hf_ours`), separates the adapter's own cost from differences between two loads of the weights.

    nice python benchmarks/bench_lm_eval_bridge.py --task lsh_lastword --limit 20 --repeats 3

After one untimed run of each (first calls pay one-off costs), each round times both, in alternating order
so that load drifting on a shared machine hits them alike; the task index is built once before (both runs
share it). Reported: seconds per round, the median of each and
the ratio of medians (target <= 1.10), in wall seconds and in the process's CPU seconds (on a shared machine
the CPU seconds leave out the time spent waiting for a core), and the check that both scored the same.
"""
import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="lsh_lastword")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="smollm2_135m", help="a model= option (its converted HF directory)")
    parser.add_argument("--json", type=Path, default=None, help="also write the timings here")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default torch's); 1 on a shared machine: the CPU seconds are then the "
                             "work done, without other threads' spin-waiting")
    args = parser.parse_args()

    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from omegaconf import OmegaConf

    from lsh_bitnet.attention import patch_model
    from lsh_bitnet.bridges.lm_eval import BUNDLED_TASKS, task_manager
    from lsh_bitnet.models import load_model_cached
    from lsh_bitnet.run.runner import default_cache_dir
    from lsh_bitnet.tasks._lm_eval import evaluate_lm_eval
    from tests.conftest import compose_config

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = compose_config([f"model={args.model}", "attention=full", "metric=lm_eval", f"metric.tasks=[{args.task}]",
                          f"metric.limit={args.limit}"])
    loaded = load_model_cached(cfg.model, default_cache_dir(cfg))
    path = loaded.info["cache_path"]
    plain_lm = HFLM(pretrained=str(path), dtype="float32", device="cpu", batch_size=1)
    manager = task_manager([str(BUNDLED_TASKS)], {"seed": int(cfg.seed)}, defaults=False)

    def plain():
        return simple_evaluate(model=plain_lm, tasks=[args.task], limit=args.limit, task_manager=manager,
                               log_samples=True)

    same_lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=1)  # our weights, unpatched

    def plain_same_model():
        return simple_evaluate(model=same_lm, tasks=[args.task], limit=args.limit, task_manager=manager,
                               log_samples=True)

    def bridge():
        patch = patch_model(loaded.model, cfg.attention, cfg.hasher)
        try:
            return evaluate_lm_eval(loaded.model, loaded.tokenizer, manager, cfg.metric, cfg.eval, seed=cfg.seed)
        finally:
            patch.unpatch()

    arms = [("plain", plain), ("hf_ours", plain_same_model), ("bridge", bridge)]
    load_before = os.getloadavg()  # (1, 5, 15 min): a shared machine's load, reported beside the ratios
    for _, fn in arms:  # untimed: first calls pay one-off costs (imports, allocator, lm-eval's caches)
        fn()
    times = {name: [] for name, _ in arms}
    cpu = {name: [] for name, _ in arms}  # process CPU seconds: what the run itself spent, waiting excluded
    outputs = {}
    for round_ in range(args.repeats):
        for name, fn in arms if round_ % 2 == 0 else arms[::-1]:
            started, started_cpu = time.perf_counter(), time.process_time()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - started_cpu)
    ours, theirs = outputs["bridge"], outputs["plain"]["results"][args.task]
    same = all(ours["tasks"][args.task].get(k.split(",")[0]) == v for k, v in theirs.items()
               if k.split(",")[0] in ours["tasks"][args.task] and "_stderr" not in k)
    print(f"lm-eval {args.task}, {args.limit} documents, {args.model}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    summary = {"same": same, "task": args.task, "limit": args.limit, "model": args.model,
               "threads": torch.get_num_threads(), "load_before": load_before, "load_after": os.getloadavg()}
    for label, table in (("wall", times), ("cpu", cpu)):
        medians = {k: statistics.median(v) for k, v in table.items()}
        for name, values in table.items():
            print(f"  {label:4s} {name:7s} " + " ".join(f"{v:7.2f}s" for v in values)
                  + f"   median {medians[name]:7.2f}s")
        summary[label] = {"seconds": table}
        for base in ("plain", "hf_ours"):
            per_round = [b / p for b, p in zip(table["bridge"], table[base])]
            ratio = medians["bridge"] / medians[base]
            print(f"  {label:4s} bridge / {base}: {ratio:.3f} (medians); per round "
                  f"{', '.join(f'{r:.3f}' for r in per_round)}")
            summary[label][f"bridge/{base}"] = {"ratio": ratio, "per_round": per_round}
    print(f"  same metrics: {same}; load average {load_before} before, {summary['load_after']} after")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
