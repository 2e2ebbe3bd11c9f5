"""attention=lsh_forest: synchronous LSH-forest descent (Bawa et al. 2005; SPEC section 3).

Each tree hashes to max_depth bits; query i takes the deepest shared-prefix depth x at which
|{j in V(i): max_t lcp_t(i, j) >= x}| >= min(min_candidates, |V(i)|), and C(i) is that set plus the
always-attend sets. hasher.n_bits is not read: a tree's code has max_depth bits.
"""
import math
from dataclasses import dataclass

from lsh_bitnet.attention.rules.base import HashedRule
from lsh_bitnet.config import AttentionConfig
from lsh_bitnet.errors import require
from lsh_bitnet.registry import RULES

# flex resolves forest depths by inclusion-exclusion: 2^n - 1 tree sets (one sort each) per depth left open by
# the single-tree bounds, the ids of every set held at once. 6 trees = 63 sets; the cost doubles per tree
# beyond, and such forests stay on masked.
FOREST_MAX_TREES = 6
# 4 trees x 16 bits, 64 candidates: flex 1.69x masked's time at 4096 queries, 0.98x at 8192 (the depth
# search's sorts and one pass per tree; docs/BENCHMARKS.md).
AUTO_FLEX_MIN_QUERIES_FOREST = 8192
# CUDA: a first guess, not measured (rules/base.py); the depth search syncs with the host once per open depth.
AUTO_FLEX_MIN_QUERIES_FOREST_CUDA = 4096
# The flex engine orders a tree's queries by (shift, code) packed in one non-negative int64 below flex.FAR = 2^62:
# max_depth + bits of max_depth <= 62. Deeper trees run on masked (which handles codes up to hasher MAX_BITS).
FOREST_FLEX_MAX_DEPTH = 56


@dataclass
class LSHForestAttentionConfig(AttentionConfig):
    name: str = "lsh_forest"
    n_trees: int = 4
    max_depth: int = 16
    min_candidates: int = 64


@RULES.register
class LSHForest(HashedRule):
    name = "lsh_forest"
    schema = LSHForestAttentionConfig
    bits_key = "attention.max_depth"
    engines = ("masked", "flex")
    flex_passes = "tree"
    family_order = 30

    @classmethod
    def hash_shape(cls, spec):
        return spec.max_depth, spec.n_trees

    @classmethod
    def check(cls, cfg, hasher_cfg, head_dim=None) -> None:
        require(cfg.n_trees >= 1,
                f"attention.n_trees must be >= 1 (got {cfg.n_trees}): set attention.n_trees=1 or more")
        require(cfg.min_candidates >= 1, f"attention.min_candidates must be >= 1 (got {cfg.min_candidates})")
        super().check(cfg, hasher_cfg, head_dim)

    @classmethod
    def refusal(cls, spec, engine):
        if engine == "flex" and spec.n_trees > FOREST_MAX_TREES:
            return (f"attention.n_trees={spec.n_trees} (flex resolves forest depths over all 2^n_trees tree sets: at "
                    f"most {FOREST_MAX_TREES} trees; or set attention.n_trees<={FOREST_MAX_TREES})")
        if engine == "flex" and spec.max_depth > FOREST_FLEX_MAX_DEPTH:
            return (f"attention.max_depth={spec.max_depth} (flex packs a query's depth and code in one int64: at most "
                    f"{FOREST_FLEX_MAX_DEPTH}; or set attention.max_depth<={FOREST_FLEX_MAX_DEPTH})")
        return super().refusal(spec, engine)

    @classmethod
    def auto_flex_min_queries(cls, spec, device_type="cpu") -> int:
        return AUTO_FLEX_MIN_QUERIES_FOREST_CUDA if device_type == "cuda" else AUTO_FLEX_MIN_QUERIES_FOREST

    # ------------------------------------------------------------------ per call
    @classmethod
    def candidates(cls, cands, q_idx, kc, valid):
        """The deepest shared-prefix depth that keeps min_candidates keys.

        lcp_t(i, j) >= x  <=>  (code_t(i) XOR code_t(j)) < 2**(d - x), so the max over trees of lcp is
        read off the min over trees of the XOR. x* (the largest x whose set holds >= target keys of V)
        is found per query by binary search over [0, d]: ceil(log2(d + 1)) counting passes.
        """
        import torch

        from lsh_bitnet.attention.topk import row_count

        d, mc = cands.bits, cands.spec.min_candidates
        qc = cands.qcodes.index_select(4, q_idx).unsqueeze(-1)  # (T, B, Hkv, g, Qc, 1)
        kcodes = cands.kcodes[:, :, :, None, None, :kc]  # (T, B, Hkv, 1, 1, kc)
        minxor = None
        for t in range(qc.shape[0]):
            x = torch.bitwise_xor(qc[t], kcodes[t])  # (B, Hkv, g, Qc, kc)
            minxor = x if minxor is None else torch.minimum(minxor, x, out=minxor)
        minxor.masked_fill_(~valid, 2 ** d)  # not below any threshold 2**(d - x): invalid keys never count
        # x = 0 always qualifies (|V| >= target), so lo starts there and the search only tests x >= 1.
        target = row_count(valid).clamp(max=mc).expand(minxor.shape[:-1])  # (B, Hkv, g, Qc)
        lo = torch.zeros_like(target)
        hi = torch.full_like(target, d)
        for _ in range(math.ceil(math.log2(d + 1))):
            mid = (lo + hi + 1) // 2
            thr = torch.bitwise_left_shift(torch.ones_like(mid), d - mid).to(minxor.dtype).unsqueeze(-1)
            ok = row_count(minxor < thr) >= target
            lo = torch.where(ok, mid, lo)
            hi = torch.where(ok, hi, mid - 1)
        thr = torch.bitwise_left_shift(torch.ones_like(lo), d - lo).to(minxor.dtype).unsqueeze(-1)
        return minxor < thr

    @classmethod
    def selection_ops(cls, cands, visible):
        # a min over trees and a binary search over depths, per visible key
        return visible * (cands.spec.n_trees + math.ceil(math.log2(cands.bits + 1)))
