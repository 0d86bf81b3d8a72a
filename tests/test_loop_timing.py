"""The control loop's timing settings (eval/control/timing.py): what they set, that they undo it whatever ends the
loop, and that they validate. Behaviour only, on virtual clocks and recorded calls: no wall-clock figures (those
are `mfp bench control`'s)."""

import gc
import os
import sys

import numpy as np
import pytest

from mfp.eval.control.loop import UNTUNED, ControlConfig, ControlLoop
from mfp.eval.control.safety import EStop, SafetyConfig
from mfp.eval.control.timing import FINE_SLICE_S, GcPauses, quiet_gc, realtime_thread, switch_interval, wait_until
from mfp.eval.robots.base import Robot, TimedObservation


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class ClockStop(EStop):
    """A stop whose waits move the virtual clock: each by `fraction` of its timeout (below 1: a wait that wakes
    early); `waits` records every timeout; `stop_after` triggers it in that many-th wait."""

    def __init__(self, clock: Clock, fraction: float = 1.0, stop_after: int | None = None):
        super().__init__(clock)
        self.fraction, self.stop_after, self.waits = fraction, stop_after, []

    def wait(self, timeout: float) -> bool:
        if self.is_set():
            return True
        self.waits.append(timeout)
        if self.stop_after is not None and len(self.waits) >= self.stop_after:
            self.trigger("test")
            return True
        self.clock.t += timeout * self.fraction
        return False


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_wait_until_returns_no_earlier_than_its_deadline(fraction):
    """Also when every wait wakes early (fraction 0.5): it waits again."""
    clock = Clock()
    stop = ClockStop(clock, fraction)
    assert wait_until(clock.t + 0.0333, clock, stop, fine_s=0.001) is False
    assert clock.t >= 1000.0333 - 1e-9


def test_wait_until_waits_long_then_in_short_slices():
    clock = Clock()
    stop = ClockStop(clock)
    wait_until(clock.t + 0.0333, clock, stop, fine_s=0.001)
    assert stop.waits[0] == pytest.approx(0.0323)                 # one wait up to fine_s before the deadline
    assert len(stop.waits) > 5 and max(stop.waits[1:]) <= FINE_SLICE_S + 1e-12   # then short slices


def test_wait_until_without_fine_wait_is_one_wait_and_a_past_deadline_none():
    clock = Clock()
    stop = ClockStop(clock)
    assert wait_until(clock.t + 0.1, clock, stop, fine_s=0.0) is False and stop.waits == [pytest.approx(0.1)]
    assert wait_until(clock.t - 1.0, clock, stop, fine_s=0.001) is False and len(stop.waits) == 1


def test_wait_until_ends_at_a_stop_in_either_phase():
    for stop_after in (1, 3):
        clock = Clock()
        stop = ClockStop(clock, stop_after=stop_after)
        assert wait_until(clock.t + 0.05, clock, stop, fine_s=0.001) is True
        assert len(stop.waits) == stop_after


@pytest.fixture
def gc_state():
    """The collector as a test found it, put back after it."""
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    (gc.enable if enabled else gc.disable)()


def test_gc_off_disables_and_freezes_during_the_loop_and_restores_after_an_exception(gc_state):
    gc.enable()
    with pytest.raises(RuntimeError), quiet_gc("off"):
        assert not gc.isenabled() and gc.get_freeze_count() > 0
        raise RuntimeError("the loop failed")
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_gc_off_leaves_a_disabled_collector_disabled(gc_state):
    gc.disable()
    with quiet_gc("off"):
        pass
    assert not gc.isenabled()


def test_gc_freeze_keeps_collecting_what_the_loop_makes_and_records_pauses(gc_state):
    gc.enable()
    with quiet_gc("freeze") as pauses:
        assert gc.isenabled() and gc.get_freeze_count() > 0
        gc.collect()
    assert len(pauses.pauses_ms) == 1 and pauses.pauses_ms[0] >= 0
    assert gc.get_freeze_count() == 0 and pauses not in gc.callbacks


def test_gc_normal_changes_nothing_and_bad_modes_are_refused(gc_state):
    gc.enable()
    with quiet_gc("normal") as pauses:
        assert gc.isenabled() and gc.get_freeze_count() == 0 and isinstance(pauses, GcPauses)
    with pytest.raises(ValueError, match="gc mode"), quiet_gc("sometimes"):
        pass


def test_switch_interval_is_set_then_restored_even_after_an_exception():
    before = sys.getswitchinterval()
    with pytest.raises(KeyError), switch_interval(0.0005):
        assert sys.getswitchinterval() == pytest.approx(0.0005)
        raise KeyError
    assert sys.getswitchinterval() == before
    with switch_interval(0):
        assert sys.getswitchinterval() == before


class FakeScheduler:
    """os.sched_* for one thread, recorded instead of applied."""

    def __init__(self, monkeypatch, policy=os.SCHED_OTHER, refuse: bool = False):
        self.policy, self.priority, self.refuse, self.calls = policy, 0, refuse, []
        monkeypatch.setattr(os, "sched_getscheduler", lambda pid: self.policy)
        monkeypatch.setattr(os, "sched_getparam", lambda pid: os.sched_param(self.priority))
        monkeypatch.setattr(os, "sched_setscheduler", self.set)

    def set(self, pid, policy, param) -> None:
        if self.refuse:
            raise PermissionError(1, "Operation not permitted")
        self.calls.append((pid, policy, param.sched_priority))
        self.policy, self.priority = policy, param.sched_priority


