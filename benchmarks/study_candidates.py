"""Offline study of candidate rules on captured queries and keys (benchmarks/capture_qk.py): the softmax mass of full
attention that each rule's C(i) keeps, its comparison ratio and its counted work, without running the model.

    OMP_NUM_THREADS=1 python benchmarks/study_candidates.py --queries 96 qk1024_w0.pt [more.pt]

Designs (all with 4 sinks + 32 local + self, centred SimHash from the run's calibration means, hasher.seed 0):
- oracle f: top ceil(f |V(i)|) by q.k;  soft KxL f: top by agreeing bits over all L*K bits (lsh_topk score=soft);
- filter KxL m f: keys colliding in >= m tables, ranked by the soft score over all bits (issue 27's first design;
  selection = collisions + candidates x (L*K + 1));
- probe KxL r f: attention=lsh_probe (s_ij = sum_t max(0, r + 1 - d_t); selection = L * #codes within r per query +
  keys found + candidates).
Layers 0, 3, ..., 27 and `--queries` evenly spaced queries per window. mass = mean over (query, head) of the
full-attention softmax mass on C(i); gmass its geometric mean; mac = ratio + selection / 64 + hash (SimHash:
(9 + 3) * 64 * L * K multiply-adds per token against 9 * 64 * (T + 1) / 2). orecall = |C(i) & O(i)| / |O(i)|, O(i)
the oracle's C(i) at the same budget (top ceil(f |V(i)|) by q.k + the always-attend sets): how many of the oracle's
keys the rule keeps; frecall = the same share inside the found keys (candidates + always-attend sets) before the
budget cuts them: what the bucket filter alone lets through. Tuning windows only.
"""
import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
SCALE, SINKS, LOCAL, D, HKV, G = 0.125, 4, 32, 64, 3, 3


def hashed_bits(data, layer, K, L):
    """Query bits (Hkv, g, T, L, K) and centred key bits (Hkv, T, L, K) from the run's own SimHash planes."""
    from lsh_bitnet.attention.hashers.simhash import SimHashHasher

    h = SimHashHasher(K, D, HKV, L, 0, layer)
    mu = data["centers"][layer].float()
    q = data["query"][layer].float().contiguous()
    k = data["key"][layer].float().contiguous()
    T = k.shape[1]
    qb = h.bits(q.view(1, HKV, G * T, D)).view(HKV, G, T, L, K)
    kb = h.bits((k - mu[:, None, :])[None]).view(HKV, T, L, K)
    return qb, kb


def codes(bits):
    weights = 1 << torch.arange(bits.shape[-1] - 1, -1, -1)
    return (bits.long() * weights).sum(-1)


def layer_stats(data, layer, designs, q_list):
    q = data["query"][layer].float().contiguous().view(HKV, G, -1, D)
    k = data["key"][layer].float().contiguous()
    T = k.shape[1]
    qi = torch.tensor(q_list)
    n = len(q_list)
    j = torch.arange(T)
    valid = j[None, :] <= qi[:, None]  # (n, T)
    n_vis = valid.sum(-1)
    always = ((j[None, :] < SINKS) | (qi[:, None] - j[None, :] < LOCAL) | (j[None, :] == qi[:, None])) & valid
    logits = (torch.einsum("hgnd,htd->hgnt", q[:, :, qi], k) * SCALE).masked_fill(~valid, float("-inf"))
    probs = torch.softmax(logits, -1)
    cache, out = {}, {}
    for name, d in designs:
        budget = torch.tensor([min(int(v), math.ceil(d["f"] * int(v))) for v in n_vis]) if "f" in d else None
        sel, cand = 0, valid.expand_as(logits)
        if d["kind"] == "oracle":
            score, sel = logits, int(n_vis.sum()) * HKV * G
        elif d["kind"] == "window":
            score = None
        else:
            K, L = d["K"], d["L"]
            if (K, L) not in cache:
                qb, kb = hashed_bits(data, layer, K, L)
                qc, kcs = codes(qb)[:, :, qi], codes(kb)  # (Hkv, g, n, L), (Hkv, T, L)
                popcount = torch.tensor([bin(x).count("1") for x in range(1 << K)], dtype=torch.int8)
                dist = torch.stack([popcount[qc[..., t, None] ^ kcs[:, None, None, :, t]] for t in range(L)])
                soft = torch.einsum("hgnb,htb->hgnt", qb[:, :, qi].flatten(-2).float() * 2 - 1,
                                    kb.flatten(-2).float() * 2 - 1)
                cache[K, L] = dist, soft  # (L, Hkv, g, n, T) int8, (Hkv, g, n, T)
            dist, soft = cache[K, L]
            if d["kind"] == "soft":
                score, sel = soft, int(n_vis.sum()) * HKV * G * (L * K + 1)
            elif d["kind"] == "filter":
                hits = ((dist == 0) & valid).sum(0)
                cand = (hits >= d["m"]) & valid
                score, sel = soft, int(hits.sum()) + int(cand.sum()) * (L * K + 1)
            else:  # probe
                r = d["r"]
                near = (dist <= r) & valid
                score = ((r + 1 - dist.float()) * near).sum(0)
                cand = (score > 0) & valid
                visited = L * sum(math.comb(K, x) for x in range(r + 1))
                sel = visited * n * HKV * G + int(near.sum()) + int(cand.sum())
        if score is None:
            chosen = torch.zeros_like(cand)
        else:  # the budget's best candidates, ties to the lower slot
            s = score.float().masked_fill(~cand, float("-inf")) - j.float() * 1e-7
            top = s.topk(int(budget.max()), -1).indices
            keep = (torch.arange(top.shape[-1]) < budget[:, None]) & (s.gather(-1, top) > float("-inf"))
            chosen = torch.zeros_like(cand).scatter_(-1, top, keep)
        C = chosen | always
        mass = (probs * C).sum(-1)
        O = _oracle_set(logits, valid, always, budget, cache) if budget is not None else C
        found = (cand if d["kind"] in ("filter", "probe") else valid) | always
        row = out.setdefault(name, [0.0, 0.0, 0, 0, 0, 0, 0, 0, 0, 0])
        for i, v in enumerate((float(mass.sum()), float(mass.clamp(min=1e-9).log().sum()), int(C.sum()),
                               int(n_vis.sum()) * HKV * G, sel, mass.numel(),
                               int(cand.sum()) if d["kind"] in ("filter", "probe") else 0,
                               int((C & O).sum()), int((found & O).sum()), int(O.sum()))):
            row[i] += v
    return out


