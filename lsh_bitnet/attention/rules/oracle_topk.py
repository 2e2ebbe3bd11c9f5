"""attention=oracle_topk: the k (or ceil(fraction * |V(i)|)) keys of highest q.k, ties to the lower slot,
plus the always-attend sets (SPEC section 3). The quality upper bound for a budget, flagged as an oracle and
a gap reference (report/gap.py)."""
from dataclasses import dataclass
from typing import Optional

from lsh_bitnet.attention.rules.base import Rule, budget_mask, check_budget
from lsh_bitnet.config import AttentionConfig, Engine
from lsh_bitnet.registry import RULES


@dataclass
class OracleTopKAttentionConfig(AttentionConfig):
    name: str = "oracle_topk"
    # Exactly one of k / fraction, and no default budget: the budget is what a run measures, and a reference
    # must be sized to the rule it brackets (report/gap.py), so it is always stated (attention.fraction=0.1).
    k: Optional[int] = None
    fraction: Optional[float] = None  # k_i = ceil(fraction * |V(i)|) per query
    engine: Engine = Engine.masked  # the only engine that runs it (see why_not)


@RULES.register
class OracleTopK(Rule):
    name = "oracle_topk"
    schema = OracleTopKAttentionConfig
    why_not = {"flex": " (it needs every score q.k to choose its top k: the dense product that flex skips)"}
    oracle = True
    reference = "upper"
    family_order = 50

    @classmethod
    def check(cls, cfg, hasher_cfg, head_dim=None) -> None:
        check_budget(cfg)

    @classmethod
    def candidates(cls, cands, q_idx, kc, valid):
        return budget_mask(cands.spec, cands.scores(q_idx, kc), valid, kc)

    @classmethod
    def selection_ops(cls, cands, visible):
        return visible  # the selection: one step per visible key (its dot products are the oracle's, uncounted)
