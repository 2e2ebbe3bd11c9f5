"""Record kinds: what one line of samples.jsonl holds, and how such lines pool, match and pair.

A task names its kind (`Task.record`); everything that reads per-item records (run/samples.py for the
metrics of an interrupted run, report/items.py, report/paired.py, report/gap.py) asks the kind, never the
record's keys. Two kinds cover the built-in tasks:

- `WindowRecords`: a perplexity window: `nll` summed over its `predicted` tokens, `bytes`, `tokens`.
- `SampleRecords`: a generated answer scored right or wrong: one boolean key per rate (`correct` ->
  `accuracy`, `choice_correct` -> `choice_accuracy`), plus `target` and `prompt_tokens`.

Torch-free, and pandas-free: the run side and the report side both import it.
"""
import math
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

Record = Dict[str, Any]


class RecordKind:
    """The interface; see WindowRecords and SampleRecords for the two built-in kinds."""

    name: str = "item"  # what one record is ("window", "sample"), for messages
    identity: Tuple[str, ...] = ()  # keys equal in two records of the same item (same text, same question)
    paired_columns: Tuple[str, ...] = ()  # the collector columns `paired` fills (report/paired.py)

    def keys(self) -> Tuple[str, ...]:
        """The outcome keys a record of this kind holds (and `holds` looks for)."""
        raise NotImplementedError

    def holds(self, record: Record) -> bool:
        """Whether `record` is of this kind: it has every outcome key."""
        return isinstance(record, dict) and all(key in record for key in self.keys())

    def same_item(self, a: Record, b: Record) -> bool:
        """Two records with one index scored the same window or sample (of the same dataset)."""
        return self.holds(a) and self.holds(b) and all(a.get(k) == b.get(k) for k in self.identity)

    def same_outcome(self, a: Record, b: Record) -> bool:
        """One config scoring one item twice: deterministic runs agree."""
        raise NotImplementedError

    def value(self, records: Sequence[Record]) -> float:
        """The task's primary metric pooled over `records` (non-empty)."""
        raise NotImplementedError

    def summarize(self, records: Sequence[Record], seed: int = 0) -> Dict[str, Any]:
        """Metric fields with intervals over `records` (non-empty), as a finished run reports them."""
        raise NotImplementedError

    def paired(self, run: Sequence[Record], base: Sequence[Record], seed: int = 0) -> Dict[str, Any]:
        """The paired statistic of a run against a baseline on matched records (run[i] and base[i] one item)."""
        raise NotImplementedError


class WindowRecords(RecordKind):
    """Perplexity windows: `nll` (nats, summed over the window's `predicted` tokens), `bytes`, `tokens`."""

    name = "window"
    identity = ("tokens", "predicted", "bytes")  # a window: its text decides all three
    paired_columns = ("paired_ratio", "paired_ratio_ci_low", "paired_ratio_ci_high")
    outcome, count = "nll", "predicted"

    def keys(self) -> Tuple[str, ...]:
        return (self.outcome,)

    def same_outcome(self, a: Record, b: Record) -> bool:
        # NLL agrees to float32 summation noise
        return abs(a[self.outcome] - b[self.outcome]) <= 1e-6 * max(abs(a[self.outcome]), 1.0)

    def value(self, records: Sequence[Record]) -> float:
        """exp(sum NLL / sum predicted tokens)."""
        return math.exp(sum(r[self.outcome] for r in records) / sum(r[self.count] for r in records))

    def summarize(self, records: Sequence[Record], seed: int = 0) -> Dict[str, Any]:
        from lsh_bitnet.stats import perplexity_fields

        out = dict(perplexity_fields([r[self.outcome] for r in records], [r[self.count] for r in records], seed=seed))
        total_bytes = sum(r.get("bytes", 0) for r in records)
        nll_bits = sum(r[self.outcome] for r in records) / 0.6931471805599453  # nats -> bits
        out.update({"n_windows": len(records), "bits_per_byte": nll_bits / total_bytes if total_bytes else None,
                    "tokens": sum(r["tokens"] for r in records)})
        return out

    def paired(self, run: Sequence[Record], base: Sequence[Record], seed: int = 0) -> Dict[str, Any]:
        """The run's perplexity over the baseline's on the same windows, with a paired bootstrap interval."""
        from lsh_bitnet.stats import paired_perplexity_ratio

        ratio, low, high = paired_perplexity_ratio([r[self.outcome] for r in run], [b[self.outcome] for b in base],
                                                   [r[self.count] for r in run], seed=seed)
        return dict(zip(self.paired_columns, (ratio, low, high)))


class SampleRecords(RecordKind):
    """Generated answers: `rates` maps each reported rate to the boolean record key it averages; the first is
    the primary one (its mean is the task's primary value, its difference the paired statistic)."""

    name = "sample"
    # `tokens` also counts the generated tokens, which differ between variants: not part of the identity.
    identity = ("target", "prompt_tokens")
    paired_columns = ("paired_delta", "paired_delta_ci_low", "paired_delta_ci_high", "paired_gains",
                      "paired_losses")

    def __init__(self, rates: Iterable[Tuple[str, str]] = (("accuracy", "correct"),), count: str = "n_samples"):
        self.rates = tuple(rates)  # ((metric field, record key), ...)
        self.count = count  # the metric field that counts the samples
        self.primary_key = self.rates[0][1]

    def keys(self) -> Tuple[str, ...]:
        return tuple(key for _, key in self.rates)

    def same_outcome(self, a: Record, b: Record) -> bool:
        return a.get(self.primary_key) == b.get(self.primary_key) and a.get("prediction") == b.get("prediction")

    def value(self, records: Sequence[Record]) -> float:
        return sum(bool(r[self.primary_key]) for r in records) / len(records)

    def summarize(self, records: Sequence[Record], seed: int = 0) -> Dict[str, Any]:
        from lsh_bitnet.stats import accuracy_fields

        (field, key), *others = self.rates
        out = {**accuracy_fields(field, [r[key] for r in records]), self.count: len(records)}
        for field, key in others:
            if key in records[0]:  # a rate added after some records were written: reported where present
                out.update(accuracy_fields(field, [r[key] for r in records]))
        return out

    def paired(self, run: Sequence[Record], base: Sequence[Record], seed: int = 0) -> Dict[str, Any]:
        """The run's accuracy minus the baseline's on the same samples (Newcombe interval), with the samples
        only the run (gains) or only the baseline (losses) answered."""
        from lsh_bitnet.stats import paired_accuracy_difference

        mine = [bool(r[self.primary_key]) for r in run]
        theirs = [bool(b[self.primary_key]) for b in base]
        delta, low, high = paired_accuracy_difference(mine, theirs)
        gains = sum(m and not t for m, t in zip(mine, theirs))
        losses = sum(t and not m for m, t in zip(mine, theirs))
        return dict(zip(self.paired_columns, (delta, low, high, gains, losses)))


def guess_record_kind(records: Iterable[Record], kinds: Sequence[RecordKind]) -> Optional[RecordKind]:
    """THE fallback, for records whose task is not known here (a run of a plug-in that is not installed, a caller
    that names no task): the kind among `kinds` (the registered tasks' kinds) whose outcome keys the first record
    holds; where several do, the one that holds the most keys (a synthetic record holds passkey's `correct` too).
    None when no kind fits: the caller then leaves the run's item-level figures empty."""
    first = next((r for r in records if isinstance(r, dict)), None)
    fitting = [kind for kind in kinds if first is not None and kind.holds(first)]
    return max(fitting, key=lambda kind: len(kind.keys()), default=None)  # the first of equals on a tie
