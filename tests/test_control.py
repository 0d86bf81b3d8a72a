"""The control loop on the simulated robot (real MuJoCo, its own thread): scheduling, safety, faults, recording.

The loop and the robot share a virtual clock that moves only when the loop waits (`Lockstep`): before the clock
moves the robot finishes everything due, after it moves the robot acts on the new time. Each run is then the same
on an idle and on a saturated machine, and every timing figure (ticks, stamps, when a stop came) is exact."""

import numpy as np
import pytest

from mfp.demos.store import DemoStore
from mfp.eval.control.loop import ChunkScheduler, ControlConfig, ControlLoop
from mfp.eval.robots.base import TimedObservation
from mfp.eval.sim.rollout import ExpertActor
from mfp.eval.control.recorder import RunRecorder
from mfp.eval.control.safety import ActionFilter, EStop, SafetyConfig
from mfp.eval.robots.sim import SimRobot

TASK = "metaworld/drawer-open"


def test_scheduler_places_chunk_actions_on_ticks_and_drops_late_ones():
    s = ChunkScheduler(t0=100.0, period=0.1)
    chunk = np.arange(3, dtype=float)[:, None] * np.ones((1, 2))
    assert s.add_chunk(chunk, t_obs=100.02) == 0          # observed during tick 0 -> actions for ticks 1, 2, 3
    action, tick, dropped = s.due(100.105)
    assert (tick, dropped) == (1, 0) and action.tolist() == [0.0, 0.0]
    action, tick, dropped = s.due(100.31)                 # tick 2 was missed: its action is dropped as late
    assert (tick, dropped) == (3, 1) and action.tolist() == [2.0, 2.0]
    assert s.due(100.41)[0] is None                       # nothing planned: the caller holds
    assert s.add_chunk(chunk, t_obs=100.19, now=100.42) == 2   # an old observation: 2 of its slots are past
    assert s.due(100.43)[0].tolist() == [2.0, 2.0]
    assert s.add_chunk(chunk, t_obs=100.0, now=100.55) == 2    # all late: the last action still goes out now
    action, tick, _ = s.due(100.56)
    assert tick == 5 and action.tolist() == [2.0, 2.0]


def test_scheduler_ensemble_is_the_weighted_mean_oldest_first():
    s = ChunkScheduler(t0=0.0, period=0.1, blend="ensemble", decay=0.5)
    s.add_chunk(np.array([[1.0], [1.0]]), t_obs=0.0)      # predicts ticks 0, 1
    s.due(0.01)
    s.add_chunk(np.array([[3.0], [5.0]]), t_obs=0.1)      # predicts ticks 1, 2
    action, tick, _ = s.due(0.11)
    w = np.exp(-0.5 * np.arange(2))
    assert tick == 1 and action[0] == pytest.approx((w[0] * 1 + w[1] * 3) / w.sum())


def test_action_filter_clips_and_limits_change_per_step():
    f = ActionFilter(SafetyConfig(action_low=-1, action_high=1, max_delta=0.1), action_dim=2)
    a, notes = f(np.array([3.0, 0.05]))
    assert a.tolist() == pytest.approx([1.0, 0.05]) and notes == ["clipped 1 dims to the limits"]
    a, notes = f(np.array([0.0, 0.05]))
    assert a.tolist() == pytest.approx([0.9, 0.05]) and "rate-limited 1 dims" in notes[0]


class VirtualClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class Lockstep(EStop):
    """The loop's e-stop, whose waits move the virtual clock instead of sleeping: the robot first finishes what
    is due, then the clock moves on and the robot acts on the new time. `stop_at(t)` triggers the e-stop at
    virtual time t, in the middle of the wait that spans it."""

    def __init__(self, clock: VirtualClock):
        super().__init__(clock)
        self.robot = None
        self.trigger_at: float | None = None

    def stop_at(self, t: float) -> None:
        self.trigger_at = t

    def wait(self, timeout: float) -> bool:
        if self.is_set():
            return True
        assert self.robot.wait_idle(), "the simulated robot did not finish its step"
        target = self.clock.t + timeout
        if self.trigger_at is not None and self.trigger_at <= target:
            self.advance_to(max(self.trigger_at, self.clock.t))
            self.trigger("test")
            return True
        self.advance_to(target)
        return False

    def advance_to(self, t: float) -> None:
        self.clock.t = t
        self.robot.poke()
        assert self.robot.wait_idle(), "the simulated robot did not finish its step"


