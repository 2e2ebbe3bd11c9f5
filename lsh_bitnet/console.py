"""What a run and a sweep print: one closing line per job, progress that suits where output goes.

Everything goes through `logging` (logger `lsh_bitnet`), so under Hydra the job's `launch.log` holds
it as well as the console. Progress: tqdm bars on a terminal; elsewhere (SLURM, `> file`, a pipe) a
bar's carriage-return redraws would fill the log, so `install_progress()` swaps in `LogProgress`,
which writes one log line every LOG_EVERY_S seconds or quarter of the work, whichever comes first.
"""
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

log = logging.getLogger("lsh_bitnet")

# Non-terminal progress: a line at least this often (seconds) and at each of these fractions done.
LOG_EVERY_S = 30.0
LOG_FRACTIONS = (0.25, 0.5, 0.75)
# Primary value per metric.name; kept here (not imported from pareto) so a run never imports pandas.
PRIMARY = {"perplexity": "perplexity", "synthetic_accuracy": "accuracy", "passkey_accuracy": "accuracy",
           "lm_eval": "accuracy"}
# Cost ratios named in the closing line, when the run reports them.
RATIOS = ("comparison_ratio", "mac_ratio")
MAX_ERROR_CHARS = 240  # a closing line stays a line; the full error is in results.json
JOB_NAME_CHARS = 48  # job dirs are named by their overrides: a few heads say which jobs, not all of each


def on_terminal(stream=None) -> bool:
    stream = stream if stream is not None else sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def _num(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _one_line(text: Any, limit: int = MAX_ERROR_CHARS) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def metric_text(metrics: Dict[str, Any], metric_name: Optional[str]) -> str:
    """`perplexity 24.13 [22.01, 26.35] (n=8)`: the primary value with its interval where recorded."""
    key = PRIMARY.get(str(metric_name)) or next((k for k, v in metrics.items() if isinstance(v, (int, float))), None)
    if key is None or key not in metrics:
        return "no metric recorded"
    text = f"{key} {_num(metrics[key])}"
    low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
    if low is not None and high is not None:
        text += f" [{_num(low)}, {_num(high)}]"
    n = metrics.get("n", metrics.get("n_windows", metrics.get("n_samples")))
    return text + (f" (n={n})" if n is not None else "")


def job_line(record: Dict[str, Any], results_path: Path) -> str:
    """The one line a job ends with: status, metric with interval, cost ratios, wall time, results path."""
    status = record.get("status")
    parts = [f"[lsh-bitnet] {status}" + (" (resumed: results.json already held this config)"
                                          if record.get("resumed") else "")]
    if status == "ok":
        metric_name = ((record.get("config") or {}).get("metric") or {}).get("name")
        parts.append(metric_text(record.get("metrics") or {}, metric_name))
        cost = record.get("cost") or {}
        ratios = [f"{k} {_num(cost[k])}" for k in RATIOS if cost.get(k) is not None]
        if ratios:
            parts.append(", ".join(ratios))
    else:
        error = record.get("error") or {}
        summary = error.get("summary") if isinstance(error, dict) else error
        parts.append(_one_line(summary or "no error recorded"))
    wall = (record.get("timing") or {}).get("wall_s")
    if wall is not None:
        parts.append(f"wall {wall:.1f} s")
    parts.append(str(results_path))
    return " | ".join(parts)


def report_job(record: Dict[str, Any], results_path: Path) -> str:
    """Log the closing line (ERROR level for a job that did not finish ok) and return it."""
    line = job_line(record, results_path)
    log.log(logging.INFO if record.get("status") == "ok" else logging.ERROR, line)
    return line


def group_failures(failed: List[Tuple[Any, str]], limit: int = 3) -> List[str]:
    """[(job, error), ...] -> one line per distinct error, most frequent first, with a count and a few jobs."""
    groups: Dict[str, List[str]] = {}
    for job, error in failed:
        groups.setdefault(_one_line(error), []).append(_one_line(getattr(job, "name", job), JOB_NAME_CHARS))
    lines = []
    for error, jobs in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        shown = ", ".join(jobs[:limit]) + (f", +{len(jobs) - limit} more" if len(jobs) > limit else "")
        lines.append(f"{len(jobs)} x {error}  [{shown}]")
    return lines


# ----------------------------------------------------------------------------- progress
def _tqdm_class():
    from tqdm.auto import tqdm

    return getattr(tqdm, "_lsh_bitnet_base", tqdm)  # the real class, even after install_progress()


class LogProgress:
    """The parts of tqdm's interface the project's loops use (iterate, update, set_postfix, close,
    context manager), writing log lines instead of redrawing a bar."""

    def __init__(self, iterable: Optional[Iterable] = None, desc: Optional[str] = None, total: Optional[float] = None,
                 unit: str = "it", disable: bool = False, **_: Any):
        self.iterable, self.desc, self.unit, self.disable = iterable, desc or "progress", unit, disable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self.postfix = total, 0, ""
        self.start = self.last = time.monotonic()
        self.next_fraction = 0

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: Optional[str] = None, refresh: bool = True) -> None:
        self.desc = desc or self.desc

    def refresh(self, *_: Any, **__: Any) -> None:
        pass

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        fractions = LOG_FRACTIONS
        crossed = False
        if self.total:
            while self.next_fraction < len(fractions) and self.n >= fractions[self.next_fraction] * self.total:
                self.next_fraction, crossed = self.next_fraction + 1, True
        if not self.disable and self.n != self.total and (crossed or now - self.last >= LOG_EVERY_S):
            self._log(now)

    def close(self) -> None:
        if not self.disable and self.n and self.last is not None:
            self._log(time.monotonic())
        self.last, self.disable = None, True  # closing twice logs once

    def _log(self, now: float) -> None:
        self.last = now
        elapsed = now - self.start
        done = f"{_si(self.n)}/{_si(self.total)} {self.unit}" if self.total else f"{_si(self.n)} {self.unit}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = f", {_si(self.n / elapsed)} {self.unit}/s" if elapsed > 0 else ""
        log.info("%s: %s%s in %.1f s%s%s", self.desc, done, pct, elapsed, rate,
                 f", {self.postfix}" if self.postfix else "")


