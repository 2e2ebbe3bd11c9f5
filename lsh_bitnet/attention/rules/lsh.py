"""attention=lsh: bucket attention (SPEC sections 3 and 7).

C(i) = {j <= i : h_t(q_i) == h_t(k_j) for at least min_collisions of the n_tables tables t} plus the
always-attend sets; min_collisions=1 is the union over tables. attention.estimator=sampling weights each
candidate by 1/p_ij, p_ij the m-of-L collision probability of the hasher's family (MagicPIG).
"""
from dataclasses import dataclass

from lsh_bitnet.attention.rules.base import HashedRule
from lsh_bitnet.config import AttentionConfig
from lsh_bitnet.errors import require
from lsh_bitnet.registry import RULES

# Several tables cost one flex pass (and one counting pass) each: measured slower than masked at 4096 queries,
# faster at 8192 (docs/BENCHMARKS.md). One table: the default threshold (rules/base.py).
AUTO_FLEX_MIN_QUERIES_TABLES = 8192
AUTO_FLEX_MIN_QUERIES_TABLES_CUDA = 2048  # a first guess, not measured (rules/base.py)


@dataclass
class LSHAttentionConfig(AttentionConfig):
    name: str = "lsh"
    n_tables: int = 1
    # j is a candidate when at least min_collisions of the n_tables tables collide (1 = the union).
    min_collisions: int = 1


