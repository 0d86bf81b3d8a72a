"""A simulated robot behind the robot interface: a MuJoCo task stepping in real time in its own thread.

The simulator executes each action sent at its execution time (one simulator step per action, in order), like a
robot's controller reaching each commanded target. Its own watchdog: when no action has come `hold_after`
periods after the last step, it steps with the task's hold action (a robot never waits for a policy), and again
every period until actions come back. After each step it renders and publishes an observation stamped with
the current time.
The episode ends on success (`done`) or at the step limit. The env lives entirely in the robot's thread: MuJoCo's
EGL rendering context belongs to the thread that made it.

With `start_on_first_action` the robot stands still after reset until its first action (or an e-stop) comes: no
watchdog holds, its sensors keep streaming the reset view restamped every period. A controller in another
process (the ROS node) may take long to start; the episode's steps begin when it is ready.

Every time is read from `clock`. A test can drive the robot in virtual time: advance its clock, `poke()`, then
`wait_idle()` until the simulator thread has done everything due by then (see tests/test_control.py).

Fault injection for tests and demos: `freeze_camera()` stops refreshing the point cloud (a camera that stopped
publishing: its stamp stays old); `corrupt_state()` makes every state sample from now on NaN (a broken encoder).
"""

from __future__ import annotations

import threading
import time

import numpy as np

from mfp.envs import EPISODE_STEPS
from mfp.eval.robots.base import Robot, TimedObservation