class _Robot(SimRobot):
    """The simulated robot, with a hook after each action sent (fault injection at a known step)."""

    def __init__(self, *args, on_send=None, **kw):
        self.on_send, self.sent = on_send, 0
        super().__init__(*args, **kw)

    def send(self, action, t_exec) -> None:
        super().send(action, t_exec)
        self.sent += 1
        if self.on_send is not None:
            self.on_send(self)


class _NoCamera(_Robot):
    """A robot whose camera never delivers anything."""

    def observe(self) -> TimedObservation | None:
        return None


def _run(actor, tmp_path, rate=20.0, safety=None, cfg=None, on_send=None, robot_cls=_Robot, seed=1_000_000,
         settle=4):
    """One run in lock-step; then `settle` more periods pass for the robot to act on what the loop left it."""
    clock = VirtualClock()
    estop = Lockstep(clock)
    robot = robot_cls(TASK, rate_hz=rate, seed=seed, publish_full_state=True, clock=clock, on_send=on_send)
    estop.robot, robot.lockstep = robot, estop
    recorder = RunRecorder(tmp_path / "run.zarr", robot.describe())
    loop = ControlLoop(actor, robot, cfg or ControlConfig(rate_hz=rate, warmup_calls=1), safety or SafetyConfig(),
                       estop=estop, recorder=recorder, clock=clock)
    try:
        t_start = clock()
        report = loop.run()
        for _ in range(settle):
            estop.advance_to(clock() + 1 / rate)
    finally:
        robot.close()
    report.t_start = t_start
    return report, robot, DemoStore.open(tmp_path / "run.zarr")


def test_closed_loop_solves_the_task_and_records_the_run(tmp_path):
    report, robot, store = _run(ExpertActor(TASK), tmp_path)
    assert report.stop_reason == "episode_end" and robot.success
    assert report.steps > 20 and report.holds == 0 and report.dropped_actions == 0
    assert robot.commanded_steps == report.steps
    assert store.n_episodes == 1 and len(store.read("action")) == report.steps
    obs_t, act_t = store.read("obs_time"), store.read("action_time")
    assert np.all(act_t[:, 0] <= act_t[:, 1]) and np.all(obs_t.min(1) == act_t[:, 0])  # chunk from that observation
    assert np.allclose(np.diff(act_t[:, 2]), 1 / 20)                                    # one per tick, in order
    assert np.allclose(act_t[1:, 1] - obs_t[1:].min(1), 1 / 20)    # each observation one period old: the last step's
    assert np.abs(store.read("action")).max() <= 1.0                                   # clipped to the limits
    (run,) = store.attrs["control_runs"]
    assert run["stop_reason"] == "episode_end" and "time_alignment" in store.attrs


def test_camera_that_stops_publishing_makes_the_robot_hold(tmp_path):
    period, frozen = 1 / 20, {}
    safety = SafetyConfig(max_obs_age_s=0.17, stale_stop_s=0.62)

    def freeze_after_5(robot):
        if robot.sent == 5:
            assert robot.wait_idle()   # the 5th step is taken and its (last fresh) cloud published
            frozen["t_cloud"] = robot.observe().t_cloud
            robot.freeze_camera()

    report, robot, store = _run(ExpertActor(TASK), tmp_path, safety=safety, on_send=freeze_after_5)
    stale = [e for e in report.events if e.kind == "stale_observation"]
    # stale from the first tick at which the cloud is more than 0.17 s old: 4 periods after its stamp
    assert stale and stale[0].t == pytest.approx(frozen["t_cloud"] + 4 * period)
    assert stale[0].t - frozen["t_cloud"] <= safety.max_obs_age_s + period
    assert report.stop_reason == "observations_lost" and report.steps == 8    # 5 + 3 fresh ticks still sent
    lost = next(e for e in report.events if e.kind == "observations_lost")
    assert lost.t - (frozen["t_cloud"] + 3 * period) == pytest.approx(13 * period)  # > 0.62 s after the last fresh
    assert report.holds == len(stale) == 12 and robot.commanded_steps == 8
    assert robot.hold_steps >= 3 and not robot.success
    assert store.n_episodes == 1 and store.attrs["control_runs"][0]["stop_reason"] == "observations_lost"


