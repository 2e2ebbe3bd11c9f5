"""attention=random_k: k_i keys of V(i) drawn uniformly at random, at the oracle's budget (k or ceil(fraction *
|V(i)|)), plus the always-attend sets: selection by chance at the same budget. The reference that says how
much of a rule's quality is its choice of keys rather than their number (SPEC section 7).

The draw (SPEC section 7.4): key j gets the 32-bit rank r = mix32(mix32(s_h ^ p(i)) ^ p(j)) for query i of
query head h, p() the positions (valid slots before; padding never moves a draw), s_h a seed per (attention.seed,
layer, query head); the k_i highest-ranked keys of V(i) are chosen, ties to the lower slot. A rank depends on
(i, j) alone, so a query draws the same keys in a prefill, in any query chunking and in a decode step, on any
device and whatever the global RNG; the ranking of V(i) is a pseudo-random permutation, so the chosen set
is a uniformly random k_i-subset of V(i).
"""
import functools
import hashlib
from dataclasses import dataclass
from typing import Optional

from lsh_bitnet.attention.rules.base import Rule, check_budget
from lsh_bitnet.config import AttentionConfig
from lsh_bitnet.registry import RULES

# Thomas Mueller's 32-bit integer mixer (each step a bijection of [0, 2^32), full avalanche). Its multiplier
# is below 2^27, so every product stays below 2^59: exact in int64 on every device, no overflow.
MIX = 0x45D9F3B
MASK = (1 << 32) - 1


@dataclass
class RandomKAttentionConfig(AttentionConfig):
    name: str = "random_k"
    # Exactly one of k / fraction, no default budget (as oracle_topk: the budget is what a run measures).
    k: Optional[int] = None
    fraction: Optional[float] = None
    # 0 here; conf/attention/random_k.yaml sets ${seed}, the run's master seed (as hasher.seed, config.py).
    seed: int = 0


def head_seed(seed: int, layer_idx: int, head: int) -> int:
    """s_h: the first 4 bytes (little-endian) of sha256("lsh_bitnet:random_k:<seed>:<layer>:<query head>")."""
    digest = hashlib.sha256(f"lsh_bitnet:random_k:{int(seed)}:{int(layer_idx)}:{int(head)}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


@functools.lru_cache(maxsize=256)
def _head_seeds(seed: int, layer_idx: int, n_heads: int, device: str):
    """(n_heads,) int64 s_h on `device`, copied there once per layer, not per query chunk (a host-to-device copy
    waits on CUDA)."""
    import torch

    return torch.tensor([head_seed(seed, layer_idx, h) for h in range(n_heads)], dtype=torch.int64, device=device)


def mix32(x):
    """Mueller's mixer on values in [0, 2^32): an int64 tensor (elementwise) or a Python int."""
    x = ((x >> 16) ^ x) * MIX & MASK
    x = ((x >> 16) ^ x) * MIX & MASK
    return (x >> 16) ^ x


@RULES.register
class RandomK(Rule):
    name = "random_k"
    schema = RandomKAttentionConfig
    why_not = {"flex": " (its random keys lie in every 128 x 128 block: nothing to skip)"}
    family_order = 45

    @classmethod
    def check(cls, cfg, hasher_cfg, head_dim=None) -> None:
        check_budget(cfg)

    @classmethod
    def candidates(cls, cands, q_idx, kc, valid):
        import torch

        from lsh_bitnet.attention.topk import budgets, kth_largest, row_count

        spec, dev = cands.spec, q_idx.device
        heads = _head_seeds(spec.seed, cands.layer_idx, cands.Hkv * cands.g, str(dev))
        heads = heads.view(1, cands.Hkv, cands.g, 1, 1)  # head h = hkv * g + gi
        qpos = (cands.count.index_select(1, q_idx + cands.q_offset) - 1).clamp(min=0)  # (B, Qc)
        kpos = (cands.count[:, :kc] - 1).clamp(min=0)  # (B, kc); padding slots are never in V(i)
        u = mix32(heads ^ qpos[:, None, None, :, None])  # (B, Hkv, g, Qc, 1)
        rank = mix32(u ^ kpos[:, None, None, None, :])  # (B, Hkv, g, Qc, kc) in [0, 2^32)
        # rank, then the lower slot, folded into one int64: distinct within a row, so exactly k_i are kept
        pos_bits = max(1, (kc - 1).bit_length())
        lower_first = torch.arange(kc - 1, -1, -1, dtype=torch.int64, device=dev)  # (kc,)
        s = ((rank << pos_bits) | lower_first).masked_fill_(~valid, -1)  # invalid keys below every valid one
        k_i, k_max = budgets(spec.k, spec.fraction, row_count(valid), kc)  # (B, 1, 1, Qc)
        k_i = k_i.expand(s.shape[:-1])
        if k_max <= 0:
            return torch.zeros(s.shape, dtype=torch.bool, device=dev)
        return (s >= kth_largest(s, k_i, k_max)) & (k_i > 0).unsqueeze(-1)

    @classmethod
    def selection_ops(cls, cands, visible):
        return visible * 2  # per (query head, visible key): one rank drawn, one selection step