def _si(value: float) -> str:
    """1120190 -> 1.12M: counts of characters and bytes stay readable."""
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e4, "k")):
        if abs(value) >= factor:
            return f"{value / (factor if suffix != 'k' else 1e3):.3g}{suffix}"
    return f"{value:.3g}" if isinstance(value, float) and not float(value).is_integer() else f"{value:g}"


def progress(iterable: Optional[Iterable] = None, *args: Any, **kwargs: Any):
    """tqdm(...) on a terminal, LogProgress(...) elsewhere; same arguments."""
    if on_terminal():
        return _tqdm_class()(iterable, *args, **kwargs)
    return LogProgress(iterable, *args, **kwargs)


def install_progress() -> bool:
    """Off a terminal: silence library bars (transformers, huggingface_hub, datasets) and make
    `from tqdm.auto import tqdm` give LogProgress, for the modules imported after this call (the
    metric loops are imported when a job starts). Returns True when it changed anything."""
    if on_terminal():
        return False
    for var in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        os.environ.setdefault(var, "1")  # read by transformers' and datasets' own bars
    import tqdm.auto

    base = _tqdm_class()

    class _LogTqdm(base):  # a subclass, so libraries that subclass tqdm.auto.tqdm still can
        _lsh_bitnet_base = base

        def __new__(cls, *args: Any, **kwargs: Any):
            if cls is not _LogTqdm:  # a library's own subclass keeps its behaviour (its bars are off, above)
                return base.__new__(cls, *args, **kwargs)
            return LogProgress(*args, **kwargs)

    tqdm.auto.tqdm = _LogTqdm
    return True
