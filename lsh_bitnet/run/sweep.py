"""Sweep plumbing: deterministic job directory names, checks before launch, and the end-of-sweep summary.

A job of a sweep never raises out of the task function (launch.py records the failure in its
results.json and returns), so one failing job never stops or hides the others, whatever the launcher.
At the end of the sweep `SweepSummary` reads the results.json of *this* sweep's jobs (a reused sweep
dir may hold older ones), prints one count line, the failures grouped by identical error, and the
collected table, and exits non-zero if any of this sweep's jobs failed.
"""
import hashlib
import json
import logging
import os
import re
import sys
import uuid
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, List, Optional, Tuple

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lsh_bitnet.console import group_failures

# Long override lists would exceed the 255-byte file name limit: keep a readable head + hash.
MAX_DIRNAME = 240
RESOLVER = "job_dirname"
# This sweep's id, set at its start and inherited by its jobs (in-process, local or SLURM), which
# register their directory under <sweep dir>/MEMBERS_DIR/<id>/: the summary and exit code then cover
# this sweep's jobs only, not an older failed job left in a reused sweep dir.
SWEEP_ID_ENV = "LSH_BITNET_SWEEP_ID"
MEMBERS_DIR = ".lsh_bitnet_sweeps"
# submitit asks SLURM for its timeout signal (SIGUSR2) signal_delay_s before the limit; a job needs
# this long after it to start Python and write its record, or the signal lands before it runs.
MIN_JOB_S_AFTER_SIGNAL = 60
SWEEP_LOG = "sweep.log"


def job_dirname(override_dirname: str) -> str:
    """`attention=lsh,hasher.n_bits=4` -> a safe, deterministic directory name for that job."""
    if not override_dirname:
        return "default"
    # Absolute paths (dataset.path=/data/x/valid.txt) would push the swept keys out of the name:
    # keep their last component, and the hash below keeps two different paths apart.
    shortened = re.sub(r"(?<==)/[^,]*/([^,/]*)", r"\1", override_dirname)
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", shortened)
    if shortened != override_dirname or len(name) > MAX_DIRNAME:
        digest = hashlib.sha1(override_dirname.encode()).hexdigest()[:10]
        name = f"{name[:MAX_DIRNAME - 11]}~{digest}"
    return name


def register_resolvers() -> None:
    """Every resolver conf/ uses: job directory names here, --help's in lsh_bitnet.cli."""
    from lsh_bitnet.cli import register_help_resolvers

    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, job_dirname)
    register_help_resolvers()


def register_job(output_dir: Path) -> None:
    """Called by the runner: mark `output_dir` as a job of the current sweep (one file per job: safe
    on a shared filesystem where appends from several nodes are not atomic)."""
    sweep_id = os.environ.get(SWEEP_ID_ENV)
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        if not sweep_id or hc.mode.name != "MULTIRUN":
            return
        members = Path(hc.sweep.dir) / MEMBERS_DIR / sweep_id
    except (ValueError, AttributeError):
        return
    members.mkdir(parents=True, exist_ok=True)
    (members / hashlib.sha1(str(output_dir).encode()).hexdigest()[:16]).write_text(str(output_dir))


def sweep_jobs(sweep_dir: Path, sweep_id: Optional[str]) -> Optional[List[Path]]:
    """The job dirs registered by sweep `sweep_id` (None when unknown: then every job in the dir counts)."""
    members = Path(sweep_dir) / MEMBERS_DIR / str(sweep_id)
    if not sweep_id or not members.is_dir():
        return None
    return sorted({Path(p.read_text()) for p in members.iterdir() if p.is_file()})


def sweep_status(sweep_dir: Path, sweep_id: Optional[str] = None
                 ) -> Tuple[List[Path], List[Tuple[Path, str]], int]:
    """(ok job dirs, [(failed job dir, one-line error)], older job dirs in the sweep dir not counted)."""
    ok, failed = [], []
    jobs = sweep_jobs(sweep_dir, sweep_id)
    every = sorted(p.parent for p in Path(sweep_dir).rglob("results.json"))
    dirs = every if jobs is None else jobs
    # Registered dirs are absolute, a relative sweep dir's are not: compare resolved paths.
    older = len({p.resolve() for p in every} - {p.resolve() for p in dirs})
    from lsh_bitnet.run.jobs import job_busy

    for job in dirs:
        if jobs is not None and job_busy(job):
            continue  # another sweep is running this job now: not this sweep's result to count
        try:
            record = json.loads((job / "results.json").read_text())
        except FileNotFoundError:
            failed.append((job, "no results.json: the job died before the runner started"))
            continue
        except (OSError, json.JSONDecodeError) as exc:
            failed.append((job, f"unreadable results.json: {type(exc).__name__}: {exc}"))
            continue
        if record.get("status") == "ok":
            ok.append(job)
        else:
            error = record.get("error")
            summary = error.get("summary") if isinstance(error, dict) else error
            failed.append((job, summary or f"status {record.get('status')!r}"))
    return ok, failed, older


