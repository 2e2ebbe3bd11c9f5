"""Prefill and decode phases (SPEC sections 3 and 4): which queries of a call use the rule, how they are counted
and timed.

attention.apply_to=all (the default) makes every query sparse; apply_to=decode is the MagicPIG / Quest protocol:
the prompt's queries attend to every causal key and only the generated tokens use the rule, over the KV cache
the dense prefill left, with the rule's state (key codes, the prompt's mean key) built at that prefill.

A call's queries are in the *prefill* phase when the call starts the sequence (Q == K: no KV cache yet) and, with
eval.sparse_from=N, only its first N queries (teacher-forced decoding in one forward: perplexity); every query of
a call over a KV cache (a decode step, a teacher-forced continuation) is in the *decode* phase. The phases split
the counts under both protocols; only apply_to=decode makes the prefill phase dense.
"""
import time
from dataclasses import dataclass, field
from typing import List, Optional

PREFILL, DECODE = 0, 1
PHASES = ("prefill", "decode")


@dataclass
class Protocol:
    apply_to: str = "all"  # all | decode (attention.apply_to)
    sparse_from: Optional[int] = None  # eval.sparse_from: the prefill of a call that starts the sequence ends here

    @property
    def dense_prefill(self) -> bool:
        return str(self.apply_to) == "decode"

    def prefill_queries(self, Q: int, K: int) -> int:
        """How many leading queries of a call with Q queries over K keys are in the prefill phase."""
        if Q < K:  # over a KV cache: every query is generated (or teacher-forced after the prompt)
            return 0
        return Q if self.sparse_from is None else min(int(self.sparse_from), Q)


@dataclass
class PhaseClock:
    """Wall time per phase of the model's forwards (hooks on the top-level module) and of the attention calls
    inside them, and the queries each phase ran: decode tokens per second and attention's share of a step.

    A forward is a decode forward when its first attention call runs over a KV cache. On CPU the times are exact
    (synchronous); on an accelerator they are launch times and left out (`enabled` False)."""
    enabled: bool = True
    forward_s: List[float] = field(default_factory=lambda: [0.0, 0.0])
    attention_s: List[float] = field(default_factory=lambda: [0.0, 0.0])
    forwards: List[int] = field(default_factory=lambda: [0, 0])
    queries: List[int] = field(default_factory=lambda: [0, 0])
    _start: Optional[float] = None
    _phase: Optional[int] = None
    _attention: float = 0.0

    def forward_started(self, *_args, **_kwargs) -> None:
        self._start, self._phase, self._attention = time.perf_counter(), None, 0.0

    def forward_ended(self, *_args, **_kwargs) -> None:
        if self._start is None or self._phase is None:  # a forward that ran no attention call: not a step
            self._start = None
            return
        self.forward_s[self._phase] += time.perf_counter() - self._start
        self.attention_s[self._phase] += self._attention
        self.forwards[self._phase] += 1
        self._start = None

    def attention(self, layer_idx: int, Q: int, K: int, seconds: float) -> None:
        """One attention call of the running forward (layer 0 decides the forward's phase and counts its queries)."""
        if self._start is None:
            return
        if self._phase is None:
            self._phase = DECODE if Q < K else PREFILL
            self.queries[self._phase] += Q
        self._attention += seconds

    def reset(self) -> None:
        self.__init__(enabled=self.enabled)

    def summary(self) -> dict:
        """Flat `timing` fields (docs/RESULTS.md): seconds, steps and tokens per phase; decode tokens/s; the share of
        each phase's forward time spent in attention. None where nothing ran or the clock is off."""
        out: dict = {}
        for p, name in enumerate(PHASES):
            ran = self.enabled and self.forwards[p] > 0
            out[f"{name}_forward_s"] = self.forward_s[p] if ran else None
            out[f"{name}_forwards"] = self.forwards[p] if ran else None
            out[f"{name}_tokens"] = self.queries[p] if ran else None
            share = self.attention_s[p] / self.forward_s[p] if ran and self.forward_s[p] > 0 else None
            out[f"{name}_attention_share"] = share
        s = out["decode_forward_s"]
        out["decode_tokens_per_s"] = out["decode_tokens"] / s if s else None
        return out


def install_clock(model, clock: PhaseClock) -> list:
    """Hooks on the top-level module timing each forward (so the LM head counts in a decode step); their handles."""
    return [model.register_forward_pre_hook(clock.forward_started),
            model.register_forward_hook(clock.forward_ended)]
