"""Sweep plumbing: deterministic job directory names, checks before launch, and the end-of-sweep summary.

A job of a sweep never raises out of the task function (launch.py records the failure in its
results.json and returns), so one failing job never stops or hides the others, whatever the launcher.
At the end of the sweep `SweepSummary` reads the results.json of *this* sweep's jobs (a reused sweep
dir may hold older ones), prints one count line (ok, failed, interrupted, and skipped because another
process holds the job's lock, counted apart), the failures and interruptions grouped by identical error,
and the collected table, and exits non-zero if any of this sweep's jobs failed or was interrupted.
A sweep refused before launch (`SweepError`: a job config or a launcher setting that cannot work, sbatch
refusing the array) ends with one line naming the key and exit status 1.
"""
import hashlib
import json
import logging
import os
import re
import sys
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lsh_bitnet.console import group_failures
from lsh_bitnet.errors import ConfigError

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
# A member file's second line when the job was skipped: another process held its lock (jobs.job_lock).
SKIPPED_PREFIX = "skipped: "


class SweepError(ConfigError, CompactHydraException):
    """The sweep cannot start: Hydra prints a CompactHydraException as its message alone (no traceback, which
    for an error raised in the sweeper or launcher would be Hydra's whole stack) and exits 1."""


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


def _member_file(output_dir: Path) -> Optional[Path]:
    """This job's file under <sweep dir>/MEMBERS_DIR/<sweep id>/ (None outside a sweep)."""
    sweep_id = os.environ.get(SWEEP_ID_ENV)
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        if not sweep_id or hc.mode.name != "MULTIRUN":
            return None
        members = Path(hc.sweep.dir) / MEMBERS_DIR / sweep_id
    except (ValueError, AttributeError):
        return None
    return members / hashlib.sha1(str(output_dir).encode()).hexdigest()[:16]


def register_job(output_dir: Path) -> None:
    """Called by the runner: mark `output_dir` as a job of the current sweep (one file per job: safe
    on a shared filesystem where appends from several nodes are not atomic)."""
    member = _member_file(output_dir)
    if member is not None:
        member.parent.mkdir(parents=True, exist_ok=True)
        member.write_text(str(output_dir))


def mark_skipped(output_dir: Path, holder: str) -> None:
    """Called by the runner when another process holds the job's lock: the summary counts the job as
    skipped (whatever that process leaves in its results.json is not this sweep's result)."""
    member = _member_file(output_dir)
    if member is not None:
        member.parent.mkdir(parents=True, exist_ok=True)
        member.write_text(f"{output_dir}\n{SKIPPED_PREFIX}{holder}")


def _members(sweep_dir: Path, sweep_id: Optional[str]) -> Optional[Dict[Path, Optional[str]]]:
    """{job dir: why it was skipped, or None} registered by sweep `sweep_id` (None when unknown: then every
    job in the sweep dir counts)."""
    members = Path(sweep_dir) / MEMBERS_DIR / str(sweep_id)
    if not sweep_id or not members.is_dir():
        return None
    jobs: Dict[Path, Optional[str]] = {}
    for p in members.iterdir():
        if p.is_file():
            path, _, note = p.read_text().partition("\n")
            skipped = note[len(SKIPPED_PREFIX):] if note.startswith(SKIPPED_PREFIX) else None
            jobs[Path(path)] = jobs.get(Path(path)) or skipped
    return jobs


@dataclass
class SweepStatus:
    """A sweep's jobs by outcome; each list holds (job dir, one-line reason) but `ok`, which holds dirs."""
    ok: List[Path] = field(default_factory=list)
    failed: List[Tuple[Path, str]] = field(default_factory=list)
    interrupted: List[Tuple[Path, str]] = field(default_factory=list)
    skipped: List[Tuple[Path, str]] = field(default_factory=list)  # another process held the job's lock
    older: int = 0  # job dirs in the sweep dir that are not this sweep's

    def line(self) -> str:
        return (f"{len(self.ok)} ok, {len(self.failed)} failed, {len(self.interrupted)} interrupted, "
                f"{len(self.skipped)} skipped (another process held their lock)")


