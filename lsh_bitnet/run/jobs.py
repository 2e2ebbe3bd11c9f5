"""Per-job bookkeeping around results.json: the job lock and the resume key.

- `job_lock(dir)`: an exclusive, non-blocking flock on `<job dir>/.lsh_bitnet.lock`. Two sweeps into one
  directory would otherwise compute every job twice (and race on results.json); the second skips the
  job with one line naming the holder. The kernel drops the lock when its process dies, so a killed
  run never leaves a stale lock.
- `resume_key(...)`: config hash, code version (commit + hash of the diff when dirty), data content
  hash and weights fingerprint. Resume skips a job only when all four match its `ok` record.
- `fail_on_purpose(cfg)`: the failure-handling test hook. An environment variable, not a config key, so
  `--cfg job`, `--help` and completion never show it: `LSH_BITNET_FAIL_ON_PURPOSE=1` makes every job
  fail after validation; `LSH_BITNET_FAIL_ON_PURPOSE=seed=1` only the jobs whose resolved config has
  that value at that key (a sweep `seed=0,1` then has one ok and one failed job).
"""
import fcntl
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

LOCK_FILE = ".lsh_bitnet.lock"
FAIL_ENV = "LSH_BITNET_FAIL_ON_PURPOSE"
RESUME_PARTS = {"config_hash": "config", "code_version": "code version", "data": "data content",
                "weights": "weights"}


@contextmanager
def job_lock(job_dir: Path) -> Iterator[Optional[str]]:
    """Yields None when this process holds the job's lock, else a description of the holder."""
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(job_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            yield holder
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        try:
            yield None
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def job_busy(job_dir: Path) -> bool:
    """True while another process holds the job's lock (it is running that job now)."""
    path = Path(job_dir) / LOCK_FILE
    if not path.is_file():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def resume_key(cfg, record: Dict[str, Any], cache_dir: Path) -> Dict[str, Any]:
    from lsh_bitnet.models.checks import weights_fingerprint
    from lsh_bitnet.tasks.base import task_named

    return {"config_hash": record["config_hash"], "code_version": record["provenance"]["code_version"],
            "data": task_named(cfg.metric.name).data_fingerprint(cfg, cache_dir),
            "weights": weights_fingerprint(cfg.model)}


def resume_mismatch(previous: Optional[Dict[str, Any]], current: Dict[str, Any]) -> Optional[str]:
    """None when an ok record may be reused; else which parts differ ("code version, data content")."""
    if not previous:
        return "the resume key (not recorded: an older results.json)"
    differed = [label for key, label in RESUME_PARTS.items() if previous.get(key) != current.get(key)]
    return ", ".join(differed) or None


def fail_on_purpose(cfg) -> Optional[str]:
    """The error message when the test hook (FAIL_ENV) asks this job to fail, else None."""
    wanted = os.environ.get(FAIL_ENV, "").strip()
    if not wanted or wanted.lower() in ("0", "false", "no"):
        return None
    if "=" in wanted:
        from omegaconf import OmegaConf

        key, value = wanted.split("=", 1)
        if str(OmegaConf.select(cfg, key.strip(), default=None)).lower() != value.strip().lower():
            return None
    return f"{FAIL_ENV}={wanted}: this job fails by request (testing failure handling)"
