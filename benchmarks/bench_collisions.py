"""The three ways of counting collisions (attention/collisions.py) side by side, on one query chunk.

    python benchmarks/bench_collisions.py --seq-len 4096 --threads 1

Per setting (bits x tables, uniform or peaked codes), one chunk of 256 queries against the 2304 keys they
see at SmolLM2's shapes (3 KV heads x 3 query heads each): the time of the sorted, dense and one-hot counts,
their unit costs (ns per collision, per dense (query, key, table) comparison, per one-hot multiply-add),
and the way `CollisionIndex.counts` picks. Every way's counts are checked equal to the dense ones.
A second table prices what every call pays once, before any chunk: each query's collisions per table (n,
the price of the sorted way and the selection cost) over all T queries, from the sorted ranges (a sort
and two binary searches per query) and from running per-bucket counts (a cumsum of one-hot key codes).
Real centred keys collide more than uniform codes: the peaked rows (geometric bucket frequencies, ~7.7%
collisions per table at 6 bits) stand for them. The constants in collisions.py come from these unit costs.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lsh_bitnet.attention import collisions  # noqa: E402

HKV, GROUP, CHUNK = 3, 3, 256  # SmolLM2-135M: 3 KV heads of 3 query heads; the kernel's query_chunk
SETTINGS = "6x32:peaked,6x64:uniform,6x64:peaked,7x64:peaked,8x75:peaked,12x64:uniform,16x128:uniform"


def timed(fn, repeats: int) -> float:
    fn()  # warm-up: allocator, one-hot key rows
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def codes(shape, n_buckets: int, peaked: bool, gen: torch.Generator) -> torch.Tensor:
    if not peaked:
        return torch.randint(0, n_buckets, shape, generator=gen, dtype=torch.int32)
    u = torch.rand(shape, generator=gen).clamp(min=1e-12)
    return ((u.log() / torch.log(torch.tensor(0.85))).long() % n_buckets).int()  # geometric(0.15) buckets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--settings", default=SETTINGS, help="BITSxTABLES:uniform|peaked, comma-separated")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    T = args.seq_len
    a = T // 2  # the chunk of queries [a, a + CHUNK) sees keys [0, a + CHUNK)
    q_idx, kc = torch.arange(a, a + CHUNK), a + CHUNK
    print(f"one chunk: {CHUNK} queries x {kc} keys, {HKV} KV heads x {GROUP} query heads, T={T}, "
          f"threads={torch.get_num_threads()}")
    print(f"{'setting':<16} {'collide':>8} {'sorted_ms':>10} {'dense_ms':>9} {'onehot_ms':>10} "
          f"{'ns/coll':>8} {'ns/cmp':>7} {'ps/mac':>7} {'picked':>7} {'best':>7}")
    gen = torch.Generator().manual_seed(0)
    for item in args.settings.split(","):
        shape, kind = item.split(":")
        bits, L = (int(x) for x in shape.split("x"))
        kcodes = codes((L, 1, HKV, T), 1 << bits, kind == "peaked", gen)
        qcodes = codes((L, 1, HKV, GROUP, T), 1 << bits, kind == "peaked", gen)
        index = collisions.CollisionIndex(qcodes, kcodes, torch.ones(1, T, dtype=torch.bool), bits, 0)
        lo, n_all = index._ranges()
        assert torch.equal(n_all, index.n)  # the running counts and the sorted ranges agree
        lo, n = lo.index_select(4, q_idx), n_all.index_select(4, q_idx).flatten()
        pairs = HKV * GROUP * CHUNK * kc
        dense = index.dense_counts(q_idx, kc)
        seconds = {"sorted": timed(lambda: index._sorted_counts(lo, n, CHUNK, kc), args.repeats),
                   "dense": timed(lambda: index.dense_counts(q_idx, kc), args.repeats)}
        causal = torch.arange(kc)[None, :] <= q_idx[:, None]  # query i at slot i: sorted counts hold causal keys only
        assert torch.equal(index._sorted_counts(lo, n, CHUNK, kc), dense * causal)
        if index.onehot_ok:
            seconds["onehot"] = timed(lambda: index.onehot_counts(q_idx, kc), args.repeats)
            assert torch.equal(index.onehot_counts(q_idx, kc), dense)
        ran = []  # which way counts() picks: wrap the three, call it once
        for name, label in (("_sorted_counts", "sorted"), ("onehot_counts", "onehot"), ("dense_counts", "dense")):
            real = getattr(index, name)
            setattr(index, name, lambda *x, _r=real, _l=label: ran.append(_l) or _r(*x))
        index.counts(q_idx, kc)
        total = int(n.sum())
        onehot_ms = f"{seconds['onehot'] * 1e3:10.0f}" if "onehot" in seconds else f"{'-':>10}"
        ps_mac = f"{seconds['onehot'] * 1e12 / (pairs * (L << bits)):7.2f}" if "onehot" in seconds else f"{'-':>7}"
        print(f"{shape + ':' + kind:<16} {total / (pairs * L):8.4f} {seconds['sorted'] * 1e3:10.0f} "
              f"{seconds['dense'] * 1e3:9.0f} {onehot_ms} {seconds['sorted'] * 1e9 / max(total, 1):8.1f} "
              f"{seconds['dense'] * 1e9 / (pairs * L):7.2f} {ps_mac} {ran[0]:>7} {min(seconds, key=seconds.get):>7}")

    print(f"\nonce per call: every query's collisions per table, T={T} queries x {T} keys")
    print(f"{'setting':<16} {'ranges_ms':>10} {'running_ms':>11} {'running/ranges':>15} {'used':>8}")
    for item in args.settings.split(","):
        shape, kind = item.split(":")
        bits, L = (int(x) for x in shape.split("x"))
        if (1 << bits) * T * HKV * 4 > collisions.RUNNING_COUNT_MAX_BYTES:
            continue  # the running counts of one table would not fit their memory cap
        kcodes = codes((L, 1, HKV, T), 1 << bits, kind == "peaked", gen)
        qcodes = codes((L, 1, HKV, GROUP, T), 1 << bits, kind == "peaked", gen)
        index = collisions.CollisionIndex(qcodes, kcodes, torch.ones(1, T, dtype=torch.bool), bits, 0)
        used = "ranges" if index._lo is not None else "running"  # what the index itself took for n

        def ranges():
            index._lo = None  # _ranges() caches: rebuild the sort and the searches each time
            return index._ranges()[1]

        assert torch.equal(ranges(), index._running_counts())
        seconds = {"ranges": timed(ranges, args.repeats), "running": timed(index._running_counts, args.repeats)}
        print(f"{shape + ':' + kind:<16} {seconds['ranges'] * 1e3:10.0f} {seconds['running'] * 1e3:11.0f} "
              f"{seconds['running'] / seconds['ranges']:15.2f} {used:>8}")


if __name__ == "__main__":
    main()
