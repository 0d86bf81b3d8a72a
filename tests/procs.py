"""Child processes for the tests that run nodes (ROS 1, ROS 2): a process whose output lines a thread collects,
so that a test waits for a line (an event) instead of sleeping; killing what was started; busy cores.
Imported by the test modules (conftest.py puts this folder on sys.path)."""

import os
import signal
import subprocess
import sys
import threading
import time

WAIT_S = 300   # the most any wait may take before the test fails (a node that never gets ready)


class Node:
    """A child process whose output lines a thread collects, so that a test can wait for a line (an event)."""

    def __init__(self, cmd, env, stdin=False):
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, start_new_session=True)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not any(text in line for line in self.lines):
                left = deadline - time.monotonic()
                assert not self._eof, f"{text!r} never came, the process ended:\n{''.join(self.lines)[-3000:]}"
                assert left > 0, f"{text!r} did not come within {timeout} s:\n{''.join(self.lines)[-3000:]}"
                self._cond.wait(left)

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = WAIT_S) -> tuple[int, str]:
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=30)
        return self.proc.returncode, self.output

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def kill_all(*nodes) -> None:
    """Kill every node that was started (None: not started yet) and is still running."""
    for node in nodes:
        if node is not None:
            node.kill()


def mfp_command(*args) -> list[str]:
    return [sys.executable, "-m", "mfp.eval.cli", *map(str, args)]


class BusyCores:
    """One busy-looping process per core this process may use: a saturated CPU, killed on exit."""

    def __enter__(self):
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                      for _ in range(len(os.sched_getaffinity(0)))]
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
            p.wait()
