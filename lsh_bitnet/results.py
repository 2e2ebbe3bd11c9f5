"""results.json: atomic writing, provenance (lm-evaluation-harness style) and the config hash used by resume."""
import datetime as dt
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any, Dict, Optional

RESULTS_FILE = "results.json"
SCHEMA_VERSION = 1
# Keys that do not change what a run computes: two configs differing only here are the same run.
HASH_EXCLUDED_KEYS = ("resume", "eval.progress", "extra", "cache_dir")
_REPO_ROOT = Path(__file__).resolve().parent.parent


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def config_hash(config: Dict[str, Any]) -> str:
    pruned = json.loads(json.dumps(config))  # deep copy
    for dotted in HASH_EXCLUDED_KEYS:
        *parents, leaf = dotted.split(".")
        node = pruned
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    canonical = json.dumps(pruned, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _git(*args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=_REPO_ROOT, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


_PROVENANCE_CACHE: Dict[str, Any] = {}


def versions() -> Dict[str, Optional[str]]:
    import hydra
    import torch
    import transformers

    from lsh_bitnet import __version__

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "hydra": hydra.__version__,
        "lsh_bitnet": __version__,
    }


def provenance() -> Dict[str, Any]:
    if not _PROVENANCE_CACHE:  # git calls cost ~10 ms each: once per process is enough
        status = _git("status", "--porcelain", "--untracked-files=no")
        _PROVENANCE_CACHE.update(
            git_hash=_git("rev-parse", "HEAD"),
            git_dirty=None if status is None else bool(status),
            hostname=socket.gethostname(),
            argv=list(sys.argv),
        )
    return {**_PROVENANCE_CACHE, "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID")}


def error_record(exc: BaseException) -> Dict[str, str]:
    message = str(exc).strip().splitlines()
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "summary": f"{type(exc).__name__}: {message[0] if message else ''}",
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }


def write_json_atomic(path: Path, payload: Dict[str, Any]) -> None:
    """Write to a temp file in the same directory, fsync, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".results-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_results(output_dir: Path) -> Optional[Dict[str, Any]]:
    path = Path(output_dir) / RESULTS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
