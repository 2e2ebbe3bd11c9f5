"""attention=lsh_topk: budgeted soft-collision top-k (SOCKET; SPEC section 7).

Every causal key is scored by its collisions over n_tables tables (score=collisions) or by its agreeing hash
bits over all tables (score=soft); the k (or ceil(fraction * |V(i)|)) best are kept, ties to the lower slot,
plus the always-attend sets: the LSH counterpart of oracle_topk at the same budget.
"""
from dataclasses import dataclass
from typing import Optional

from lsh_bitnet.attention.rules.base import HashedRule, budget_mask, check_budget
from lsh_bitnet.config import AttentionConfig, StrEnum
from lsh_bitnet.registry import RULES


class Score(StrEnum):
    collisions = "collisions"  # number of tables whose code equals the query's
    soft = "soft"  # agreeing bits over all tables: (L*K + s_q . s_k) / 2 with s = 2 bit - 1


@dataclass
class LSHTopKAttentionConfig(AttentionConfig):
    name: str = "lsh_topk"
    n_tables: int = 8
    # Exactly one of k / fraction, no default budget (as oracle_topk: the budget is what a run measures).
    k: Optional[int] = None
    fraction: Optional[float] = None
    score: Score = Score.collisions


@RULES.register
class LSHTopK(HashedRule):
    name = "lsh_topk"
    schema = LSHTopKAttentionConfig
    why_not = {"flex": " (it scores every causal key by collisions to choose its top k: no block can be skipped)"}
    family_order = 20

    @classmethod
    def check(cls, cfg, hasher_cfg, head_dim=None) -> None:
        from lsh_bitnet.errors import require

        require(cfg.n_tables >= 1, f"attention.n_tables must be >= 1 (got {cfg.n_tables}): set attention.n_tables=1 "
                "or more")
        super().check(cfg, hasher_cfg, head_dim)
        check_budget(cfg)

    @classmethod
    def reuses_key_codes(cls, spec) -> bool:
        return spec.score != Score.soft  # the soft score re-reads the keys' bits, not their codes

    @classmethod
    def packs_key_codes(cls, spec, n_bits: int) -> bool:
        from lsh_bitnet.attention.packed import packable

        return spec.score == Score.collisions and packable(n_bits, spec.n_tables)

    # ------------------------------------------------------------------ per call
    @classmethod
    def prepare(cls, cands, key_codes=None) -> None:
        from lsh_bitnet.attention.collisions import CollisionIndex

        cands.soft = None
        if cands.spec.score == Score.soft:
            # +-1 bit vectors over all tables: agreeing bits = (L*K + sq . sk) / 2, one matmul per chunk
            import torch

            cls.start(cands)
            hasher = cands.hasher
            B, Hkv, g, Q, D = cands.query.shape
            qflat = cands.query.reshape(B, Hkv, g * Q, D)
            dtype = _soft_dtype(cands.query.device, hasher.n_bits * hasher.n_tables)
            cands.soft = (_plus_minus_one(hasher.bits(qflat), dtype).view(B, Hkv, g, Q, -1),
                          _plus_minus_one(hasher.key_bits(cands.key), dtype))  # (B,Hkv,g,Q,LK), (B,Hkv,K,LK)
            return
        super().prepare(cands, key_codes)
        cands.index = CollisionIndex(cands.qcodes, cands.kcodes, cands.key_valid, cands.bits, cands.q_offset)

    @classmethod
    def candidates(cls, cands, q_idx, kc, valid):
        # scores are exact integers in [-R, R]: +-1 bit products summed over L*K bits, or counts <= L
        bound = cands.soft[0].shape[-1] if cands.soft is not None else cands.spec.n_tables
        return budget_mask(cands.spec, _scores(cands, q_idx, kc), valid, kc, int_bound=bound)

    @classmethod
    def selection_ops(cls, cands, visible):
        if cands.soft is not None:  # L*K bit agreements per (query head, visible key), then the selection
            return visible * (cands.soft[0].shape[-1] + 1)
        return cands.index.pairs(cands.key_valid[:, cands.q_offset:]) + visible

    @classmethod
    def one_query_call(cls, spec, hasher, query, key, value, scaling, key_codes, key_words, visible):
        """Decode steps by collisions over codes of <= 8 bits: engines/decode_topk.py (top-k indices, no mask)."""
        from lsh_bitnet.attention import packed
        from lsh_bitnet.attention.candidates import always_slots
        from lsh_bitnet.attention.engines.decode_topk import topk_collision_attention
        from lsh_bitnet.attention.topk import INT32_FOLD_LIMIT, budget_of

        K = key.shape[2]  # (differing tables) x K + slot must fit int32, as topk's folded scores do
        if (spec.score != Score.collisions or not packed.packable(hasher.n_bits, spec.n_tables)
                or (spec.n_tables + 1) * K > INT32_FOLD_LIMIT):
            return None
        q_words, key_words = packed.call_words(hasher, query, key, key_codes, key_words)
        k_i = budget_of(spec.k, spec.fraction, K)
        always = always_slots(K, spec.sink_tokens, spec.local_window, spec.include_self)
        out, comparisons, pairs = topk_collision_attention(query, key, value, q_words, key_words, spec.n_tables, k_i,
                                                           always, scaling)
        return out, comparisons, pairs + visible


def _scores(cands, q_idx, kc):
    """(B, Hkv, g, Qc, kc) exact integers: collision counts, or agreeing bits over all tables (as sq . sk)."""
    if cands.soft is not None:
        from lsh_bitnet.attention.candidates import agreement_dots

        sq, sk = cands.soft
        return agreement_dots(sq.index_select(3, q_idx), sk[:, :, :kc])
    return cands.index.counts(q_idx, kc)


# float16 sums of +-1 products are exact integers up to 2048 in magnitude (11-bit significand; tensor cores
# accumulate in float32), so on CUDA the soft score of up to 2048 bits runs as a float16 matmul.
FP16_EXACT_BITS = 2048


def _soft_dtype(device, n_bits_total: int):
    """The dtype of the +-1 bit vectors: int8 where CPU VNNI matmuls are exact (collisions.int8_matmul), float16
    on CUDA up to FP16_EXACT_BITS bits, else float32 (exact to 2^24)."""
    import torch

    from lsh_bitnet.attention.collisions import int8_matmul

    if int8_matmul(device, n_bits_total):
        return torch.int8
    if device.type == "cuda" and n_bits_total <= FP16_EXACT_BITS:
        return torch.float16
    return torch.float32


def _plus_minus_one(bits, dtype):
    """(..., L, K) bool hash bits -> (..., L*K) +-1 of dtype."""
    return bits.flatten(-2).to(dtype).mul_(2).sub_(1)