def check_launcher(launcher: DictConfig) -> None:
    """Reject submitit time limits it cannot honour, before anything is submitted."""
    if launcher is None or "timeout_min" not in launcher:  # the basic (in-process) launcher has no limit
        return
    from lsh_bitnet.errors import ConfigError

    timeout_min, delay = launcher.get("timeout_min"), launcher.get("signal_delay_s") or 0
    if timeout_min is None or timeout_min < 1:
        raise ConfigError(f"hydra.launcher.timeout_min={timeout_min}: SLURM time limits are whole minutes >= 1")
    if timeout_min * 60 < delay + MIN_JOB_S_AFTER_SIGNAL:
        need = -(-(delay + MIN_JOB_S_AFTER_SIGNAL) // 60)
        raise ConfigError(
            f"hydra.launcher.timeout_min={timeout_min} with hydra.launcher.signal_delay_s={delay}: submitit asks "
            f"SLURM for its timeout signal {delay} s before the limit, which leaves the job under "
            f"{MIN_JOB_S_AFTER_SIGNAL} s (it would be stopped as 'timed-out' almost at once); set "
            f"hydra.launcher.timeout_min>={need} or lower hydra.launcher.signal_delay_s")


def _logger(sweep_dir: Path) -> logging.Logger:
    """Console and <sweep dir>/sweep.log; not the root logger, which holds the last job's launch.log."""
    log = logging.getLogger("lsh_bitnet.run.sweep")
    log.setLevel(logging.INFO)
    log.propagate = False
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(console)
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(sweep_dir / SWEEP_LOG)
        file.setFormatter(logging.Formatter("[%(asctime)s] %(message)s"))
        log.addHandler(file)
    except OSError:
        pass
    return log


class SweepSummary(Callback):
    def __init__(self, collect: bool = True) -> None:
        self.collect = collect

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_launcher(config.hydra.get("launcher"))
        os.environ[SWEEP_ID_ENV] = uuid.uuid4().hex[:12]

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        log = _logger(sweep_dir)
        ok, failed, older = sweep_status(sweep_dir, os.environ.get(SWEEP_ID_ENV))
        if self.collect and (ok or failed):
            self._collect(sweep_dir, log)
        line = f"[lsh-bitnet] sweep {sweep_dir}: {len(ok)} ok, {len(failed)} failed"
        if older:
            line += f" ({older} older job dir(s) in this sweep dir not counted)"
        log.info(line)
        if failed:
            log.info("[lsh-bitnet] failures, grouped by error (full messages: each job's results.json):")
            for entry in group_failures(failed):
                log.info("  %s", entry)
            sys.stdout.flush()
            # SystemExit passes through Hydra's run_and_report, which only catches Exception.
            sys.exit(1)

    @staticmethod
    def _collect(sweep_dir: Path, log: logging.Logger) -> None:
        """The short table of every run (lsh_bitnet.report.brief: variant, metric with interval, cost ratios,
        n), then where the full tables and plots are; a collector error never fails the sweep."""
        try:
            from lsh_bitnet.report.collect import BRIEF_FILE, write_summary

            written = write_summary(sweep_dir)
            for line in written[BRIEF_FILE].read_text().rstrip().splitlines():  # one record per line: no blank
                log.info("%s", line)                                            # message lines in sweep.log
            plots = sorted(name for name in written if name.startswith("pareto_") and name.endswith(".png"))
            log.info("[lsh-bitnet] every column: %s (and summary_<metric>.csv); plots: %s", sweep_dir / "summary.md",
                     ", ".join(str(sweep_dir / p) for p in plots) or "none")
        except Exception as exc:  # noqa: BLE001  (the sweep's own result must still be reported)
            log.warning("[lsh-bitnet] collector failed (%s: %s); run `lsh-bitnet-collect %s` to retry",
                        type(exc).__name__, exc, sweep_dir)

# ----------------------------------------------------------------------------- validate before launching
def _grouped(errors: List[Tuple[str, str]]) -> str:
    by_message = defaultdict(list)
    for job, message in errors:
        by_message[message].append(job)
    lines = []
    for message, jobs in by_message.items():
        shown = ", ".join(jobs[:3]) + (f", ... ({len(jobs) - 3} more)" if len(jobs) > 3 else "")
        lines.append(f"  {len(jobs)} job(s): {message}  [{shown}]")
    return "\n".join(lines)


def check_jobs(loader, master_config: DictConfig, batch) -> None:
    """Our config-only checks on every job of a batch, before any starts: identical errors are printed
    once with their count; if no job is valid nothing is launched. Jobs that fail here still run (and
    fail in < 2 s without loading anything) so that each leaves its failed results.json."""
    from lsh_bitnet.errors import ConfigError
    from lsh_bitnet.validate import validate_fast

    errors = []
    for overrides in batch:
        cfg = loader.load_sweep_config(master_config=master_config, sweep_overrides=list(overrides))
        try:
            validate_fast(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))
        except Exception as exc:  # noqa: BLE001  (any config error is reported, none stops the check)
            errors.append((",".join(overrides) or "default", f"{type(exc).__name__}: {exc}"))
    if errors:
        print(f"[lsh-bitnet] sweep: {len(errors)} of {len(batch)} jobs have config errors:\n{_grouped(errors)}",
              file=sys.stderr, flush=True)
    if errors and len(errors) == len(batch):
        raise ConfigError("every job of the sweep has a config error (listed above); nothing was launched")


