"""submitit / SLURM specifics of a sweep: jobs that die without a result, and sbatch refusing the array.

- `dead_jobs_recorded(config)`: while a submitit launcher collects its jobs' results, a job that ended
  without one (scancel, time limit, OOM kill, node failure) is recorded in its results.json and the sweep
  goes on to its summary, instead of ending with submitit's UncompletedJobError.
- `submission_explained(launcher)`: when sbatch refuses the array (a request no node can meet, a dead
  controller, SLURM_CONF pointing at nothing) or there is no SLURM here at all, the sweep ends with one line
  naming the `hydra.launcher` field or the fix (scripts/slurm/start.sh, SLURM_CONF) instead of submitit's
  traceback; nothing was submitted.
"""
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional

from omegaconf import DictConfig

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


# ----------------------------------------------------------------------------- sbatch refusing the array
# sbatch's words (lower case) -> the hydra.launcher fields that ask for that resource. First match wins:
# the specific messages come before "Requested node configuration is not available", which SLURM adds to
# most of them.
SBATCH_FIELDS = (
    ("cpu count per node can not be satisfied", ("cpus_per_task",)),
    ("more processors requested than permitted", ("cpus_per_task", "tasks_per_node")),
    ("memory specification can not be satisfied", ("mem_gb",)),
    ("invalid generic resource", ("gpus_per_node", "gres")),
    ("invalid partition", ("partition",)),
    ("invalid account", ("account",)),
    ("invalid qos", ("qos",)),
    ("time limit", ("timeout_min",)),
    ("node count specification invalid", ("nodes",)),
    ("requested node configuration is not available", ("cpus_per_task", "mem_gb", "gpus_per_node", "constraint")),
)
# sbatch could not reach slurmctld, or found no configuration to tell it where slurmctld is.
CONTROLLER_DOWN = ("unable to contact slurm controller", "configuration source", "configuration file",
                   "slurm.conf", "socket timed out", "connection refused", "zero bytes were transmitted")
START_HINT = ("on a single machine start one with `bash scripts/slurm/start.sh` and run "
              "`eval \"$(bash scripts/slurm/start.sh --env)\"` (docs/SLURM.md)")


def _sbatch_errors(stderr: str) -> List[str]:
    """sbatch's `sbatch: error: ...` / `sbatch: fatal: ...` lines, without the prefix."""
    found = []
    for line in stderr.splitlines():
        for tag in ("error:", "fatal:"):
            if tag in line:
                found.append(line.split(tag, 1)[1].strip())
                break
    return found or [" ".join(stderr.split())[:300]]


def _slurm_conf() -> str:
    conf = os.environ.get("SLURM_CONF")
    if conf is None:
        return "SLURM_CONF is unset (SLURM's built-in default path is used)"
    return f"SLURM_CONF={conf}" + ("" if Path(conf).is_file() else ", which does not exist")


def explain_sbatch_failure(stderr: str, launcher: Optional[DictConfig]) -> str:
    """One line: what sbatch refused, the hydra.launcher field(s) to change (with their values) or the fix."""
    errors = _sbatch_errors(stderr)
    said = "; ".join(errors)
    text = said.lower()
    if any(words in text for words in CONTROLLER_DOWN) or not Path(os.environ.get("SLURM_CONF", "/")).exists():
        return (f"sbatch cannot reach the SLURM controller ({said}); {_slurm_conf()}: check that slurmctld runs "
                f"and SLURM_CONF names its slurm.conf; {START_HINT}. Nothing was submitted")
    for words, fields in SBATCH_FIELDS:
        if words in text:
            values = ", ".join(f"hydra.launcher.{f}={(launcher or {}).get(f)}" for f in fields
                               if launcher is None or f in launcher)
            return (f"sbatch refused the sweep ({said}): change {values or 'the hydra.launcher field it names'} to "
                    f"what a node of the partition has (`sinfo -o '%P %c %m %G'` lists each partition's CPUs, "
                    f"memory in MB and GPUs). Nothing was submitted")
    return (f"sbatch refused the sweep ({said}): fix the hydra.launcher field it names (docs/SLURM.md). "
            f"Nothing was submitted")


@contextmanager
def submission_explained(launcher: Optional[DictConfig]) -> Iterator[None]:
    """While a SLURM launcher submits: sbatch's refusal, a missing sbatch / srun, become a SweepError (one line)."""
    import submitit
    from submitit.slurm.slurm import SlurmExecutor

    from lsh_bitnet.run.sweep import SweepError

    original = SlurmExecutor._submit_command

    def submit(self, command):
        try:
            return original(self, command)
        except submitit.core.utils.FailedJobError as exc:  # sbatch exited non-zero; exc holds its stderr
            raise SweepError(explain_sbatch_failure(str(exc), launcher)) from None
        except FileNotFoundError as exc:  # no sbatch on PATH
            raise SweepError(f"launcher=slurm: `sbatch` is not on PATH ({exc.filename}): run the sweep where SLURM's "
                             f"client is installed, or {START_HINT}. Nothing was submitted") from None

    SlurmExecutor._submit_command = submit
    try:
        yield
    except RuntimeError as exc:  # submitit's SlurmExecutor refuses to start without srun
        if "srun" not in str(exc):
            raise
        raise SweepError(f"launcher=slurm: no SLURM here (`srun` is not on PATH): run the sweep on a cluster's "
                         f"login node, or {START_HINT}; launcher=local runs the same jobs without SLURM") from None
    finally:
        SlurmExecutor._submit_command = original