def sweep_status(sweep_dir: Path, sweep_id: Optional[str] = None) -> SweepStatus:
    """This sweep's jobs (every job in the dir without a sweep id) as ok / failed / interrupted / skipped."""
    status = SweepStatus()
    jobs = _members(sweep_dir, sweep_id)
    every = sorted(p.parent for p in Path(sweep_dir).rglob("results.json"))
    dirs = every if jobs is None else sorted(jobs)
    # Registered dirs are absolute, a relative sweep dir's are not: compare resolved paths.
    status.older = len({p.resolve() for p in every} - {p.resolve() for p in dirs})
    from lsh_bitnet.run.jobs import job_busy

    for job in dirs:
        if jobs is not None and (jobs[job] or job_busy(job)):  # another process runs it: not this sweep's result
            status.skipped.append((job, f"run by {jobs[job]}" if jobs[job] else "being run by another process"))
            continue
        try:
            record = json.loads((job / "results.json").read_text())
        except FileNotFoundError:
            status.failed.append((job, "no results.json: the job died before the runner started"))
            continue
        except (OSError, json.JSONDecodeError) as exc:
            status.failed.append((job, f"unreadable results.json: {type(exc).__name__}: {exc}"))
            continue
        if record.get("status") == "ok":
            status.ok.append(job)
            continue
        error = record.get("error")
        summary = (error.get("summary") if isinstance(error, dict) else error) or f"status {record.get('status')!r}"
        (status.interrupted if record.get("status") == "interrupted" else status.failed).append((job, summary))
    return status


def check_launcher(launcher: DictConfig) -> None:
    """Reject submitit time limits it cannot honour, before anything is submitted."""
    if launcher is None or "timeout_min" not in launcher:  # the basic (in-process) launcher has no limit
        return
    timeout_min, delay = launcher.get("timeout_min"), launcher.get("signal_delay_s") or 0
    if timeout_min is None or timeout_min < 1:
        raise SweepError(f"hydra.launcher.timeout_min={timeout_min}: SLURM time limits are whole minutes >= 1")
    if timeout_min * 60 < delay + MIN_JOB_S_AFTER_SIGNAL:
        need = -(-(delay + MIN_JOB_S_AFTER_SIGNAL) // 60)
        raise SweepError(
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
        # hydra.launcher is checked by the sweeper (check_launcher): Hydra turns a callback's exception
        # into a warning and goes on submitting.
        os.environ[SWEEP_ID_ENV] = uuid.uuid4().hex[:12]

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        log = _logger(sweep_dir)
        status = sweep_status(sweep_dir, os.environ.get(SWEEP_ID_ENV))
        if self.collect and (status.ok or status.failed or status.interrupted):
            self._collect(sweep_dir, log)
        line = f"[lsh-bitnet] sweep {sweep_dir}: {status.line()}"
        if status.older:
            line += f"; {status.older} older job dir(s) in this sweep dir not counted"
        log.info(line)
        for jobs, what in ((status.failed, "failures, grouped by error"),
                           (status.interrupted, "interrupted jobs, grouped by cause"),
                           (status.skipped, "skipped jobs (their results are the other process's)")):
            if jobs:
                log.info("[lsh-bitnet] %s (full messages: each job's results.json):", what)
                for entry in group_failures(jobs):
                    log.info("  %s", entry)
        if status.failed or status.interrupted:
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
        raise SweepError("every job of the sweep has a config error (listed above); nothing was launched")


# ----------------------------------------------------------------------------- SLURM (moved; names kept here)
from lsh_bitnet.run.slurm import INTERRUPTED_STATES, dead_jobs_recorded, record_dead_job  # noqa: E402,F401
