"""The control loop on a simulated robot stepping in real time: scheduling, safety, faults, recording."""

import threading
import time

import numpy as np
import pytest

from mfp.demos.store import DemoStore
from mfp.eval.control_loop import ChunkScheduler, ControlConfig, ControlLoop
from mfp.eval.rollout import ExpertActor
from mfp.eval.run_recorder import RunRecorder
from mfp.eval.safety import ActionFilter, EStop, SafetyConfig
from mfp.eval.sim_robot import SimRobot

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


def _run(actor, tmp_path, rate=20.0, safety=None, estop=None, before=None, seed=1_000_000):
    robot = SimRobot(TASK, rate_hz=rate, seed=seed, publish_full_state=True)
    recorder = RunRecorder(tmp_path / "run.zarr", robot.describe())
    loop = ControlLoop(actor, robot, ControlConfig(rate_hz=rate, warmup_calls=1), safety or SafetyConfig(),
                       estop=estop, recorder=recorder)
    try:
        if before:
            before(robot)
        report = loop.run()
        time.sleep(3 / rate)  # let the robot side act on what the loop left it with
    finally:
        robot.close()
    return report, robot, DemoStore.open(tmp_path / "run.zarr")


def test_closed_loop_solves_the_task_and_records_the_run(tmp_path):
    report, robot, store = _run(ExpertActor(TASK), tmp_path)
    assert report.stop_reason == "episode_end" and robot.success
    assert report.steps > 20  # (late drops depend on the machine's load: counted, not asserted)
    drops = [e for e in report.events if e.kind == "late_actions_dropped"]
    assert sum(int(e.detail.split()[0]) for e in drops) == report.dropped_actions
    assert store.n_episodes == 1 and len(store.read("action")) == report.steps
    obs_t, act_t = store.read("obs_time"), store.read("action_time")
    assert np.all(act_t[:, 0] <= act_t[:, 1]) and np.all(obs_t.min(1) == act_t[:, 0])  # chunk from that observation
    assert np.all(np.diff(act_t[:, 2]) > 0)                                            # executed in order
    assert np.abs(store.read("action")).max() <= 1.0                                   # clipped to the limits
    (run,) = store.attrs["control_runs"]
    assert run["stop_reason"] == "episode_end" and "time_alignment" in store.attrs


def test_camera_that_stops_publishing_makes_the_robot_hold(tmp_path):
    safety = SafetyConfig(max_obs_age_s=0.15, stale_stop_s=0.6)
    frozen = {}

    def freeze_later(robot):
        def go():
            time.sleep(1.0)
            frozen["t"] = time.time()
            robot.freeze_camera()
        threading.Thread(target=go, daemon=True).start()

    report, robot, store = _run(ExpertActor(TASK), tmp_path, safety=safety, before=freeze_later)
    stale = [e for e in report.events if e.kind == "stale_observation"]
    assert stale and stale[0].t - frozen["t"] <= safety.max_obs_age_s + 2 * 0.05  # within the deadline + a tick
    assert report.stop_reason == "observations_lost"
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


@pytest.mark.parametrize("nan", [False, True])
def test_policy_that_raises_or_returns_nan_stops_and_holds(tmp_path, nan):
    report, robot, store = _run(_FaultyExpert(fail_at=12, nan=nan), tmp_path)  # 1 warm-up call + 10 actions
    assert report.stop_reason == ("non_finite_action" if nan else "policy_error")
    assert report.steps == 10 and robot.hold_steps >= 2
    hold = robot.applied[-1]
    assert np.allclose(hold[:3], 0)                     # Meta-World hold: no end-effector motion
    assert store.read("action").shape == (10, 4) and np.isfinite(store.read("action")).all()


def test_emergency_stop_holds_within_one_period(tmp_path):
    estop, rate = EStop(), 20.0

    def stop_later(robot):
        threading.Timer(1.0, estop.trigger, args=("test",)).start()

    report, robot, store = _run(ExpertActor(TASK), tmp_path, rate=rate, estop=estop, before=stop_later)
    assert report.stop_reason == "e_stop" and robot.stopped
    stop_event = next(e for e in report.events if e.kind == "e_stop")
    assert stop_event.t - estop.t <= 1 / rate
    steps_at_stop = len(store.read("action"))
    assert 0 < steps_at_stop < 30 and robot.hold_steps >= 2   # nothing executed after the stop but holds
