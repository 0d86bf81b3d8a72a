"""The observation format every simulator and robot gives, and the episode bookkeeping they share.

Observation (a dict):
    point_cloud: (N, 3) float32, world frame, cropped and farthest-point sampled
    agent_pos:   (d,) float32, the robot's own state (never object or goal coordinates)
    image:       (H, W, 3) uint8, only when the env was made with `render_rgb=True`
The simulator's full state vector (objects and goals included) goes to `info["full_state"]`, for
experts and analysis only.

`info["goal_achieved"]` is this step's goal test; `info["success"]` is the benchmark's episode rule so
far: goal achieved on more than `success_min_steps` steps (0 for Meta-World, i.e. any step; 25 for
Adroit door/hammer/relocate, 20 for pen).
"""

from __future__ import annotations

import abc
from typing import Any

import gymnasium as gym
import numpy as np

from .camera import MujocoCamera
from .pointcloud import PointCloudConfig, depth_to_point_cloud

EPISODE_STEPS = 200


class PointCloudEnv(gym.Env, abc.ABC):
    """A MuJoCo task seen through one depth camera. Subclasses implement the `_sim_*` methods."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, task: str, camera: MujocoCamera, agent_dim: int, action_space: gym.spaces.Box,
                 pc_config: PointCloudConfig, success_min_steps: int, render_rgb: bool = False,
                 max_episode_steps: int = EPISODE_STEPS):
        self.task = task
        self.camera = camera
        self.pc_config = pc_config
        self.success_min_steps = success_min_steps
        self.render_rgb = render_rgb
        self.max_episode_steps = max_episode_steps
        self.render_mode = "rgb_array"
        self.action_space = action_space
        spaces = {
            "point_cloud": gym.spaces.Box(-np.inf, np.inf, (pc_config.num_points, 3), np.float32),
            "agent_pos": gym.spaces.Box(-np.inf, np.inf, (agent_dim,), np.float32),
        }
        if render_rgb:
            spaces["image"] = gym.spaces.Box(0, 255, (camera.height, camera.width, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self._steps = 0
        self._goal_steps = 0
        self.seed_used: int | None = None

    # --- what a simulator provides -------------------------------------------------------------
    @abc.abstractmethod
    def _sim_reset(self, seed: int) -> None:
        """Reset the simulator to the initial state drawn from `seed` (object/goal placement)."""

    @abc.abstractmethod
    def _sim_step(self, action: np.ndarray) -> tuple[float, bool, dict]:
        """Apply one (already clipped) action: returns (reward, goal_achieved, extra info)."""

    @abc.abstractmethod
    def agent_pos(self) -> np.ndarray:
        """(d,) the robot's proprioceptive state."""

    @abc.abstractmethod
    def full_state(self) -> np.ndarray:
        """The simulator's own full observation vector (privileged: objects, goals)."""

    def hold_action(self, last_action: np.ndarray | None) -> np.ndarray:
        """The action that keeps the robot where it is. Default: the last command again (absolute position
        targets, as Adroit's), or zeros before any."""
        if last_action is None:
            return np.zeros(self.action_space.shape, np.float32)
        return np.asarray(last_action, np.float32).copy()

    # --- gymnasium API ---------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(0, 2**31 - 1))
        self.seed_used = int(seed)
        self._sim_reset(int(seed))
        self._steps = 0
        self._goal_steps = 0
        return self._observation(), {"full_state": self.full_state(), "success": False, "goal_achieved": False,
                                     "seed": self.seed_used}

    def step(self, action):
        action = np.asarray(action, dtype=np.float32)
        if action.shape != self.action_space.shape:
            raise ValueError(f"{self.task}: action must have shape {self.action_space.shape}, got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"{self.task}: action has non-finite values: {action}")
        executed = np.clip(action, self.action_space.low, self.action_space.high)
        reward, goal_achieved, extra = self._sim_step(executed)
        self._steps += 1
        self._goal_steps += int(bool(goal_achieved))
        info = dict(extra)
        info.update(
            goal_achieved=bool(goal_achieved),
            goal_steps=self._goal_steps,
            success=self._goal_steps > self.success_min_steps,
            executed_action=executed,
            full_state=self.full_state(),
        )
        truncated = self._steps >= self.max_episode_steps
        return self._observation(), float(reward), False, truncated, info

    def _observation(self) -> dict[str, np.ndarray]:
        depth = self.camera.render_depth()
        obs = {
            "point_cloud": depth_to_point_cloud(depth, self.camera.camera_model(), self.pc_config),
            "agent_pos": np.asarray(self.agent_pos(), dtype=np.float32),
        }
        if self.render_rgb:
            obs["image"] = self.camera.render_rgb()
        return obs

    def render(self) -> np.ndarray:
        return self.camera.render_rgb()

    def describe(self) -> dict:
        """What a dataset or checkpoint records about how observations were made."""
        return {
            "task": self.task,
            "camera": self.camera.camera_model().to_dict(),
            "point_cloud": self.pc_config.to_dict(),
            "success_min_steps": self.success_min_steps,
            "max_episode_steps": self.max_episode_steps,
            "agent_dim": int(self.observation_space["agent_pos"].shape[0]),
            "action_dim": int(self.action_space.shape[0]),
        }

    def close(self) -> None:
        self.camera.close()