class SimRobot(Robot):
    def __init__(self, task: str, rate_hz: float = 10.0, seed: int = 0, point_cloud: dict | None = None,
                 publish_full_state: bool = False, stop_on_success: bool = True, max_episode_steps: int = EPISODE_STEPS,
                 hold_after: float = 1.5, clock=time.time, start_on_first_action: bool = False):
        self.task, self.rate_hz, self.seed = task, float(rate_hz), int(seed)
        self.point_cloud, self.publish_full_state = point_cloud, publish_full_state
        self.stop_on_success, self.max_episode_steps, self.clock = stop_on_success, max_episode_steps, clock
        self.hold_after = float(hold_after)
        self.start_on_first_action = bool(start_on_first_action)
        self._lock = threading.Condition()
        self._pending: list[tuple[float, np.ndarray]] = []   # (t_exec, action), in send order
        self._obs: TimedObservation | None = None
        self._stopped = threading.Event()
        self._finished = threading.Event()
        self._ready = threading.Event()
        self._camera_frozen = False
        self._state_corrupt = False
        self._idle = False            # the simulator thread waits with nothing due (guarded by _lock)
        self.started = threading.Event()   # the episode's steps have begun
        self._error: BaseException | None = None
        self.success = False
        self.done = False
        self.steps = 0
        self.hold_steps = 0           # robot ticks that applied the hold action
        self.trailing_holds = 0       # hold steps since the last commanded action
        self.steps_at_stop: int | None = None   # steps taken when the e-stop came
        self.applied: list[np.ndarray] = []   # every action the simulator executed, holds included
        self.action_dim = 0
        self._description: dict = {}
        self._thread = threading.Thread(target=self._run, name=f"sim-robot {task}", daemon=True)
        self._thread.start()
        self._ready.wait(120)
        if self._error is not None:
            raise self._error

    # --- the robot interface -------------------------------------------------------------------------------
    def observe(self) -> TimedObservation | None:
        with self._lock:
            return self._obs

    def send(self, action: np.ndarray, t_exec: float) -> None:
        if self._stopped.is_set():
            return
        with self._lock:
            self._pending.append((float(t_exec), np.asarray(action, np.float32)))
            self._idle = False
            self._lock.notify_all()

    def hold(self) -> None:
        with self._lock:
            self._pending.clear()

    def stop(self) -> None:
        with self._lock:
            if self.steps_at_stop is None:
                self.steps_at_stop = self.steps
            self._stopped.set()
            self._pending.clear()
            self._idle = False
            self._lock.notify_all()

    def close(self) -> None:
        self._finished.set()
        with self._lock:
            self._lock.notify_all()
        self._thread.join(timeout=10)

    def describe(self) -> dict:
        return dict(self._description)

    @property
    def stopped(self) -> bool:
        """E-stopped (`stop()`), not merely closed."""
        return self._stopped.is_set()

    @property
    def commanded_steps(self) -> int:
        """Steps that executed a commanded action (the others applied the hold action)."""
        return self.steps - self.hold_steps

    def freeze_camera(self) -> None:
        self._camera_frozen = True

    def corrupt_state(self) -> None:
        """From now on (the current observation included) every state sample is NaN."""
        with self._lock:
            self._state_corrupt = True
            if self._obs is not None:
                self._obs = TimedObservation(self._obs.point_cloud, np.full_like(self._obs.agent_pos, np.nan),
                                             self._obs.t_cloud, self._obs.t_state, self._obs.extra)

    def poke(self) -> None:
        """The clock moved (a test's virtual clock): look again at what is due."""
        with self._lock:
            self._idle = False
            self._lock.notify_all()

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until the simulator thread waits with nothing due on its clock (or the episode is over)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not self._idle and not self._finished.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
        return True

    def wait_done(self, timeout: float | None = None) -> bool:
        return self._finished.wait(timeout)

    # --- the simulator thread ------------------------------------------------------------------------------
    def _publish(self, obs: dict, full_state: np.ndarray, t: float) -> None:
        extra = {"full_state": np.asarray(full_state, np.float32)} if self.publish_full_state else {}
        with self._lock:
            old = self._obs
            state = np.full_like(obs["agent_pos"], np.nan) if self._state_corrupt else obs["agent_pos"]
            if self._camera_frozen and old is not None:
                self._obs = TimedObservation(old.point_cloud, state, old.t_cloud, t, extra)
            else:
                self._obs = TimedObservation(obs["point_cloud"], state, t, t, extra)

    def _next_action(self, deadline: float) -> np.ndarray | None:
        """Wait for the next action to come due (-> it) or for `deadline` on the clock (-> None)."""
        with self._lock:
            while not self._finished.is_set():
                now = self.clock()
                if self._pending and not self._stopped.is_set():
                    t_exec, action = self._pending[0]
                    if t_exec <= now + 1e-4:
                        self._pending.pop(0)
                        self._idle = False
                        return action
                    wake = min(t_exec, deadline)
                else:
                    wake = deadline
                if now >= deadline:
                    self._idle = False
                    return None
                self._idle = True
                self._lock.notify_all()   # wait_idle
                self._lock.wait(wake - now)
            return None

    def _run(self) -> None:
        from mfp.envs import PointCloudConfig, make_env

        try:
            pc = PointCloudConfig.from_dict(self.point_cloud) if self.point_cloud else None
            env = make_env(self.task, pc_config=pc, max_episode_steps=self.max_episode_steps)
        except BaseException as e:  # reported to the constructor
            self._error = e
            self._ready.set()
            return
        try:
            self.action_dim = int(env.action_space.shape[0])
            self._description = {"robot": "sim", "rate_hz": self.rate_hz, "seed": self.seed, **env.describe()}
            obs, info = env.reset(seed=self.seed)
            self._publish(obs, info["full_state"], self.clock())
            self._ready.set()
            period, last, last_step = 1.0 / self.rate_hz, None, self.clock()
            waiting = self.start_on_first_action
            while self.steps < self.max_episode_steps and not self._finished.is_set():
                action = self._next_action(last_step + (1.0 if waiting else self.hold_after) * period)
                if self._finished.is_set():
                    break
                if waiting and action is None and not self._stopped.is_set():
                    last_step = self.clock()   # standing still before the first action: the sensors keep streaming
                    self._publish(obs, info["full_state"], last_step)
                    continue
                waiting = False
                self.started.set()
                if action is None:
                    action = env.hold_action(last)
                    self.hold_steps += 1
                    self.trailing_holds += 1
                    last_step = self.clock() - (self.hold_after - 1) * period  # then one hold per period
                else:
                    last_step = self.clock()
                    self.trailing_holds = 0
                last = action
                obs, _, _, truncated, info = env.step(action)
                self.applied.append(np.asarray(info["executed_action"]))
                self.steps += 1
                self.success = self.success or bool(info["success"])
                self._publish(obs, info["full_state"], self.clock())
                if truncated or (self.success and self.stop_on_success):
                    break
        except BaseException as e:
            self._error = e
        finally:
            with self._lock:
                self.done = True
                self._finished.set()
                self._lock.notify_all()
            self._ready.set()
            env.close()


def build(request) -> SimRobot:
    """`mfp control --robot sim` (robots.RobotRequest)."""
    if request.task is None:
        raise ValueError("--robot sim needs a task (the checkpoint's, or --task)")
    return SimRobot(request.task, rate_hz=request.rate_hz, seed=request.seed, point_cloud=request.point_cloud,
                    publish_full_state=request.expert)
