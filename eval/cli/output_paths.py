"""Every output path of a command, checked before the command does any work.

A command that rolls out a whole evaluation, or trains for an hour, must not find out at the end that it cannot
write its results. Each `mfp` command lists the paths it will write and calls `check_outputs` first:

    check_outputs([Output("--out", run_dir, FOLDER, "run folder"),
                   Output("--out", run_dir / "config.json", FILE, "run config")])

An output is refused with one line (OutputPathError, a ValueError: `mfp COMMAND: error: ...`, exit status 2) that
names the flag, the path and why:
  - a folder where a file is meant, or a file where a folder is meant;
  - a path under a file (a parent that is a regular file: the folders cannot be created);
  - a folder that cannot be written (read-only file system, permissions): tested by really creating
    and removing a temporary file in the folder the output goes into (or the nearest existing folder above it),
    not by the mode bits, which root ignores;
  - an existing path where the command needs a new one (`may_exist=False`);
  - a file appended to in place (`append=True`) that cannot be opened for appending.
Nothing is created or changed by a check that passes (the temporary file is removed; no folder is made).
"""

from __future__ import annotations

import errno
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

FILE, FOLDER = "file", "folder"

_REASONS = {
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
}


class OutputPathError(ValueError):
    """An output path the command cannot write; the message names the flag, the path and the reason."""


@dataclass(frozen=True)
class Output:
    """One path a command writes (None or "": nothing is written, nothing to check). kind: FILE or FOLDER. what:
    words for the message ("results JSON"). may_exist: False when the path must not exist yet. append: a file
    appended to in place (not replaced)."""

    flag: str
    path: Path | None
    kind: str = FILE
    what: str = ""
    may_exist: bool = True
    append: bool = False

    def __post_init__(self) -> None:
        if self.kind not in (FILE, FOLDER):
            raise ValueError(f"Output kind must be {FILE!r} or {FOLDER!r}, got {self.kind!r}")
        object.__setattr__(self, "path", Path(self.path) if self.path not in (None, "") else None)


def _reason(e: OSError) -> str:
    name = errno.errorcode.get(e.errno, "") if e.errno is not None else ""
    text = _REASONS.get(e.errno, e.strerror or str(e))
    return f"{text} ({name})" if name else text


def _write_test(folder: Path) -> str | None:
    """None when a file can be created in `folder` (really tried), else why not."""
    # A real attempt, not os.access or the mode bits: root writes into a chmod 555 folder anyway, and only an
    # attempt tells a read-only mount for certain.
    try:
        fd, tmp = tempfile.mkstemp(prefix=".mfp-write-test-", dir=folder)
    except OSError as e:
        return _reason(e)
    os.close(fd)
    try:
        os.unlink(tmp)
    except OSError as e:  # created but cannot be removed: the folder is not usable for atomic writes either
        return _reason(e)
    return None


def _describe(out: Output) -> str:
    what = f" ({out.what})" if out.what else ""
    return f"{out.flag} {out.path}{what}"


def check_output(out: Output, _tested: dict | None = None) -> None:
    """Refuse `out` with an OutputPathError when it cannot be written; see the module's docstring."""
    tested = {} if _tested is None else _tested
    path = out.path
    if path is None:
        return

    def writable(folder: Path, how: str) -> None:
        key = os.path.abspath(folder)
        if key not in tested:
            tested[key] = _write_test(folder)
        if tested[key] is not None:
            raise OutputPathError(f"{_describe(out)}: cannot write {how} {folder}: {tested[key]}")

    try:
        exists, is_dir = path.exists(), path.is_dir()
    except OSError as e:  # e.g. a name too long, a loop of links
        raise OutputPathError(f"{_describe(out)}: cannot use this path: {_reason(e)}") from None
    if exists:
        if not out.may_exist:
            raise OutputPathError(f"{_describe(out)}: already exists; choose a new path")
        if out.kind == FILE and is_dir:
            raise OutputPathError(f"{_describe(out)}: is a folder, but a file is meant here")
        if out.kind == FOLDER and not is_dir:
            raise OutputPathError(f"{_describe(out)}: is a file, but a folder is meant here")
        if out.kind == FOLDER:
            writable(path, "into")
            return
        writable(path.parent, "into its folder")  # atomic writes replace the file through a temporary beside it
        if out.append:
            try:
                with open(path, "ab"):
                    pass
            except OSError as e:
                raise OutputPathError(f"{_describe(out)}: cannot append to it: {_reason(e)}") from None
        return
    # Not there yet: the nearest existing folder above it must be a folder we can write (its folders are made).
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputPathError(f"{_describe(out)}: cannot be created: {parent} is a file, not a folder")
    writable(parent, "into" if parent == path.parent else "the folders it needs in")


def check_outputs(outputs) -> None:
    """Check every output (in order; the first problem is raised). Call before any work."""
    tested: dict = {}
    for out in outputs:
        check_output(out, tested)


def run_folder_outputs(flag: str, run_dir, eval_history: bool = False) -> list[Output]:
    """What a training run writes into its folder (mfp.policies.training.train): the folder, config.json, the
    checkpoints, TensorBoard's tb/, and eval.json when it evaluates during training."""
    run_dir = Path(run_dir)
    outputs = [Output(flag, run_dir, FOLDER, "run folder"), Output(flag, run_dir / "config.json", FILE, "run config"),
               Output(flag, run_dir / "last.safetensors", FILE, "checkpoint"),
               Output(flag, run_dir / "tb", FOLDER, "TensorBoard logs")]
    if eval_history:
        outputs.append(Output(flag, run_dir / "eval.json", FILE, "evaluations during training"))
    return outputs
