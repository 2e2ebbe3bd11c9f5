"""attention=full: every causal key, the baseline. Must match the model's stock SDPA logits (SPEC section 3)."""
from dataclasses import dataclass

from lsh_bitnet.attention.rules.base import Rule
from lsh_bitnet.config import AttentionConfig
from lsh_bitnet.registry import RULES


@dataclass
class FullAttentionConfig(AttentionConfig):
    name: str = "full"  # always-attend fields are ignored: C(i) = V(i). Any engine runs stock SDPA.


@RULES.register
class FullAttention(Rule):
    name = "full"
    schema = FullAttentionConfig
    dense = True  # the kernel runs stock SDPA; candidates are built only for diagnostics
    engines = ("masked", "flex")  # accepted by both, run by neither: full attention is stock SDPA
    family_order = 0

    @classmethod
    def mask(cls, cands, q_idx, kc, valid, allowed, always):
        return allowed
