"""results.json: atomic strict-JSON writing, provenance (lm-evaluation-harness style) and the resume key.

Importing this module (and writing a record) imports no torch: a config error must be reported in
well under the ~2-5 s that importing torch and transformers costs.
"""
import datetime as dt
import hashlib
import json
import math
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
HASH_EXCLUDED_KEYS = ("resume", "eval.progress", "extra", "cache_dir", "baselines")
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


def _git(*args: str, strip: bool = True) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=_REPO_ROOT, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() if strip else out.stdout


_PROVENANCE_CACHE: Dict[str, Any] = {}
_CODE_VERSION: Dict[str, Optional[str]] = {}


def _dist_version(name: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def versions() -> Dict[str, Any]:
    """Installed versions, read from package metadata: importing torch just to print its version
    would cost seconds before a config error could be reported. `plugins`: every loaded lsh_bitnet plug-in
    (entry-point name -> its target and its package's version), since a plug-in's rule can change numbers."""
    from lsh_bitnet import __version__
    from lsh_bitnet.registry import PLUGINS, PLUGIN_VERSIONS

    return {
        "python": platform.python_version(),
        "torch": _dist_version("torch"),
        "transformers": _dist_version("transformers"),
        "hydra": _dist_version("hydra-core"),
        "lsh_bitnet": __version__,
        "plugins": dict(PLUGINS),
        "plugin_versions": dict(PLUGIN_VERSIONS),
    }


def code_version() -> Optional[str]:
    """`<commit>` for a clean checkout, `<commit>+dirty.<hash of the diff>` otherwise (tracked files
    only, against HEAD), None outside git. Part of the resume key: an edited kernel must rerun."""
    if "value" not in _CODE_VERSION:  # once per process: a sweep does not change its own code
        commit = _git("rev-parse", "HEAD")
        diff = _git("diff", "HEAD", "--binary", strip=False) if commit else None
        if commit and diff:
            commit = f"{commit}+dirty.{hashlib.sha256(diff.encode()).hexdigest()[:12]}"
        _CODE_VERSION["value"] = commit
    return _CODE_VERSION["value"]


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
            "slurm_array_job_id": os.environ.get("SLURM_ARRAY_JOB_ID"),
            "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID")}


def error_record(exc: BaseException) -> Dict[str, str]:
    message = str(exc).strip().splitlines()
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "summary": f"{type(exc).__name__}: {message[0] if message else ''}",
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }


NONFINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def strict(value: Any) -> Any:
    """A copy with every non-finite float replaced by the string "NaN" / "Infinity" / "-Infinity":
    bare NaN is not JSON and strict parsers (jq, JavaScript, pandas' engine='ujson') reject the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return NONFINITE[repr(value)]
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def nonfinite_paths(value: Any, prefix: str = "") -> list:
    """Dotted paths of the non-finite floats in a nested dict/list (e.g. ['perplexity', 'nll'])."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [prefix or "<value>"]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in nonfinite_paths(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in nonfinite_paths(v, f"{prefix}[{i}]")]
    return []


def file_mode() -> int:
    """0666 minus the umask (0644 under the usual 022): mkstemp's 0600 hid results from teammates."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_json_atomic(path: Path, payload: Dict[str, Any]) -> None:
    """Write strict JSON to a temp file in the same directory, fsync, then rename: readers never see
    half a file, and the file has the umask's mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".results-", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "w") as f:
            json.dump(strict(payload), f, indent=2, default=str, allow_nan=False)
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