def test_realtime_thread_sets_fifo_for_the_calling_thread_and_restores_it(monkeypatch):
    sched = FakeScheduler(monkeypatch)
    with pytest.raises(RuntimeError), realtime_thread(10) as applied:
        assert applied == "SCHED_FIFO 10" and sched.policy == os.SCHED_FIFO
        raise RuntimeError
    assert sched.calls == [(0, os.SCHED_FIFO, 10), (0, os.SCHED_OTHER, 0)]


def test_realtime_thread_off_denied_or_already_realtime_changes_nothing(monkeypatch):
    sched = FakeScheduler(monkeypatch)
    with realtime_thread(0) as applied:
        assert applied == "off"
    sched = FakeScheduler(monkeypatch, refuse=True)
    with realtime_thread(10) as applied:
        assert applied.startswith("denied")
    sched = FakeScheduler(monkeypatch, policy=os.SCHED_RR)
    with realtime_thread(10) as applied:
        assert applied.startswith("kept SCHED_RR")
    assert sched.calls == []


@pytest.mark.parametrize("bad", [{"gc_mode": "later"}, {"fine_wait_ms": -1.0}, {"fine_wait_ms": 100.0},
                                 {"switch_interval_ms": -0.5}, {"rt_priority": 100}, {"rt_priority": -1}])
def test_control_config_validates_the_timing_options(bad):
    with pytest.raises(ValueError):
        ControlConfig(rate_hz=30.0, **bad)


def test_untuned_is_a_valid_config_with_every_timing_setting_off():
    cfg = ControlConfig(rate_hz=30.0, **UNTUNED)
    assert (cfg.gc_mode, cfg.fine_wait_ms, cfg.switch_interval_ms, cfg.rt_priority) == ("normal", 0.0, 0.0, 0)


class StillRobot(Robot):
    """A robot that never moves: a fresh observation at every read, on the loop's clock; `seen` records the
    loop's timing state at each send; `fail_at` raises in that send (a robot error propagates out of the
    loop)."""

    action_dim = 2

    def __init__(self, clock: Clock, fail_at: int | None = None):
        self.clock, self.fail_at, self.seen, self.holds = clock, fail_at, [], 0

    def observe(self) -> TimedObservation:
        return TimedObservation(np.zeros((8, 3), np.float32), np.zeros(2, np.float32), self.clock(), self.clock())

    def send(self, action, t_exec) -> None:
        self.seen.append((gc.isenabled(), gc.get_freeze_count() > 0, sys.getswitchinterval()))
        if len(self.seen) == self.fail_at:
            raise OSError("the robot's link went down")

    def hold(self) -> None:
        self.holds += 1

    def stop(self) -> None:
        self.hold()


class ZeroActor:
    n_action_steps = 3

    def __init__(self):
        self.inference_ms: list[float] = []

    def reset(self, seed=None) -> None:
        pass

    def observe(self, obs) -> None:
        pass

    def predict_chunk(self) -> np.ndarray:
        return np.zeros((3, 2), np.float32)


@pytest.mark.parametrize("fail_at", [None, 4])
def test_the_loop_runs_its_ticks_under_its_settings_and_restores_them_whatever_ends_it(monkeypatch, gc_state,
                                                                                       fail_at):
    sched = FakeScheduler(monkeypatch)
    gc.enable()
    switch_before = sys.getswitchinterval()
    clock = Clock()
    robot = StillRobot(clock, fail_at)
    loop = ControlLoop(ZeroActor(), robot, ControlConfig(rate_hz=30.0, gc_mode="off", switch_interval_ms=0.5,
                                                         rt_priority=20, warmup_calls=1),
                       SafetyConfig(max_steps=6), estop=ClockStop(clock), clock=clock)
    if fail_at is None:
        report = loop.run()
        assert report.stop_reason == "step_limit" and report.steps == 6 and report.realtime == "SCHED_FIFO 20"
        assert report.overruns == 0 and report.summary()["gc_collections"] == 0
    else:
        with pytest.raises(OSError):
            loop.run()
        assert robot.holds >= 1                                   # the loop held the robot before propagating
    assert robot.seen and all(not enabled and frozen and interval == pytest.approx(0.0005)   # at every tick
                              for enabled, frozen, interval in robot.seen)
    assert gc.isenabled() and gc.get_freeze_count() == 0 and sys.getswitchinterval() == switch_before
    assert sched.calls == [(0, os.SCHED_FIFO, 20), (0, os.SCHED_OTHER, 0)]


def test_a_tick_that_starts_a_period_late_is_an_overrun():
    clock = Clock()

    class SlowActor(ZeroActor):
        def predict_chunk(self):
            clock.t += 0.08          # a network call longer than two 1/30 s periods
            return super().predict_chunk()

    report = ControlLoop(SlowActor(), StillRobot(clock), ControlConfig(rate_hz=30.0, warmup_calls=0, **UNTUNED),
                         SafetyConfig(max_steps=3), estop=ClockStop(clock), clock=clock).run()
    assert report.overruns >= 1 and report.dropped_actions >= 1


def test_a_realtime_loop_thread_warns_when_torch_runs_worker_threads(monkeypatch, caplog):
    FakeScheduler(monkeypatch)

    class Torch:
        @staticmethod
        def get_num_threads():
            return 2

    monkeypatch.setitem(sys.modules, "torch", Torch)
    with caplog.at_level("WARNING", logger="mfp.control"), realtime_thread(10):
        pass
    assert "2 intra-op threads" in caplog.text
