"""Local text files the config names (dataset.path, hasher.calibration_path): what is wrong with a path,
in words, and a read that can neither hang nor hold off a signal.

- `path_problem(path)` stats the path (never opens it) and says what it is when it is not a readable
  regular file: "does not exist", "is a directory", "is a symlink loop", "is not a regular file (a
  FIFO)", ... Cheap and torch-free: the config checks call it before anything loads.
- `read_text_file(path, key, max_bytes)` opens with O_NONBLOCK (a FIFO put in place after the check
  cannot block the open), refuses anything but a regular file (fstat of the open file: /dev/urandom
  never ends), and reads in chunks from Python with an optional byte limit, so the SIGTERM / SIGINT
  handlers (recorded `interrupted`) run between chunks instead of waiting for one endless C-level read.
"""
import codecs
import errno
import os
import stat
from pathlib import Path
from typing import Optional

from lsh_bitnet.errors import ConfigError

READ_CHUNK = 1 << 22  # 4 MiB per read: a signal waits for one chunk at most
FILE_KINDS = ((stat.S_ISDIR, "is a directory"), (stat.S_ISFIFO, "is not a regular file (a FIFO)"),
              (stat.S_ISCHR, "is not a regular file (a character device)"),
              (stat.S_ISBLK, "is not a regular file (a block device)"),
              (stat.S_ISSOCK, "is not a regular file (a socket)"))


def _kind(mode: int) -> Optional[str]:
    return next((words for test, words in FILE_KINDS if test(mode)), None)


def path_problem(path) -> Optional[str]:
    """None for a readable regular file (symlinks followed); else what the path is, e.g. "is a directory"."""
    path = Path(path).expanduser()
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symlink loop"
        if exc.errno == errno.ENOENT and os.path.islink(path):
            return f"is a broken symlink (to {os.readlink(path)}, which does not exist)"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return "does not exist"
        return f"cannot be reached ({exc.strerror})"
    if _kind(mode) is not None:
        return _kind(mode)
    if not os.access(path, os.R_OK):
        return "is not readable (permission denied)"
    return None


def read_text_file(path, key: str = "dataset.path", max_bytes: Optional[int] = None) -> str:
    """The UTF-8 text of a regular file (its first max_bytes bytes when given, a character cut at the limit
    dropped). Newlines are kept as they are, so bits_per_byte counts what is on disk."""
    path = Path(path)
    fix = "point it at a regular UTF-8 text file"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ConfigError(f"{key}={str(path)!r} {path_problem(path) or f'cannot be opened ({exc.strerror})'}: "
                          f"{fix}") from exc
    pieces, decoder, offset = [], codecs.getincrementaldecoder("utf-8")(), 0
    with os.fdopen(fd, "rb", buffering=0) as f:
        mode = os.fstat(fd).st_mode  # of what was opened: the path may have changed since it was checked
        if not stat.S_ISREG(mode):
            raise ConfigError(f"{key}={str(path)!r} {_kind(mode) or 'is not a regular file'}: {fix}")
        at_end = False
        while max_bytes is None or offset < max_bytes:
            chunk = f.read(READ_CHUNK if max_bytes is None else min(READ_CHUNK, max_bytes - offset))
            if not chunk:
                at_end = True
                break
            try:
                pieces.append(decoder.decode(chunk))
            except UnicodeDecodeError as exc:
                raise ConfigError(f"{key}={str(path)!r} is not UTF-8 text (byte {offset + exc.start}: {exc.reason}): "
                                  f"convert it, e.g. iconv -f latin1 -t utf-8") from exc
            offset += len(chunk)
    try:
        pieces.append(decoder.decode(b"", final=at_end))  # at a byte limit, a character cut in two is dropped
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{key}={str(path)!r} is not UTF-8 text (it ends inside a character): convert it, "
                          f"e.g. iconv -f latin1 -t utf-8") from exc
    return "".join(pieces)
