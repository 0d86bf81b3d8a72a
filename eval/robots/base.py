"""The robot interface the control loop drives: a simulator, a ROS-connected arm, or anything else behind it.

Times are seconds on one shared clock, `time.time()` (wall clock), so that stamps made by another process (a
ROS node, a camera driver) compare directly with the loop's own.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import numpy as np


@dataclass
class TimedObservation:
    """The latest camera and state samples, each with the time it was taken.

    point_cloud: (N, 3) float32 in the robot base frame, already cropped and sampled as the policy was trained;
    agent_pos: (d,) float32 robot state. `extra` holds anything else a source provides (e.g. a simulator's
    privileged full_state for scripted experts in tests); the policy never sees it.
    """
    point_cloud: np.ndarray
    agent_pos: np.ndarray
    t_cloud: float
    t_state: float
    extra: dict = field(default_factory=dict)

    @property
    def t(self) -> float:
        """The observation's time: its older sample's (the moment by which both were taken)."""
        return min(self.t_cloud, self.t_state)

    def policy_input(self) -> dict[str, np.ndarray]:
        return {"point_cloud": self.point_cloud, "agent_pos": self.agent_pos, **self.extra}

    def is_finite(self) -> bool:
        return bool(np.isfinite(self.point_cloud).all() and np.isfinite(self.agent_pos).all())


class Robot(abc.ABC):
    """What the control loop needs from a robot. Implementations must be safe to call from one loop thread while
    their own threads (a simulator stepping in real time, ROS callbacks) update observations."""

    action_dim: int

    @abc.abstractmethod
    def observe(self) -> TimedObservation | None:
        """The latest aligned observation, or None before the first one."""

    @abc.abstractmethod
    def send(self, action: np.ndarray, t_exec: float) -> None:
        """Execute `action` (d_act,) at absolute time `t_exec` (as soon as possible if already past)."""

    @abc.abstractmethod
    def hold(self) -> None:
        """Keep the robot where it is (drop pending actions) until the next send."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Emergency stop: hold now and accept no further actions."""

    def close(self) -> None:
        """Release resources (threads, connections)."""

    def describe(self) -> dict:
        """What the recorded run should say about the robot (task, camera, point-cloud settings...)."""
        return {}