# ----------------------------------------------------------------------------- jobs that die without a result
INTERRUPTED_STATES = ("CANCELLED", "TIMEOUT", "PREEMPTED", "DEADLINE")


def _slurm_id(record: dict) -> Optional[str]:
    prov = record.get("provenance") or {}
    if prov.get("slurm_array_job_id") and prov.get("slurm_array_task_id") is not None:
        return f"{prov['slurm_array_job_id']}_{prov['slurm_array_task_id']}"
    return prov.get("slurm_job_id")


def record_dead_job(sweep_dir: Path, job, exc: BaseException) -> dict:
    """A submitit job that ended without a result (scancel, time limit, OOM kill, node failure): mark its
    results.json (found by SLURM job id) if it still says running, and say so in one line."""
    from lsh_bitnet.run.results import error_record, utc_now, write_json_atomic

    state = str(getattr(job, "state", "UNKNOWN"))
    status = "interrupted" if state.split()[0] in INTERRUPTED_STATES else "failed"
    log_path = getattr(getattr(job, "paths", None), "stderr", None)
    message = (f"the SLURM job {job.job_id} ended {state} before the run finished (scancel, the time limit "
               f"hydra.launcher.timeout_min, an out-of-memory kill or a node failure); its log: {log_path}")
    found = None
    for path in Path(sweep_dir).rglob("results.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if _slurm_id(record) == str(job.job_id):
            found = path
            if record.get("status") == "running":
                record.update(status=status, error={**error_record(RuntimeError(message)), "slurm_state": state})
                record.setdefault("provenance", {})["finished_at"] = utc_now()
                write_json_atomic(path, record)
            break
    print(f"[lsh-bitnet] job {job.job_id} {status}: {message}; results: {found or 'none written'}",
          file=sys.stderr, flush=True)
    return {"status": status, "error": message, "results": str(found) if found else None}


@contextmanager
def dead_jobs_recorded(config: DictConfig):
    """While a submitit launcher collects its jobs' results, turn a job's UncompletedJobError into a
    recorded failure instead of an exception that ends the sweep before its summary."""
    import submitit
    from hydra.core.utils import JobReturn, JobStatus

    original = submitit.Job.results
    sweep_dir = Path(str(config.hydra.sweep.dir))

    def results(job):
        try:
            return original(job)
        except submitit.core.utils.UncompletedJobError as exc:
            try:
                overrides = list(job.submission().args[0])
            except Exception:  # noqa: BLE001  (the overrides only label the job)
                overrides = []
            value = record_dead_job(sweep_dir, job, exc)
            return [JobReturn(overrides=overrides, status=JobStatus.COMPLETED, _return_value=value)]

    submitit.Job.results = results
    try:
        yield
    finally:
        submitit.Job.results = original