@RULES.register
class LSHAttention(HashedRule):
    name = "lsh"
    schema = LSHAttentionConfig
    engines = ("masked", "flex")
    flex_passes = "table"
    sampling = True
    family_order = 10

    @classmethod
    def check(cls, cfg, hasher_cfg, head_dim=None) -> None:
        require(cfg.n_tables >= 1, f"attention.n_tables must be >= 1 (got {cfg.n_tables}): set attention.n_tables=1 "
                "or more")
        require(1 <= cfg.min_collisions <= cfg.n_tables, f"attention.min_collisions must be in [1, attention."
                f"n_tables={cfg.n_tables}] (got {cfg.min_collisions})")
        super().check(cfg, hasher_cfg, head_dim)

    @classmethod
    def refusal(cls, spec, engine):
        if engine == "flex":  # flex runs the plain union with softmax weights only (docs/SPEC.md section 8.2)
            if spec.min_collisions != 1:
                return (f"attention.min_collisions={spec.min_collisions} (m-of-L candidates lie in every 128 x 128 "
                        "block: nothing to skip)")
            if spec.estimator != "softmax":
                return f"attention.estimator={spec.estimator}"
        return super().refusal(spec, engine)

    @classmethod
    def auto_flex_min_queries(cls, spec, device_type="cpu") -> int:
        if spec.n_tables > 1:
            return AUTO_FLEX_MIN_QUERIES_TABLES_CUDA if device_type == "cuda" else AUTO_FLEX_MIN_QUERIES_TABLES
        return super().auto_flex_min_queries(spec, device_type)

    @classmethod
    def packs_key_codes(cls, spec, n_bits: int) -> bool:
        from lsh_bitnet.attention.packed import packable

        return spec.estimator == "softmax" and packable(n_bits, spec.n_tables)

    # ------------------------------------------------------------------ per call
    @classmethod
    def prepare(cls, cands, key_codes=None) -> None:
        from lsh_bitnet.attention.collisions import CollisionIndex

        super().prepare(cands, key_codes)
        cands.index = CollisionIndex(cands.qcodes, cands.kcodes, cands.key_valid, cands.bits, cands.q_offset)

    @classmethod
    def candidates(cls, cands, q_idx, kc, valid):
        m = cands.spec.min_collisions
        counts = cands.index.counts(q_idx, kc, dense_ok=m > 1)
        return bucket_match(cands, q_idx, kc) if counts is None else counts >= m  # dense union: OR, not add

    @classmethod
    def bias(cls, cands, q_idx, kc, where=None):
        """-log p_ij on candidates (sampling), p_ij = P[Binomial(L, p1) >= m], p1 the hasher's one-table
        collision probability; 0 on always-attend keys (p = 1). `where` (the candidate mask, broadcastable)
        limits the float64 work to those entries."""
        spec = cands.spec
        if spec.estimator != "sampling":
            return None
        import torch

        from lsh_bitnet.attention import estimators
        from lsh_bitnet.attention.hostsync import sync_free

        h = cands.hasher
        q = cands.query.index_select(3, q_idx).float()  # (B, Hkv, g, Qc, D)
        kh = h.hashed_key(cands.key[:, :, :kc]).float()[:, :, None]  # (B, Hkv, 1, kc, D)
        _, _, always = cands.sets(q_idx, kc)
        shape = q.shape[:-1] + (kc,)
        need = ~always.expand(shape) if where is None else where.expand(shape) & ~always  # p = 1 on always keys
        if sync_free(q.device):  # every entry, then a select: boolean indexing would be a host sync each
            log_p = estimators.log_tail(h.log_p_collision(q, kh, None), spec.n_tables, spec.min_collisions)
            return torch.where(need, estimators.sampling_bias(log_p), 0.0)  # (B, Hkv, g, Qc, kc) float32
        log_p1 = h.log_p_collision(q, kh, need)  # (n_need,) float64
        bias = torch.zeros(shape, dtype=torch.float32, device=q.device)
        bias[need] = estimators.sampling_bias(estimators.log_tail(log_p1, spec.n_tables, spec.min_collisions))
        return bias

    @classmethod
    def selection_ops(cls, cands, visible):
        return cands.index.pairs(cands.key_valid[:, cands.q_offset:])  # a bucket lookup touches each collision

    @classmethod
    def one_query_call(cls, spec, hasher, query, key, value, scaling, key_codes, key_words, visible):
        """Decode steps with softmax weights over codes of <= 8 bits: a key is a candidate where at most
        L - m tables differ, counted on byte-packed codes (packed.py), then the gather engine attends over them."""
        import torch

        from lsh_bitnet.attention import packed
        from lsh_bitnet.attention.candidates import always_slots
        from lsh_bitnet.attention.engines.gather import gather_attention

        if spec.estimator != "softmax" or not packed.packable(hasher.n_bits, spec.n_tables):
            return None
        q_words, key_words = packed.call_words(hasher, query, key, key_codes, key_words)
        cand, differing = packed.collision_candidates(q_words, key_words, spec.n_tables - spec.min_collisions)
        B, Hkv, g, K = cand.shape
        pairs = spec.n_tables * B * Hkv * g * K - differing  # causal colliding triples (every key is visible)
        always = always_slots(K, spec.sink_tokens, spec.local_window, spec.include_self)
        if always:
            cand.index_fill_(-1, torch.tensor(always, device=key.device), True)
        out, comparisons = gather_attention(query, key, value, cand.unsqueeze(3), None, scaling)
        return out, comparisons, pairs

    @classmethod
    def weighting_ops(cls, spec, comparisons):
        if spec.estimator == "sampling":  # the binomial tail's min_collisions terms per candidate weight
            return comparisons * spec.min_collisions
        return None


def bucket_match(cands, q_idx, kc):
    """Union over tables of equal codes: (B, Hkv, g, Qc, kc)."""
    qc = cands.qcodes.index_select(4, q_idx).unsqueeze(-1)  # (T, B, Hkv, g, Qc, 1)
    kcodes = cands.kcodes[:, :, :, None, None, :kc]  # (T, B, Hkv, 1, 1, kc)
    match = None
    for t in range(qc.shape[0]):  # one pass per table keeps memory at one (Qc, kc) bool per head
        eq = qc[t] == kcodes[t]
        match = eq if match is None else match.logical_or_(eq)
    return match