class _FaultyExpert(ExpertActor):
    """The expert, until its n-th network call: then it raises, or returns NaN."""

    def __init__(self, fail_at: int, nan: bool):
        super().__init__(TASK)
        self.calls, self.fail_at, self.nan = 0, fail_at, nan

    def predict_chunk(self):
        self.calls += 1
        if self.calls >= self.fail_at:
            if self.nan:
                return np.full((1, 4), np.nan, np.float32)
            raise RuntimeError("policy crashed")
        return super().predict_chunk()


def _holds_after(robot, steps: int) -> list[np.ndarray]:
    """What the robot executed after the loop's `steps` actions (and any hold among them)."""
    return robot.applied[steps:]


@pytest.mark.parametrize("nan", [False, True])
def test_policy_that_raises_or_returns_nan_stops_and_holds(tmp_path, nan):
    report, robot, store = _run(_FaultyExpert(fail_at=12, nan=nan), tmp_path)  # 1 warm-up call + 10 actions
    assert report.stop_reason == ("non_finite_action" if nan else "policy_error")
    assert report.steps == 10 and robot.commanded_steps == 10 and robot.hold_steps >= 2 and not robot.stopped
    assert all(np.allclose(a[:3], 0) for a in _holds_after(robot, 10))   # Meta-World hold: no end-effector motion
    assert store.read("action").shape == (10, 4) and np.isfinite(store.read("action")).all()


def test_non_finite_observation_stops_and_holds(tmp_path):
    def corrupt_after_6(robot):
        if robot.sent == 6:
            assert robot.wait_idle()
            robot.corrupt_state()   # a broken encoder: NaN state from now on

    report, robot, store = _run(ExpertActor(TASK), tmp_path, on_send=corrupt_after_6)
    assert report.stop_reason == "non_finite_observation" and report.steps == 6
    assert report.events[-1].kind == "non_finite_observation"
    assert robot.commanded_steps == 6 and robot.hold_steps >= 2 and not robot.stopped
    assert store.read("action").shape == (6, 4) and np.isfinite(store.read("state")).all()


def test_step_limit_ends_the_episode(tmp_path):
    report, robot, store = _run(ExpertActor(TASK), tmp_path, safety=SafetyConfig(max_steps=7))
    assert report.stop_reason == "step_limit" and report.steps == 7
    assert robot.commanded_steps == 7 and robot.hold_steps >= 2 and not robot.success
    assert len(store.read("action")) == 7 and store.attrs["control_runs"][0]["stop_reason"] == "step_limit"


def test_time_limit_ends_the_episode(tmp_path):
    report, robot, store = _run(ExpertActor(TASK), tmp_path, safety=SafetyConfig(max_time_s=0.52))
    stop = next(e for e in report.events if e.kind == "time_limit")
    assert report.stop_reason == "time_limit" and report.steps == 11      # ticks 0..10: at most 0.5 s in
    assert stop.t - report.t_start == pytest.approx(11 / 20)              # the first tick past 0.52 s
    assert robot.commanded_steps == 11 and robot.hold_steps >= 2


def test_no_observation_at_all_stops_the_robot(tmp_path):
    cfg = ControlConfig(rate_hz=20.0, warmup_calls=1, first_obs_timeout_s=0.5)
    report, robot, store = _run(ExpertActor(TASK), tmp_path, cfg=cfg, robot_cls=_NoCamera)
    (event,) = report.events
    assert report.stop_reason == "no_observation" and event.kind == "no_observation" and report.steps == 0
    assert event.t - report.t_start == pytest.approx(0.5, abs=0.01)    # waited its timeout on the clock
    assert robot.stopped and robot.commanded_steps == 0                # e-stopped: nothing will ever move it
    assert store.n_episodes == 0 and store.attrs["control_runs"][0]["stop_reason"] == "no_observation"


class _CountingActor:
    """Chunks of `horizon` actions, every action of call c (warm-up calls included) equal to 0.01 * c. Like
    PolicyRunner with its feature cache it times an encoding per observed frame (`encode_ms`: here the number of
    calls made before that frame, so a warm-up frame's entry is 0)."""

    def __init__(self, horizon: int = 4):
        self.horizon, self.calls, self.observed, self.inference_ms, self.encode_ms = horizon, 0, 0, [], []

    def reset(self, seed=None) -> None:
        pass

    def observe(self, obs) -> None:
        self.observed += 1
        self.encode_ms.append(float(self.calls))

    def predict_chunk(self) -> np.ndarray:
        self.calls += 1
        return np.full((self.horizon, 4), 0.01 * self.calls, np.float32)


