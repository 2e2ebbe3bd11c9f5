"""Converted-model cache: `cache_dir/models/<name>-<hash>/`, published atomically.

A cache entry is written into a temporary sibling directory and renamed into place only when
complete, so an interrupted conversion (Ctrl-C, SLURM preemption) never leaves a half cache, and two
jobs converting at once both end with a complete entry (the loser of the rename discards its copy).
"""
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator

META_FILE = "lsh_bitnet_meta.json"  # written last: its presence marks a complete entry


def short_hash(payload: Any, n: int = 12) -> str:
    """Stable hash of a JSON-able value (12 hex chars: collisions are not a concern at cache scale)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:n]


def file_fingerprint(path: Path, chunk: int = 1 << 20) -> Dict[str, Any]:
    """Size plus sha256 of the first and last MiB: cheap (2 MiB read), survives a reinstall that only
    changes mtime, and changes when the weights (stored after the GGUF header) change."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(chunk))
        f.seek(max(0, size - chunk))
        digest.update(f.read(chunk))
    return {"file": path.name, "size": size, "sha256_head_tail": digest.hexdigest()}


def entry_dir(cache_dir: Path, name: str, key: Any) -> Path:
    return Path(cache_dir).expanduser() / "models" / f"{name}-{short_hash(key)}"


def is_complete(entry: Path) -> bool:
    return (entry / META_FILE).is_file()


def _share(directory: Path) -> None:
    """mkdtemp (and safetensors) create owner-only modes; give the entry the umask's modes so a cache
    shared by a group (a cluster's scratch dir) is readable by its other users."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for path in directory.iterdir():
        os.chmod(path, 0o666 & ~umask)


@contextmanager
def publish(entry: Path, meta: Dict[str, Any]) -> Iterator[Path]:
    """Yield a temporary directory to write into; on success it becomes `entry` (with the meta file)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-", dir=entry.parent))
    try:
        yield tmp
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        _share(tmp)
        try:
            os.rename(tmp, entry)
        except OSError:
            if not is_complete(entry):  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
