"""A simulated robot behind the robot interface: a MuJoCo task stepping in real time in its own thread.

The simulator executes each action sent at its execution time (one simulator step per action, in order), like a
robot's controller reaching each commanded target. Its own watchdog: when no action has come `hold_after`
periods after the last step, it steps with the task's hold action (a robot never waits for a policy), and again
every period until actions come back. After each step it renders and publishes an observation stamped with
the current time.
The episode ends on success (`done`) or at the step limit. The env lives entirely in the robot's thread: MuJoCo's
EGL rendering context belongs to the thread that made it.

Fault injection for tests and demos: `freeze_camera()` stops refreshing the point cloud (a camera that stopped
publishing: its stamp stays old).
"""

from __future__ import annotations

import threading
import time

import numpy as np

from .robot import Robot, TimedObservation


class SimRobot(Robot):
    def __init__(self, task: str, rate_hz: float = 10.0, seed: int = 0, point_cloud: dict | None = None,
                 publish_full_state: bool = False, stop_on_success: bool = True, max_episode_steps: int = 200,
                 hold_after: float = 1.5, clock=time.time):
        self.task, self.rate_hz, self.seed = task, float(rate_hz), int(seed)
        self.point_cloud, self.publish_full_state = point_cloud, publish_full_state
        self.stop_on_success, self.max_episode_steps, self.clock = stop_on_success, max_episode_steps, clock
        self.hold_after = float(hold_after)
        self._lock = threading.Condition()
        self._pending: list[tuple[float, np.ndarray]] = []   # (t_exec, action), in send order
        self._obs: TimedObservation | None = None
        self._stopped = threading.Event()
        self._finished = threading.Event()
        self._ready = threading.Event()
        self._camera_frozen = False
        self._error: BaseException | None = None
        self.success = False
        self.done = False
        self.steps = 0
        self.hold_steps = 0           # robot ticks that applied the hold action
        self.trailing_holds = 0       # hold steps since the last commanded action
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
            self._lock.notify_all()

    def hold(self) -> None:
        with self._lock:
            self._pending.clear()

    def stop(self) -> None:
        self._stopped.set()
        self.hold()

    def close(self) -> None:
        self._stopped.set()
        self._finished.set()
        with self._lock:
            self._lock.notify_all()
        self._thread.join(timeout=10)

    def describe(self) -> dict:
        return dict(self._description)

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def freeze_camera(self) -> None:
        self._camera_frozen = True

    def wait_done(self, timeout: float | None = None) -> bool:
        return self._finished.wait(timeout)

    # --- the simulator thread ------------------------------------------------------------------------------
    def _publish(self, obs: dict, full_state: np.ndarray, t: float) -> None:
        extra = {"full_state": np.asarray(full_state, np.float32)} if self.publish_full_state else {}
        with self._lock:
            old = self._obs
            if self._camera_frozen and old is not None:
                self._obs = TimedObservation(old.point_cloud, obs["agent_pos"], old.t_cloud, t, extra)
            else:
                self._obs = TimedObservation(obs["point_cloud"], obs["agent_pos"], t, t, extra)

    def _next_action(self, period: float, last_step: float) -> np.ndarray | None:
        """Wait for the next action to come due (-> it) or for the watchdog deadline (-> None: hold)."""
        deadline = last_step + self.hold_after * period
        with self._lock:
            while not self._finished.is_set():
                now = self.clock()
                if self._pending and not self._stopped.is_set():
                    t_exec, action = self._pending[0]
                    if t_exec <= now + 1e-4:
                        self._pending.pop(0)
                        return action
                    wake = min(t_exec, deadline)
                else:
                    wake = deadline
                if now >= deadline:
                    return None
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
            while self.steps < self.max_episode_steps and not self._finished.is_set():
                action = self._next_action(period, last_step)
                if self._finished.is_set():
                    break
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
            self.done = True
            self._finished.set()
            self._ready.set()
            env.close()
