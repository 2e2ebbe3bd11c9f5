"""Converted-model cache: `cache_dir/models/<name>-<hash>/`, published atomically, verified on every load.

A cache entry is written into a temporary sibling directory and renamed into place only when
complete, so an interrupted conversion (Ctrl-C, SLURM preemption) never leaves a half cache, and two
jobs converting at once both end with a complete entry (the loser of the rename discards its copy).
The meta file, written last, holds a manifest (size and content hash of every file): a damaged,
truncated or meta-less entry is reported in one line naming its path and rebuilt, never loaded.
Temporary directories of a killed conversion are removed by the next run on the same host.
"""
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

log = logging.getLogger(__name__)

META_FILE = "lsh_bitnet_meta.json"  # written last: its presence marks a complete entry
MANIFEST_KEY = "manifest"
HASH_CHUNK = 1 << 22
# A temporary directory of another host (a shared cache on a cluster) cannot be checked for a live
# owner; after this long no conversion can still be writing it (SmolLM2 converts in ~20 s).
STALE_TMP_AGE_S = 24 * 3600


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


def _hasher():
    # xxh3 reads ~8 GB/s (0.07 s for SmolLM2's 538 MB), cheap enough for every load; xxhash comes
    # with `datasets`. blake2b (~0.8 GB/s) if it is missing.
    try:
        import xxhash

        return "xxh3_128", xxhash.xxh3_128()
    except ImportError:
        return "blake2b", hashlib.blake2b()


def content_hash(path: Path) -> str:
    name, digest = _hasher()
    with open(path, "rb") as f:
        while block := f.read(HASH_CHUNK):
            digest.update(block)
    return f"{name}:{digest.hexdigest()}"


def manifest(directory: Path) -> Dict[str, Dict[str, Any]]:
    """{file name: {size, hash}} for every file of an entry but the meta file."""
    return {p.name: {"size": p.stat().st_size, "hash": content_hash(p)}
            for p in sorted(Path(directory).iterdir()) if p.is_file() and p.name != META_FILE}


def safetensors_problem(path: Path) -> Optional[str]:
    """Why a .safetensors file cannot be whole (None if its header and size agree): the 8-byte header
    length, the JSON header, and the end of the last tensor against the file size."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{path.name} is {size} bytes, shorter than a safetensors header"
        n = int.from_bytes(head, "little")
        if 8 + n > size:
            return f"{path.name}: header of {n} bytes runs past the end of the {size}-byte file (truncated)"
        try:
            header = json.loads(f.read(n))
        except ValueError:
            return f"{path.name}: header is not JSON (overwritten)"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        return f"{path.name}: tensors end at byte {8 + n + end} but the file has {size} (truncated or padded)"
    return None


def entry_problem(entry: Path) -> Optional[str]:
    """None when `entry` is complete and every file matches its manifest; otherwise what is wrong."""
    meta_path = entry / META_FILE
    if not meta_path.is_file():
        return f"no {META_FILE} (an interrupted or foreign write)"
    try:
        recorded = json.loads(meta_path.read_text()).get(MANIFEST_KEY)
    except (OSError, ValueError) as exc:
        return f"{META_FILE} unreadable ({exc})"
    if not recorded:
        return f"{META_FILE} has no checksums (written by an older lsh-bitnet)"
    present = {p.name for p in entry.iterdir() if p.is_file() and p.name != META_FILE}
    if present != set(recorded):
        return f"files differ from the manifest (missing {sorted(set(recorded) - present)}, extra {sorted(present - set(recorded))})"
    for name, want in recorded.items():
        path = entry / name
        if path.stat().st_size != want["size"]:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {want['size']} (truncated or replaced)"
        if name.endswith(".safetensors") and (why := safetensors_problem(path)):
            return why
        if content_hash(path) != want["hash"]:
            return f"{name} content differs from its checksum (overwritten or damaged)"
    return None


def check_cache_dir(cache_dir: Path, key: str) -> None:
    """The cache directory exists (or can be made) and takes new files; else a ConfigError naming `key`
    (cache_dir or LSH_BITNET_CACHE) and the fix, before any work. Tried, not judged from modes: root
    ignores them, and /proc or a read-only mount refuse whatever they say."""
    from lsh_bitnet.errors import ConfigError

    try:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=cache_dir, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(f"{key}={cache_dir} cannot hold the cache (converted models, token streams): "
                          f"{exc.strerror or exc}; set cache_dir=/a/writable/dir, or the LSH_BITNET_CACHE "
                          f"environment variable (used when cache_dir is null)") from exc


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


def _tmp_prefix(entry: Path) -> str:
    # Host and pid in the name: the next run can tell a dead conversion's leftovers from a live one's.
    return f".tmp-{entry.name}-{socket.gethostname()}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def clean_stale_tmp(models_dir: Path) -> list:
    """Remove `.tmp-*` / `.stale-*` directories left by killed conversions; returns what was removed."""
    removed = []
    if not models_dir.is_dir():
        return removed
    host, now = socket.gethostname(), time.time()
    for path in models_dir.iterdir():
        if not path.is_dir() or not path.name.startswith((".tmp-", ".stale-")):
            continue
        parts = path.name.rsplit("-", 3)  # [.tmp-<entry>, host, pid, random]
        dead = False
        if path.name.startswith(".stale-"):
            dead = True
        elif len(parts) == 4 and parts[1] == host and parts[2].isdigit():
            dead = not _pid_alive(int(parts[2]))
        if dead or now - path.stat().st_mtime > STALE_TMP_AGE_S:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        log.info(f"[lsh-bitnet] model cache: removed {len(removed)} leftover temporary dir(s) of killed "
                 f"conversions in {models_dir}")
    return removed


def discard(entry: Path) -> None:
    """Move a damaged entry aside (atomic, so no reader sees it half-deleted), then delete it."""
    aside = entry.parent / f".stale-{entry.name}-{os.getpid()}-{time.time_ns()}"
    try:
        os.rename(entry, aside)
    except FileNotFoundError:  # another process discarded it first
        return
    shutil.rmtree(aside, ignore_errors=True)


def check_or_discard(entry: Path) -> bool:
    """True when `entry` can be loaded; a damaged one is reported in one line and removed (False)."""
    clean_stale_tmp(entry.parent)
    if not entry.exists():
        return False
    problem = entry_problem(entry)
    if problem is None:
        return True
    log.warning(f"[lsh-bitnet] model cache {entry} is damaged: {problem}; rebuilding it")
    discard(entry)
    return False


@contextmanager
def publish(entry: Path, meta: Dict[str, Any]) -> Iterator[Path]:
    """Yield a temporary directory to write into; on success it becomes `entry` (with the meta file)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(entry), dir=entry.parent))
    try:
        yield tmp
        _share(tmp)
        meta = {**meta, MANIFEST_KEY: manifest(tmp)}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        os.chmod(tmp / META_FILE, 0o666 & ~_umask())
        try:
            os.rename(tmp, entry)
        except OSError:
            if entry.exists() and entry_problem(entry) is not None:
                discard(entry)  # a damaged entry in the way (e.g. no meta file): replace it
                try:
                    os.rename(tmp, entry)
                except OSError:
                    if not is_complete(entry):
                        raise
            elif not is_complete(entry):  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
