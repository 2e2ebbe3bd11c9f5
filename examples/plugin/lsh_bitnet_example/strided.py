"""attention=strided: the last key of every block of `stride` positions, plus the always-attend sets.

The "fixed" pattern of the Sparse Transformer (Child et al. 2019): with a local window, every query sees its
own block and one summary key per earlier block. It selects by position, so it costs no selection work.
"""
from dataclasses import dataclass

from lsh_bitnet.attention.rules.base import Rule
from lsh_bitnet.config import AttentionConfig
from lsh_bitnet.errors import require
from lsh_bitnet.registry import RULES


@dataclass
class StridedAttentionConfig(AttentionConfig):
    name: str = "strided"
    stride: int = 16  # positions per block; its last key is the block's summary
    local_window: int = 16  # the query's own block (a shared always-attend field, with a default of ours)


@RULES.register
class StridedAttention(Rule):
    name = "strided"
    schema = StridedAttentionConfig
    family_order = 60  # after the built-ins in tables and plots

    @classmethod
    def check(cls, cfg, hasher_cfg, head_dim=None) -> None:
        require(cfg.stride >= 1, f"attention.stride must be >= 1 (got {cfg.stride}): e.g. attention.stride=16")

    @classmethod
    def candidates(cls, cands, q_idx, kc, valid):
        # p(j) = count(j) - 1: the key's position among the row's valid slots (padding never shifts it)
        position = cands.count[:, :kc] - 1  # (B, kc)
        summary = (position % cands.spec.stride) == cands.spec.stride - 1  # (B, kc)
        return summary[:, None, None, None, :] & valid  # (B, 1, 1, Qc, kc)
