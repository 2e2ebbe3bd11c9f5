"""Which request each query-key comparison belongs to, when lm-eval decides how requests become forwards.

lm-eval sorts, batches and (for one-token continuations) merges requests before the model sees them, so
the cost of a document cannot be read off a counter around "its" forward. The ledger records instead:

- after every forward (`HFLM._model_call` / `_model_generate`), the comparisons the patched attention's
  counters added (`forward(...)`);
- after every result lm-eval produces, which request it answered (`answered(key)`: lm-eval reports each
  result through its cache hook right after the forward that computed it).

`settle()` then charges each forward to the requests answered since the previous forward: split evenly
between the rows of a batch and between requests that shared one forward (lm-eval's logits cache), the
remainder to the first, so the charges sum exactly to the counters. Forwards that answered nothing yet
(the windows of a rolling loglikelihood, whose one result comes after its last window) carry over to the
next request answered. Pure Python, no torch: tests drive it directly.
"""
from typing import Any, Callable, Dict, Hashable, List, Sequence, Tuple

COST_FIELDS = ("comparisons", "full_comparisons", "tokens")
Cost = Dict[str, int]


def zero_cost() -> Cost:
    return dict.fromkeys(COST_FIELDS, 0)


def add_costs(a: Cost, b: Cost) -> Cost:
    return {k: a.get(k, 0) + b.get(k, 0) for k in COST_FIELDS}


def split_cost(cost: Cost, parts: int) -> List[Cost]:
    """`parts` shares summing exactly to `cost`: equal, the remainder of each field to the first share."""
    shares = []
    for i in range(parts):
        share = {}
        for key in COST_FIELDS:
            base, rest = divmod(int(cost.get(key, 0)), parts)
            share[key] = base + (rest if i == 0 else 0)
        shares.append(share)
    return shares


class CostLedger:
    """Forwards and the requests they answered, in order; `read_totals()` -> the counters' cumulative
    (comparisons, full_comparisons) (the patched model's CostMeter; (0, 0) for an unpatched model)."""

    def __init__(self, read_totals: Callable[[], Tuple[int, int]]):
        self._read = read_totals
        self._last = tuple(read_totals())
        self._entries: List[Tuple[Cost, List[Hashable]]] = []  # (one forward's cost, requests it answered)

    def forward(self, tokens: int) -> None:
        """A forward just finished: record what the counters added since the previous one."""
        now = tuple(self._read())
        cost = {"comparisons": now[0] - self._last[0], "full_comparisons": now[1] - self._last[1],
                "tokens": int(tokens)}
        self._last = now
        self._entries.append((cost, []))

    def answered(self, key: Hashable) -> None:
        """lm-eval produced the result of request `key` (from the latest forward)."""
        if not self._entries:  # a result with no forward before it (a cached one): it costs nothing
            self._entries.append((zero_cost(), []))
        self._entries[-1][1].append(key)

    def settle(self) -> Tuple[List[Tuple[Hashable, Cost]], Cost]:
        """(key, cost) per answered request in answer order, and the cost no request took (forwards after
        the last answer). Clears the ledger."""
        charged: List[Tuple[Hashable, Cost]] = []
        carry = zero_cost()
        for cost, keys in self._entries:
            cost = add_costs(carry, cost)
            if not keys:
                carry = cost
                continue
            carry = zero_cost()
            charged += list(zip(keys, split_cost(cost, len(keys))))
        self._entries = []
        return charged, carry


def assign(requests: Sequence[Any], charged: List[Tuple[Hashable, Cost]], key: Callable[[Any], Hashable]
           ) -> List[Cost]:
    """The cost of each request (in `requests` order) from settle()'s (key, cost) list. Requests with equal
    keys (identical inputs, so identical work) take the charges of that key first come, first served; a
    request never answered costs nothing."""
    queues: Dict[Hashable, List[Cost]] = {}
    for k, cost in charged:
        queues.setdefault(k, []).append(cost)
    out = []
    for request in requests:
        queue = queues.get(key(request))
        out.append(queue.pop(0) if queue else zero_cost())
    return out
