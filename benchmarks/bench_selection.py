"""The budgeted top-k selection (attention/topk.py) two ways side by side, on whole query chunks.

    python benchmarks/bench_selection.py --seq-len 8192 --threads 1

Per budget (fraction of each query's causal keys) and score type (float32 as oracle_topk scores, int32
folds as lsh_topk's), the k_i-th best score of every row of the chunks of one attention call, at SmolLM2's
shapes (9 query heads, chunks of 256 queries against the keys they see): once as a sorted top-k_max then a
gather (the way before), once as `topk.kth_largest` (an unsorted top-k_max, then a sort of only the bottom
that some k_i reaches). Both are checked equal on every chunk; `sorted / two-step` > 1 means the
two-step way is faster. Times sum over every 4th chunk of the call (the cost grows with the chunk's keys,
so a stride keeps the mix of short and long rows), each timed `--repeats` times with the sorted way run
before and after the two-step one and averaged.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lsh_bitnet.attention.topk import budgets, kth_largest  # noqa: E402

HEADS, CHUNK = 9, 256  # SmolLM2-135M's query heads; the kernel's query_chunk
CHUNK_STRIDE = 4  # time every 4th chunk: enough for a stable ratio, a quarter of the time
FRACTIONS = "0.03,0.10,0.161"  # lsh_topk's passkey budget, the 1024-token oracle, the 8192 matched oracle


def sorted_kth(s: torch.Tensor, k_i: torch.Tensor, k_max: int) -> torch.Tensor:
    """The way before kth_largest: sort the k_max best, read the k_i-th."""
    top = s.topk(k_max, dim=-1).values
    return top.gather(-1, (k_i - 1).clamp(min=0).unsqueeze(-1))


def chunk_inputs(a: int, fraction: float, integer: bool, gen: torch.Generator):
    """Scores (HEADS, CHUNK, kc) of queries [a, a + CHUNK) over their causal keys, and their budgets."""
    kc = a + CHUNK
    slots = torch.arange(a, kc)
    valid = torch.arange(kc).unsqueeze(0) <= slots.unsqueeze(1)  # (CHUNK, kc)
    if integer:  # an int32 fold: distinct values, as top_k_mask makes them
        s = torch.randperm(HEADS * CHUNK * kc, generator=gen).view(HEADS, CHUNK, kc).to(torch.int32)
        s = s.masked_fill_(~valid, -1)
    else:
        s = torch.randn(HEADS, CHUNK, kc, generator=gen).masked_fill_(~valid, float("-inf"))
    k_i, k_max = budgets(None, fraction, valid.sum(-1), kc)
    return s, k_i.expand(HEADS, CHUNK).contiguous(), k_max


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--fractions", default=FRACTIONS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    T = args.seq_len
    starts = list(range(0, T, CHUNK))[CHUNK_STRIDE - 1::CHUNK_STRIDE]
    print(f"T={T}, {HEADS} heads, chunks of {CHUNK} queries, every {CHUNK_STRIDE}th chunk ({len(starts)}), "
          f"threads={torch.get_num_threads()}")
    print(f"{'fraction':>8} {'scores':>7} {'sorted_s':>9} {'two_step_s':>11} {'sorted / two-step':>18}")
    gen = torch.Generator().manual_seed(0)
    for fraction in [float(f) for f in args.fractions.split(",")]:
        for integer in (False, True):
            t_sorted = t_two = 0.0
            for a in starts:
                s, k_i, k_max = chunk_inputs(a, fraction, integer, gen)
                sorted_kth(s, k_i, k_max)  # warm-up: allocator
                for _ in range(args.repeats):  # alternating, so neither way always runs second
                    t0 = time.perf_counter()
                    want = sorted_kth(s, k_i, k_max)
                    t1 = time.perf_counter()
                    got = kth_largest(s, k_i, k_max)
                    t2 = time.perf_counter()
                    again = sorted_kth(s, k_i, k_max)
                    t3 = time.perf_counter()
                    assert torch.equal(got, want) and torch.equal(again, want), (fraction, integer, a)
                    t_sorted, t_two = t_sorted + (t1 - t0 + t3 - t2) / 2, t_two + t2 - t1
            print(f"{fraction:>8} {'int32' if integer else 'float32':>7} {t_sorted:>9.3f} {t_two:>11.3f} "
                  f"{t_sorted / t_two:>18.2f}")


if __name__ == "__main__":
    main()
