"""Why m-of-L (attention.min_collisions > 1) stays on the masked engine: the share of causal (query block, key block)
pairs of 128 x 128 that hold at least one candidate pair, i.e. the blocks a block-sparse kernel could not skip.

    python benchmarks/bench_block_density.py --seq-len 4096 --bits 6 --tables 64 --min-collisions 1,2,3

One query head against its KV head at SmolLM2's head_dim (64), random float32 q and k (SimHash collisions of
unrelated vectors: the sparsest case; real keys cluster and collide more). Only the hashed rule is counted (no
sinks, no window). Blocks are in token order; sorting by one table's code does not gather a pair colliding in
m of L tables, which may share no code with it in that table.
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lsh_bitnet.attention import build_hasher  # noqa: E402

BS = 128  # flex's block size
CHUNK = 256  # queries per dense count: (CHUNK, T) int16 counts; a multiple of BS


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--bits", type=int, default=6)
    ap.add_argument("--tables", type=int, default=64)
    ap.add_argument("--min-collisions", default="1,2,3")
    args = ap.parse_args()
    T, D = args.seq_len, 64
    if T % CHUNK:
        raise SystemExit(f"--seq-len must be a multiple of {CHUNK}")
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, T, D, generator=g), torch.randn(1, 1, T, D, generator=g)
    h = build_hasher("simhash", args.bits, D, 1, args.tables, 0, 0)
    qc, kc = h.codes(q)[0, 0], h.key_codes(k)[0, 0]  # (T, L) codes
    nb = -(-T // BS)
    ms = [int(m) for m in args.min_collisions.split(",")]
    pairs = {m: 0 for m in ms}
    blocks = {m: torch.zeros(nb, nb, dtype=torch.bool) for m in ms}
    for a in range(0, T, CHUNK):
        e = min(T, a + CHUNK)
        counts = torch.zeros(e - a, T, dtype=torch.int16)  # collisions per (query, key)
        for t in range(args.tables):
            counts += qc[a:e, t, None] == kc[None, :, t]
        causal = torch.arange(T)[None, :] <= torch.arange(a, e)[:, None]
        for m in ms:
            cand = (counts >= m) & causal  # (CHUNK, T)
            pairs[m] += int(cand.sum())
            # (CHUNK / BS, nb): which (query block, key block) pairs of this chunk hold a candidate
            blocks[m][a // BS:e // BS] |= cand.view(-1, BS, nb, BS).any(3).any(1)
    n_causal_pairs = T * (T + 1) // 2
    n_causal_blocks = nb * (nb + 1) // 2
    print(f"T={T}, SimHash {args.bits} bits x {args.tables} tables, random q/k, blocks of {BS}")
    print(f"{'rule':<10} {'pair ratio':>10} {'blocks kept':>12}")
    for m in ms:
        kept = int(blocks[m].sum()) / n_causal_blocks
        print(f"{m}-of-{args.tables:<4} {pairs[m] / n_causal_pairs:>10.4f} {kept:>12.4f}")


if __name__ == "__main__":
    main()
