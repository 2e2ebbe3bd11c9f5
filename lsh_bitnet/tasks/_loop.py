"""The per-sample loop the generation metrics share (synthetic, passkey): which samples, progress, records.

Samples run one at a time (no padding, so the attention sees exactly the prompt). Progress goes through
console.progress: a bar on a terminal, periodic log lines elsewhere (SLURM, a log file).
"""
from typing import Any, Callable, Dict, List, Sequence

from lsh_bitnet.console import progress
from lsh_bitnet.config import config_value

Row = Dict[str, Any]



def select(items: Sequence, eval_cfg, what: str = "samples") -> List:
    """items[eval.batch_offset:], capped at eval.max_batches * eval.batch_size (items are evaluated one at a time)."""
    if not items:
        raise ValueError(f"no {what} to evaluate: set dataset.n_samples >= 1")
    offset = config_value(eval_cfg, "batch_offset", 0) or 0
    if offset < 0:
        raise ValueError(f"eval.batch_offset must be >= 0 (got {offset})")
    if offset >= len(items):
        raise ValueError(f"eval.batch_offset={offset} skips all {len(items)} {what}: lower it, or raise dataset.n_samples")
    items = list(items)[offset:]
    if eval_cfg.max_batches is not None:
        items = items[: eval_cfg.max_batches * eval_cfg.batch_size]
    return items


def score_each(samples: Sequence, score: Callable[[Any], Row], record: Callable[[Any, Row], Row],
               rates: Sequence[str], desc: str, eval_cfg, sink=None) -> List[Row]:
    """score(sample) for each sample in order; record(sample, row) goes to `sink` (a SampleLog) as soon as
    the sample is scored, so an interrupted run keeps it. `rates`: boolean row fields whose running mean
    the progress shows (e.g. ("correct",))."""
    rows: List[Row] = []
    hits = dict.fromkeys(rates, 0)
    bar = progress(samples, desc=desc, unit="sample", disable=not config_value(eval_cfg, "progress", True))
    for sample in bar:
        row = score(sample)
        rows.append(row)
        if sink is not None:
            sink.write(record(sample, row))
        for k in rates:
            hits[k] += bool(row[k])
        bar.set_postfix({k: f"{hits[k] / len(rows):.3f}" for k in rates})
    return rows


def prompt_token_fields(rows: Sequence[Row]) -> Row:
    lengths = [r["prompt_tokens"] for r in rows]
    return {"mean_prompt_tokens": sum(lengths) / len(lengths), "min_prompt_tokens": min(lengths),
            "max_prompt_tokens": max(lengths)}
