"""Atomic file writes: a temporary file in the same folder, flushed and fsynced, then renamed over the target.

A reader (or a process restarted after a crash) sees either the old file or the new one, never half of one.
Used for every JSON, checkpoint and result file the project writes.

A write that fails (disk full, file size limit, quota, permissions) removes its temporary file, leaves the old
target untouched and raises AtomicWriteError: an OSError (errno and filename kept) whose message names the file
and says what went wrong in words. A process killed outright (kill -9, power loss) can leave its temporary file
behind: `.<name>.<random>.partial` beside the target, never taken for the target; `remove_stale_temp_files`
clears them for targets that have a single writer (checkpoints do this before each write).
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
from pathlib import Path

TEMP_SUFFIX = ".partial"

_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EFBIG: "file too large (over the file size limit; no room for it)",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "input/output error (a failing disk?)",
}


class AtomicWriteError(OSError):
    """Writing a file failed; the previous file (if any) is unchanged and no temporary file is left."""

    def __init__(self, path: Path, cause: OSError):
        code = cause.errno
        super().__init__(code, cause.strerror or str(cause), str(path))
        name = errno.errorcode.get(code, f"errno {code}") if code is not None else type(cause).__name__
        reason = _REASONS.get(code, cause.strerror or str(cause))
        self.message = (f"cannot write {path}: {reason} ({name}); "
                        + ("the previous file is unchanged" if path.exists() else "nothing was written")
                        + " and no temporary file is left")

    def __str__(self) -> str:
        return self.message


def temp_prefix(path: Path) -> str:
    return f".{path.name}."


def atomic_write_bytes(path, data: bytes) -> Path:
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:   # the name is ours before the file exists: an exception at any moment leaves it to remove
            tmp = _temp_name(path)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                break
            except FileExistsError:   # another writer's name (O_EXCL: never taken, never removed here)
                tmp = None
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except BaseException as e:
        if tmp is not None:
            try:
                Path(tmp).unlink(missing_ok=True)
            except OSError:
                pass
        if isinstance(e, OSError) and not isinstance(e, AtomicWriteError):
            raise AtomicWriteError(path, e) from e
        raise
    _fsync_dir(path.parent)  # the rename itself survives a power loss
    return path


def _temp_name(path: Path) -> Path:
    """A temporary file's name beside `path`: `.<name>.<16 hex>.partial`. Chosen here rather than by
    tempfile.mkstemp, which can take a Ctrl-C between creating its file and returning the name, leaving a file no
    one knows to remove."""
    return path.parent / f"{temp_prefix(path)}{secrets.token_hex(8)}{TEMP_SUFFIX}"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory; the data itself is already synced
        pass
    finally:
        os.close(fd)


def remove_stale_temp_files(folder, targets: str) -> list[Path]:
    """Remove the temporary files left in `folder` by writes killed before their rename, for the target file
    names that match the regular expression `targets`; returns the files removed.

    Only for targets with a single writer: another process's write in progress would lose its temporary file."""
    # _temp_name's names (16 hex digits), and tempfile.mkstemp's (8 characters) of files written before it
    pattern = re.compile(r"\.(?:" + targets + r")\.(?:[0-9a-f]{16}|[a-z0-9_]{8})" + re.escape(TEMP_SUFFIX))
    removed = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if pattern.fullmatch(entry.name):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except FileNotFoundError:
                pass
    return removed


def atomic_write_json(path, obj, indent: int = 2) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=indent, default=_jsonable) + "\n").encode())


def _jsonable(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