def _chunks_covering(tick: int, horizon: int) -> list[int]:
    """The ticks whose chunks hold an action for `tick`, oldest first, in lock-step: the chunk made at tick 0
    starts from the reset observation (stamped at t0) and covers ticks 0..H-1; a later chunk starts from the
    observation of the step before (one period old), so its first action is already late and it covers m..m+H-2."""
    return [m for m in range(tick + 1) if (tick <= horizon - 1 if m == 0 else tick <= m + horizon - 2)]


@pytest.mark.parametrize("blend", ["none", "ensemble"])
def test_chunks_executed_or_ensembled_inside_the_loop(tmp_path, blend):
    decay, horizon, steps = 0.5, 4, 9
    actor = _CountingActor(horizon)
    cfg = ControlConfig(rate_hz=20.0, warmup_calls=1, blend=blend, ensemble_decay=decay)
    report, robot, store = _run(actor, tmp_path, cfg=cfg, safety=SafetyConfig(max_steps=steps))
    sent = store.read("action")[:, 0]
    assert report.stop_reason == "step_limit" and report.steps == steps and report.holds == 0
    if blend == "none":
        # a chunk is executed whole before the next call; each later chunk's first action is late: dropped
        value = {0: 2, 1: 2, 2: 2, 3: 2, 4: 3, 5: 3, 6: 3, 7: 4, 8: 4}   # the call that made each tick's action
        assert sent == pytest.approx([0.01 * value[k] for k in range(steps)])
        assert actor.calls == 1 + 3 and report.dropped_actions == 2
    else:
        expected = []
        for k in range(steps):
            chunks = _chunks_covering(k, horizon)     # chunk of tick m: call m + 2 (call 1 was the warm-up)
            w = np.exp(-decay * np.arange(len(chunks)))
            expected.append(float((w * 0.01 * (np.array(chunks) + 2)).sum() / w.sum()))
        assert sent == pytest.approx(expected, rel=1e-5)
        assert actor.calls == 1 + steps and report.dropped_actions == 0   # a call every tick; overlap is no drop
        assert not np.allclose(sent, 0.01 * (np.arange(steps) + 2))       # not simply each tick's newest chunk
    assert np.allclose(robot.applied[0][:4], store.read("action")[0])     # what was sent is what ran


def test_report_holds_the_frame_encodings_of_the_run_not_of_the_warm_up(tmp_path):
    actor = _CountingActor()
    report, _, _ = _run(actor, tmp_path, safety=SafetyConfig(max_steps=6))
    assert report.stop_reason == "step_limit" and actor.observed >= 1 + report.steps
    assert len(report.encode_ms) == actor.observed - 1 and min(report.encode_ms) >= 1   # the warm-up frame's is gone
    assert report.summary()["encode_ms_p50"] == np.median(report.encode_ms)


def test_emergency_stop_holds_within_one_period(tmp_path):
    rate = 20.0

    def stop_after_9(robot):
        if robot.sent == 9:
            robot.lockstep.stop_at(robot.clock() + 0.4 / rate)   # in the middle of the next period

    report, robot, store = _run(ExpertActor(TASK), tmp_path, rate=rate, on_send=stop_after_9)
    assert report.stop_reason == "e_stop" and robot.stopped
    stop_event = next(e for e in report.events if e.kind == "e_stop")
    assert stop_event.t - robot.lockstep.t <= 1 / rate and stop_event.t == robot.lockstep.t   # it woke the loop at once
    assert report.steps == 9 and len(store.read("action")) == 9
    assert robot.commanded_steps == 9 and robot.hold_steps >= 2   # nothing executed after the stop but holds
    assert robot.steps_at_stop == 9


def test_estop_during_the_warm_up_ends_it(tmp_path):
    class _StopDuringWarmUp(_CountingActor):
        def predict_chunk(self):
            chunk = super().predict_chunk()
            if self.calls == 3:
                estop.trigger("test")
            return chunk

    clock = VirtualClock()
    estop = Lockstep(clock)
    robot = SimRobot(TASK, rate_hz=20.0, clock=clock)
    estop.robot = robot
    actor = _StopDuringWarmUp()
    try:
        report = ControlLoop(actor, robot, ControlConfig(rate_hz=20.0, warmup_calls=10**6), estop=estop,
                             clock=clock).run()
    finally:
        robot.close()
    assert actor.calls == 3 and report.stop_reason == "e_stop" and report.steps == 0 and robot.stopped
    assert "during the warm-up" in report.events[0].detail