def _oracle_set(logits, valid, always, budget, cache):
    """The oracle's C(i) at this budget: the top budget_i keys by q.k (ties to the lower slot) + always-attend."""
    key = ("oracle", tuple(budget.tolist()))
    if key not in cache:
        j = torch.arange(logits.shape[-1])
        s = logits.masked_fill(~valid, float("-inf")) - j.float() * 1e-7
        top = s.topk(int(budget.max()), -1).indices
        keep = (torch.arange(top.shape[-1]) < budget[:, None]) & (s.gather(-1, top) > float("-inf"))
        cache[key] = torch.zeros(logits.shape, dtype=torch.bool).scatter_(-1, top, keep) | always
    return cache[key]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--queries", type=int, default=96)
    ap.add_argument("--designs", default="default", help="a name in DESIGNS")
    args = ap.parse_args(argv)
    designs = DESIGNS[args.designs]
    totals, T = {}, None
    for path in args.files:
        data = torch.load(path)
        T = data["key"][0].shape[1]
        q_list = [round(i * (T - 1) / (args.queries - 1)) for i in range(args.queries)]
        for layer in range(0, 30, 3):
            for name, row in layer_stats(data, layer, designs, q_list).items():
                acc = totals.setdefault(name, [0.0] * 10)
                totals[name] = [a + b for a, b in zip(acc, row)]
    print(f"| design | mass | gmass | ratio | candidates | selection / full | mac_ratio | orecall | frecall |  (T = {T})")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, d in designs:
        m, lm, comp, full, sel, cnt, cand, o_kept, o_found, o_all = totals[name]
        hashing = 12 * D * d.get("K", 0) * d.get("L", 0) / (9 * (T + 1) / 2 * D)
        ratio = comp / full
        print(f"| {name} | {m / cnt:.4f} | {math.exp(lm / cnt):.4f} | {ratio:.4f} | {cand / full:.4f} | "
              f"{sel / full:.2f} | {ratio + sel / full / D + hashing:.3f} | {o_kept / o_all:.3f} | {o_found / o_all:.3f} |")


def _grid():
    base = [("window", dict(kind="window"))] + [(f"oracle f{f}", dict(kind="oracle", f=f)) for f in (0.05, 0.07, 0.1)]
    default = base + [(f"soft 8x32 f{f}", dict(kind="soft", K=8, L=32, f=f)) for f in (0.05, 0.07, 0.1)]
    default += [(f"filter {K}x{L} m{m} f0.07", dict(kind="filter", K=K, L=L, m=m, f=0.07))
                for K, L, ms in ((8, 32, (1, 2)), (6, 32, (1, 2, 3)), (4, 32, (2, 3)), (5, 32, (2, 3)), (6, 16, (1, 2)))
                for m in ms]
    default += [(f"probe {K}x{L} r{r} f{f}", dict(kind="probe", K=K, L=L, r=r, f=f))
                for K, L, r in ((8, 32, 1), (8, 32, 2), (8, 32, 3), (8, 32, 4), (6, 32, 2), (6, 48, 2), (6, 48, 3),
                                (8, 16, 2), (8, 16, 3), (6, 16, 2), (6, 16, 3), (6, 24, 2))
                for f in (0.07, 0.1)]
    # issue 27's choice at T = 4096 (window 0 of 4096 tokens) and at T = 1024 under mac_ratio 0.6
    w4096 = base + [("oracle f0.085", dict(kind="oracle", f=0.085)), ("soft 8x32 f0.085", dict(kind="soft", K=8, L=32,
                                                                                              f=0.085))]
    w4096 += [(f"probe 8x32 r3 f{f}", dict(kind="probe", K=8, L=32, r=3, f=f)) for f in (0.07, 0.08, 0.085, 0.09)]
    w4096 += [(f"filter {K}x32 m{m} f0.085", dict(kind="filter", K=K, L=32, m=m, f=0.085)) for K, m in ((6, 2), (5, 3))]
    w1024 = base + [(f"oracle f{f}", dict(kind="oracle", f=f)) for f in (0.085, 0.095)]
    w1024 += [(f"probe {K}x{L} r{r} f{f}", dict(kind="probe", K=K, L=L, r=r, f=f))
              for K, L, r in ((6, 16, 3), (6, 16, 4), (8, 16, 3), (5, 20, 2), (5, 20, 3)) for f in (0.085, 0.095)]
    return {"default": default, "work27_4096": w4096, "work27_1024": w1024}


DESIGNS = _grid()

if __name__ == "__main__":
    main()
