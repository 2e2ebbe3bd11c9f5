"""A decode step of lsh_topk by collisions: indices from a top-k, never a (heads x keys) candidate mask.

The masked engine's decode path (gather.py) builds C(i) as a bool mask over all K keys per query head, then
compacts it (`nonzero`): at 8192 keys that machinery costs about what SDPA over every key does. Here, for one
query per row with every key valid (a decode step over a KV cache), the rule's k_i best keys come straight from
`topk` as slots, the always-attend slots (sinks, local window, self) are appended (masked out where the top-k
holds them already), and attention runs over exactly those keys (gather.attend_rows). Collisions are counted on
byte-packed codes (packed.py). The same set and the same float32 softmax as the masked engine, hence identical
counts; the keys are summed in the top-k's order rather than by slot (sorting them would cost ~10% of the call),
so outputs agree to float32 rounding (tests/test_decode_topk.py).
"""
from typing import List, Tuple

import torch

from lsh_bitnet.attention import packed
from lsh_bitnet.attention.engines.gather import attend_rows


def topk_collision_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, q_words: torch.Tensor,
                             k_words: torch.Tensor, n_tables: int, k_i: int, always: List[int],
                             scaling: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attention of one query per row (the last key slot's) over its k_i most colliding keys, ties to the lower
    slot, plus the `always` slots. query (B, Hq, 1, D); key, value (B, Hkv, K, D), every key valid; q_words
    (W, B, Hkv, g), k_words (W, B, Hkv, K) packed codes (packed.pack_words, word-major) of n_tables tables.

    Returns the output (B, Hq, 1, Dv), the comparisons (query heads x candidates) and the colliding
    (query head, table, key) triples, both int64 0-d."""
    R, K = query.shape[0] * query.shape[1], key.shape[2]  # rows (b, kv head, group member), keys
    # fewest differing tables (most collisions) first, then the lower slot: distinct int32, smallest first
    order, differing = packed.collision_order(q_words, k_words)  # (B, Hkv, g, K), int64 0-d
    order = order.view(R, K)
    pairs = n_tables * R * K - differing
    top = order.topk(k_i, dim=-1, largest=False, sorted=False)  # (R, k_i) in no particular order
    slots = top.indices
    if always:
        a = torch.tensor(always, dtype=torch.int64, device=key.device)  # (n_a,)
        chosen = order.index_select(1, a) <= top.values.max(-1, keepdim=True).values  # (R, n_a): in the top-k
        slots = torch.cat([slots, a.expand(R, -1)], -1)  # (R, k_i + n_a): an always slot the top-k holds pads
        keep = torch.cat([torch.ones(R, k_i, dtype=torch.bool, device=key.device), ~chosen], -1)
        comparisons = R * (k_i + len(always)) - chosen.sum()
    else:
        keep = torch.ones(slots.shape, dtype=torch.bool, device=key.device)
        comparisons = torch.tensor(R * k_i, dtype=torch.int64, device=key.device)
    return attend_rows(query, key, value, slots, keep, scaling), comparisons, pairs
