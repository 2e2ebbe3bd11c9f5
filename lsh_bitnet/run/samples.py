"""Per-sample / per-window records: `samples.jsonl` in the run directory, one JSON line per item.

Each line is written and flushed as soon as its item is scored, so a run stopped after 64 of 100
samples keeps the 64 (and `partial_metrics()` turns them into the same metric fields, with
intervals, that a finished run reports). The records let a researcher re-score a run or compare two
variants sample by sample. Metric functions take `sink=None`; the runner passes a SampleLog.

Record fields (docs/RESULTS.md): `index` (window or sample index in the whole dataset), `tokens`,
then by the task's record kind (lsh_bitnet/tasks/_records.py): perplexity `nll` (summed over the window's
`predicted` tokens), `predicted`, `bytes`; accuracies `prediction`, `target`, `correct` (+ `choice`,
`choice_correct` for the synthetic task, `depth` for passkey). With a cost tracker, `comparisons` and `full_comparisons`
that the item's forwards added (all layers, as in results.json `cost`; split evenly between the
windows of one batch when eval.batch_size > 1), and under attention.apply_to=decode also `decode_comparisons`,
`decode_full_comparisons` (the sparse phase's, whose ratio the tables read).
"""
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from lsh_bitnet.run.results import file_mode
from lsh_bitnet.tasks.base import RecordKind, record_kind

SAMPLES_FILE = "samples.jsonl"
COST_KEYS = ("comparisons", "full_comparisons")
DECODE_COST_KEYS = ("decode_comparisons", "decode_full_comparisons")  # only in apply_to=decode runs' cost


class SampleLog:
    def __init__(self, path, seed: int = 0, kind: Optional[RecordKind] = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.seed = seed  # for the bootstrap of partial_metrics(), as in the finished run
        self.kind = kind  # the task's record kind (None: read from the records)
        self.records: List[Dict[str, Any]] = []
        self._cost: Optional[Callable[[], Dict[str, Any]]] = None
        self._keys = COST_KEYS  # the cumulative counts each record gets its share of
        self._last: Dict[str, int] = {}
        self._file = _fresh_file(self.path)

    def track_cost(self, cost_summary: Callable[[], Dict[str, Any]]) -> None:
        """cost_summary() -> dict with cumulative `comparisons`, `full_comparisons` (patch.cost_summary)."""
        self._cost = cost_summary
        totals = cost_summary()
        self._keys = COST_KEYS + tuple(k for k in DECODE_COST_KEYS if k in totals)
        self._last = {k: int(totals[k]) for k in self._keys}

    def write(self, record: Dict[str, Any]) -> None:
        self.write_batch([record])

    def write_batch(self, records: List[Dict[str, Any]]) -> None:
        """Items scored by one forward: the cost it added is shared evenly between them (the counters
        see the batch, not its rows; the remainder goes to the first), so records still sum to `cost`."""
        records = [dict(r) for r in records]
        if self._cost is not None and records and all(k in r for r in records for k in COST_KEYS):
            # charged already (metric=lm_eval's ledger): keep them, and start the next delta from here
            totals = self._cost()
            self._last = {k: int(totals[k]) for k in self._keys}
        elif self._cost is not None and records:
            totals = self._cost()
            for key in self._keys:
                delta = int(totals[key]) - self._last[key]
                self._last[key] = int(totals[key])
                share, rest = divmod(delta, len(records))
                for i, record in enumerate(records):
                    record[key] = share + (rest if i == 0 else 0)
        self.records.extend(records)
        if not self._file.closed:
            self._file.write("".join(json.dumps(r) + "\n" for r in records))
            self._file.flush()  # the lines survive a SIGINT / SIGTERM / OOM kill of the process

    def __len__(self) -> int:
        return len(self.records)

    def partial_metrics(self) -> Dict[str, Any]:
        """The metric fields over the items written so far, flagged `partial: true`."""
        return {**summarize(self.records, seed=self.seed, kind=self.kind), "partial": True}

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "SampleLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fresh_file(path: Path):
    """An empty file at `path`, opened for writing: a rerun of a failed or interrupted job starts its record
    afresh, like its results.json. Made beside it and renamed over it, so whatever was at `path` (a symlink
    planted in the run dir, say) is replaced, never written through to its target."""
    fd, tmp = tempfile.mkstemp(prefix=".samples-", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())  # mkstemp's 0600 would hide the records from teammates
        os.replace(tmp, path)
    except BaseException:
        os.close(fd)
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return os.fdopen(fd, "w", encoding="utf-8")


def summarize(records: List[Dict[str, Any]], seed: int = 0, kind: Optional[RecordKind] = None) -> Dict[str, Any]:
    """Metric fields with intervals from per-item records (what the task's evaluation also reports), by the
    records' kind (`kind`, else read from the records: lsh_bitnet.tasks.base.record_kind)."""
    out: Dict[str, Any] = {"n": len(records)}
    if not records:
        return out
    kind = kind or record_kind(None, records)
    if kind is not None:
        out.update(kind.summarize(records, seed=seed))
    return out
