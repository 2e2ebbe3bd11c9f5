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
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

log = logging.getLogger("lsh_bitnet")

# Non-terminal progress: a line at least this often (seconds) and at each of these fractions done.
LOG_EVERY_S = 30.0
LOG_FRACTIONS = (0.25, 0.5, 0.75)
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


def one_line(text: Any, limit: int = MAX_ERROR_CHARS) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def metric_text(metrics: Dict[str, Any], metric_name: Optional[str]) -> str:
    """`perplexity 24.13 [22.01, 26.35] (n=8)`: the primary value with its interval where recorded."""
    from lsh_bitnet.tasks.base import find_task  # the primary field is the task's (registry; no pandas)

    task = find_task(metric_name)
    key = task.primary if task is not None else next((k for k, v in metrics.items() if isinstance(v, (int, float))),
                                                       None)
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
        parts.append(one_line(summary or "no error recorded"))
    wall = (record.get("timing") or {}).get("wall_s")
    if is_config_error(record):  # its wall time says nothing: the checks stopped it before any work
        parts.append("config error: nothing was evaluated")
    elif wall is not None:
        parts.append(f"wall {wall:.1f} s")
    if status == "ok":
        parts.append(str(results_path))
    else:  # a failed single run still leaves its outputs/<date>/<time>/: say so, and where
        parts.append(f"{_shown_path(Path(results_path).parent)}/ kept, its results.json says {status}")
    return " | ".join(parts)


def is_config_error(record: Dict[str, Any]) -> bool:
    """The run stopped on lsh_bitnet.errors.ConfigError: a value that cannot work, named with its fix."""
    error = record.get("error")
    return isinstance(error, dict) and error.get("type") == "ConfigError"


def _shown_path(path: Path) -> str:
    """Relative to the working directory when inside it (outputs/2026-01-01/12-00-00), else absolute."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def traceback_wanted() -> bool:
    """HYDRA_FULL_ERROR=1 (Hydra's own switch, read as Hydra reads it): show tracebacks of config errors too."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


@contextmanager
def config_errors_in_one_line(prefix: str = "[lsh-bitnet] config error: "):
    """A ConfigError raised inside becomes one line on stderr and exit status 1, without the traceback
    that Hydra would print for it (its own composition errors print none either). HYDRA_FULL_ERROR=1
    lets it through, so Hydra shows the full traceback."""
    from lsh_bitnet.errors import ConfigError

    try:
        yield
    except ConfigError as exc:
        if traceback_wanted():
            raise
        print(f"{prefix}{one_line(exc, 2000)}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def report_job(record: Dict[str, Any], results_path: Path) -> str:
    """Log the closing line (ERROR level for a job that did not finish ok) and return it."""
    line = job_line(record, results_path)
    log.log(logging.INFO if record.get("status") == "ok" else logging.ERROR, line)
    return line


FILE_ONLY = {"lsh_bitnet_file_only": True}  # `extra=` of a record meant for launch.log, not the console


class _NotOnConsole(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "lsh_bitnet_file_only", False)


def keep_file_only_lines_off_console() -> None:
    """Hydra's console handler (configured anew for each job) skips the records logged with FILE_ONLY; its
    file handler (launch.log) keeps them. Without this call (tests, scripts) they go everywhere."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler) \
                and not any(isinstance(f, _NotOnConsole) for f in handler.filters):
            handler.addFilter(_NotOnConsole())


def log_job_header(cfg: Any, job: Dict[str, Any]) -> None:
    """The first lines of a job's launch.log: what runs and where its results go (not on the console,
    where Hydra's own lines and the command say it). The model as loaded follows (log_model_loaded)."""
    from lsh_bitnet.models.checks import resolve_dtype

    model = cfg.model
    # model.dtype=auto: the dtype the device gets (the device is resolved by now, unless it is `auto` itself)
    dtype = model.dtype if str(model.device) == "auto" else resolve_dtype(model.dtype, model.device)
    overrides = " ".join(job.get("overrides") or []) or "(none: the defaults)"
    log.info("[lsh-bitnet] job: overrides %s", overrides, extra=FILE_ONLY)
    log.info("[lsh-bitnet] job: seed %s | device %s | model %s (%s, %s) | output dir %s", cfg.seed, model.device,
             model.name, model.get("name_or_path") or model.get("gguf_file") or "built in", dtype,
             job.get("output_dir"), extra=FILE_ONLY)


def log_model_loading(model: Any, converting: bool) -> None:
    """Said before the slow part of a job's start (importing torch and transformers, then the weights), so
    a run or the first job of a sweep says what it is doing at once instead of nothing for 20 s or more."""
    first = " (first use of this cache: converting the GGUF file, about 15-30 s)" if converting and \
        model.get("gguf_file") else ""
    log.info("[lsh-bitnet] loading model %s: importing torch and transformers, then the weights%s", model.name, first)


def log_model_loaded(info: Dict[str, Any]) -> None:
    """`model: SmolLM2-135M-Instruct (GGUF Q4_1, de-quantised to float32), 30 layers, on cpu, loaded in 0.8 s`."""
    how = ("reused (loaded by an earlier job of this process)" if info.get("model_cached")
           else f"loaded in {float(info.get('load_s') or 0):.1f} s ({info.get('loaded_from')})")
    log.info("[lsh-bitnet] model: %s, %s layers, %s params, on %s, %s", info.get("description"), info.get("n_layers"),
             _si(float(info.get("n_params") or 0)), info.get("device"), how)


def group_failures(failed: List[Tuple[Any, str]], limit: int = 3) -> List[str]:
    """[(job, error), ...] -> one line per distinct error, most frequent first, with a count and a few jobs."""
    groups: Dict[str, List[str]] = {}
    for job, error in failed:
        groups.setdefault(one_line(error), []).append(one_line(getattr(job, "name", job), JOB_NAME_CHARS))
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
        # At the rate so far, as tqdm's bar shows it on a terminal.
        left = f", ~{_duration(elapsed / self.n * (self.total - self.n))} left" \
            if self.total and 0 < self.n < self.total and elapsed > 0 else ""
        log.info("%s: %s%s in %.1f s%s%s%s", self.desc, done, pct, elapsed, rate, left,
                 f", {self.postfix}" if self.postfix else "")


def _duration(seconds: float) -> str:
    """42 s, 3.5 min, 2 h 05 min."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


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


# Libraries whose INFO lines are not ours to show: under Hydra the root logger is at INFO, and torch logs its
# FakeTensor cache statistics at exit, after the job's closing line (which must stay the log's last word).
QUIET_LOGGERS = ("torch",)


def quiet_libraries() -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


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
