"""An append-only results file (JSON lines) that survives crashes and concurrent writers.

Each result is one line, appended under an exclusive lock and fsynced before the call returns, so a finished job
is never lost and two suite processes can share one file. A line cut short by a crash (the only damage an append
can leave) is skipped with a warning when the file is read.
"""

from __future__ import annotations

import fcntl
import json
import os
import warnings
from pathlib import Path


def row_kind(row: dict) -> str:
    """A row's "kind": "expert" or "policy"; rows written before the field existed are policy rows."""
    return row.get("kind", "policy")


class ResultsFile:
    def __init__(self, path):
        self.path = Path(path)

    def rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        rows = []
        with open(self.path, "rb") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    warnings.warn(f"{self.path}: line {n} is not valid JSON (cut short by a crash?); skipped",
                                  stacklevel=2)
        return rows

    def append(self, row: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = (json.dumps(row, sort_keys=True) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # a previous writer killed mid-line left no newline: start on a fresh line so this row stays whole
            size = os.fstat(fd).st_size
            if size:
                with open(self.path, "rb") as f:
                    f.seek(size - 1)
                    if f.read(1) != b"\n":
                        data = b"\n" + data
            os.write(fd, data)
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
