"""The GPU check (issue 29): what a CUDA run depends on, in one table, in at most 10 minutes on one H100.

    python benchmarks/gpu_check.py [--device cuda:0] [--dry] [--strict] [--skip tests,e2e]
    make gpu-check

Stages (benchmarks/gpu_stages.py), each giving rows (stage, case, value, target, status):
  tests     the CUDA tests (tests/test_cuda.py, tests/test_attention_flex.py -k cuda)
  sdpa      the SDPA kernel full attention gets (GQA 20/5 heads, D=128, 4096 tokens) in float32 and bfloat16
  accuracy  flex (lse merge) and masked in float32/bfloat16 against a float64 masked reference, D=128, on
            ordinary and peaked scores (a sink key ~25 nats above the self key); counts must be identical; the
            first call of each dtype is the flex compile (seconds)
  syncs     host syncs per layer (torch.cuda.set_sync_debug_mode) in a 2048-token prefill and a decode step
            of a 2-layer model, for window, lsh (masked, flex), lsh_topk, oracle_topk, sampling
  speed     one attention call at 8k and 32k tokens (BitNet 2B4T heads: 20/5, D=128, bfloat16): SDPA against
            window and 1-table lsh on flex (and lsh masked at 8k): milliseconds and peak MiB
  e2e       `run` on tiny_bitnet with model.device=cuda:0 (dtype auto): finite perplexity, device and peak memory
Status: ok; FAIL, a wrong result (exit 1); MISS, a target of docs/BENCHMARKS.md not met (exit 1 with --strict);
SKIP with the reason. Without CUDA (or with --dry) the CUDA stages are skipped and the CPU proxy of the host
syncs (lsh_bitnet/attention/hostsync.py, through the ways CUDA takes) runs instead: the dry run of `make gpu-check`.
Compiled graphs persist in $LSH_BITNET_CACHE/inductor (TORCHINDUCTOR_CACHE_DIR, FX graph cache on), so a second
run on the same machine skips the compiles.
"""
import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("LSH_BITNET_CACHE", "~/.cache/lsh_bitnet")).expanduser()
# Before torch is imported: Inductor reads these once.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(CACHE / "inductor"))
os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
os.environ.setdefault("TRITON_CACHE_DIR", str(CACHE / "triton"))
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import gpu_stages  # noqa: E402  (this folder's own module)

STAGES = ("tests", "sdpa", "accuracy", "syncs", "speed", "e2e")
BUDGET_S = 600  # the whole check on one H100


def table(rows) -> str:
    head = ("stage", "case", "value", "target", "status")
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(5)]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--dry", action="store_true", help="skip the CUDA stages even where CUDA is available")
    parser.add_argument("--strict", action="store_true", help="exit 1 on a missed target too")
    parser.add_argument("--skip", default="", help=f"comma-separated stages to leave out, of {','.join(STAGES)}")
    args = parser.parse_args()
    skip = {s for s in args.skip.split(",") if s}
    cuda = torch.cuda.is_available() and not args.dry
    why = "--dry" if args.dry else f"no CUDA device (torch {torch.__version__})"
    rows, started = [], time.perf_counter()
    rows.append(["env", "torch / device", f"{torch.__version__} / "
                 f"{torch.cuda.get_device_name(args.device) if cuda else 'cpu'}", "", "ok"])
    for stage in STAGES:
        t0 = time.perf_counter()
        if stage in skip:
            rows.append([stage, "-", "", "", "SKIP (--skip)"])
            continue
        if not cuda:
            if stage == "syncs":
                rows += gpu_stages.syncs_cpu_proxy()
            rows.append([stage, "-", "", "", f"SKIP ({why})"])
            continue
        try:
            rows += getattr(gpu_stages, stage)(torch.device(args.device))
        except Exception as exc:  # a stage that crashes is a wrong result, reported in the table
            rows.append([stage, "crashed", f"{type(exc).__name__}: {str(exc)[:120]}", "", "FAIL"])
        rows.append([stage, "stage seconds", f"{time.perf_counter() - t0:.0f}", "", "ok"])
    total = time.perf_counter() - started
    rows.append(["all", "seconds", f"{total:.0f}", f"<= {BUDGET_S}",
                 "ok" if total <= BUDGET_S or not cuda else "MISS"])
    print(table(rows))
    failed = [r for r in rows if r[4] == "FAIL"]
    missed = [r for r in rows if r[4] == "MISS"]
    print(f"\n{len(failed)} wrong, {len(missed)} targets missed"
          + ("" if cuda else f"; CUDA stages skipped: {why}"))
    return 1 if failed or (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
