"""Keeping a Python control loop on its ticks: where the time goes and what the loop does about it.

Measured on the 2-core development machine (issue 15), the jitter of a 30 Hz loop came from:
- the kernel's scheduler: with other processes using every core, a thread that wakes for its tick waits for a
  core, up to a scheduler tick (4 ms here) or more; a lower nice value does not help under EEVDF (the running
  task keeps its slice). A real-time policy for the loop thread (SCHED_FIFO) does: the thread preempts the
  others at once (`realtime_thread`).
- the last part of the sleep: a single long wait wakes up to ~0.2 ms late even at real-time priority; the last
  `fine_s` before a tick are waited in slices of FINE_SLICE_S (`wait_until`).
- the garbage collector: a full collection walks every object of the process (about 210,000 with torch and the
  policy loaded: about 0.15 s here, four 30 Hz ticks). `gc.freeze()` after the warm-up moves them out of the
  collector's sight, so a collection during the loop walks only what the loop made (`quiet_gc`).
- the GIL: a thread waking for its tick needs the interpreter lock; another Python thread in the process (the
  simulated robot, ROS receive threads) keeps it up to the switch interval (5 ms by default)
  (`switch_interval`).
The network call on the loop thread costs its inference time at a chunk boundary; it overruns the period only
when the machine starves it (the loop counts such ticks as `overruns`).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import time

log = logging.getLogger("mfp.control")

GC_MODES = ("normal", "freeze", "off")
FINE_SLICE_S = 1e-4     # the short waits of the last part before a tick
_EPS = 1e-9             # a wait this close to its deadline is done (float rounding of a virtual clock)


def wait_until(deadline: float, clock, stop, fine_s: float = 0.0) -> bool:
    """Wait until `clock()` reaches `deadline` or `stop` (an EStop or threading.Event: `wait(timeout)`,
    `is_set()`) is set; True when stopped. One wait up to `fine_s` before the deadline, then waits of at most
    FINE_SLICE_S: a long sleep wakes late, a short one on time. Never returns before the deadline unless
    stopped. Every wait goes through `stop.wait`, so a virtual clock that moves in those waits works too."""
    while True:
        left = deadline - clock()
        if left <= _EPS:
            return stop.is_set()
        step = left - fine_s if left > fine_s + FINE_SLICE_S else min(left, FINE_SLICE_S)
        if stop.wait(step):
            return True


class GcPauses:
    """The garbage collector's pauses (ms) while it is installed in `gc.callbacks`."""

    def __init__(self):
        self.pauses_ms: list[float] = []
        self._started: float | None = None

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self.pauses_ms.append(1000 * (time.perf_counter() - self._started))
            self._started = None


@contextlib.contextmanager
def quiet_gc(mode: str = "freeze"):
    """The garbage collector during the loop; yields a GcPauses recording every collection meanwhile.
    normal: untouched. freeze: one collection, then `gc.freeze()`: what exists before the loop is never walked
    again; collections go on for what the loop makes; unfrozen after. off: as freeze, and the collector
    disabled during the loop; after it, enabled again (if it was) and one collection of what the loop made.
    The previous state comes back whatever ends the loop."""
    if mode not in GC_MODES:
        raise ValueError(f"gc mode must be one of {GC_MODES}, got {mode!r}")
    pauses, was_enabled = GcPauses(), gc.isenabled()
    if mode != "normal":
        gc.collect()
        gc.freeze()
    if mode == "off":
        gc.disable()
    gc.callbacks.append(pauses)
    try:
        yield pauses
    finally:
        gc.callbacks.remove(pauses)
        if mode == "off":
            if was_enabled:
                gc.enable()
            gc.collect()   # what the loop left: quick, the rest is still frozen
        if mode != "normal":
            gc.unfreeze()


@contextlib.contextmanager
def switch_interval(seconds: float):
    """Python's thread switch interval (`sys.setswitchinterval`) set to `seconds` meanwhile (0: unchanged)."""
    previous = sys.getswitchinterval()
    if seconds > 0:
        sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


@contextlib.contextmanager
def realtime_thread(priority: int):
    """The calling thread under SCHED_FIFO at `priority` (1-99) meanwhile, then its policy before; yields what
    was applied, for the report: "SCHED_FIFO <p>", "off" (priority 0), "kept <policy>" (the thread already had
    a real-time policy, e.g. under chrt) or "denied: <reason>" (no privilege: CAP_SYS_NICE or an RLIMIT_RTPRIO;
    logged, the loop runs at its normal priority). The kernel's real-time throttling (by default 95% of each
    second) keeps a runaway thread from taking a core entirely."""
    if priority <= 0 or not hasattr(os, "sched_setscheduler"):
        yield "off"
        return
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    if policy in (os.SCHED_FIFO, os.SCHED_RR):
        yield f"kept {'SCHED_FIFO' if policy == os.SCHED_FIFO else 'SCHED_RR'} {param.sched_priority}"
        return
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except OSError as e:
        log.warning("control loop: no real-time priority (%s): running at normal priority", e.strerror or e)
        yield f"denied: {e.strerror or e}"
        return
    _warn_about_worker_threads()
    try:
        yield f"SCHED_FIFO {priority}"
    finally:
        os.sched_setscheduler(0, policy, param)


def _warn_about_worker_threads() -> None:
    """A real-time loop thread whose network call waits on torch's intra-op threads (normal priority) waits as long
    as other processes keep those off the cores: say so when torch runs more than one."""
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else 1
    if threads > 1:
        log.warning("control loop: real-time loop thread, but torch runs %d intra-op threads at normal priority: "
                    "the network call waits for them on a busy machine (mfp control --threads 1)", threads)
