"""attention=window: only the always-attend sets, sinks plus a local window (StreamingLLM-style; SPEC section 3).

Its sizes are the shared always-attend fields, with defaults of its own. A gap reference (report/gap.py):
the rule that knows nothing about the query."""
from dataclasses import dataclass

from lsh_bitnet.attention.rules.base import Rule
from lsh_bitnet.config import AttentionConfig
from lsh_bitnet.registry import RULES


@dataclass
class WindowAttentionConfig(AttentionConfig):
    name: str = "window"
    sink_tokens: int = 4
    local_window: int = 64


@RULES.register
class WindowAttention(Rule):
    name = "window"
    schema = WindowAttentionConfig
    engines = ("masked", "flex")  # flex: the always pass alone (a band and columns of blocks)
    reference = "lower"
    family_order = 40

    @classmethod
    def mask(cls, cands, q_idx, kc, valid, allowed, always):
        return always & allowed
