"""Meta-World v3 tasks (metaworld 3.1.1) with point-cloud observations.

Each reset draws a new object/goal placement from its seed (`_freeze_rand_vec = False`,
`seeded_rand_vec = True`, then `seed(s)`): `reset(seed=...)` alone would not re-randomise.
agent_pos is DP3's 9-D robot state: end-effector xyz and the right and left finger-pad sites.
"""

from __future__ import annotations

import numpy as np

from .base import PointCloudEnv
from .camera import MujocoCamera
from .pointcloud import PointCloudConfig

# DP3's camera: Meta-World's `corner2`, moved to this position.
CAMERA_NAME = "corner2"
CAMERA_POS = (0.6, 0.295, 0.8)
CAMERA_SIZE = 128


def metaworld_task_names() -> list[str]:
    """The 50 v3 task names without the '-v3' suffix, e.g. 'pick-place'."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return sorted(name[: -len("-v3")] for name in ALL_V3_ENVIRONMENTS)


class MetaWorldEnv(PointCloudEnv):
    def __init__(self, task: str, pc_config: PointCloudConfig | None = None, camera_size: int = CAMERA_SIZE,
                 render_rgb: bool = False, max_episode_steps: int = 200):
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE

        sim = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[f"{task}-v3-goal-observable"](seed=0)
        sim._freeze_rand_vec = False
        sim.seeded_rand_vec = True
        sim.max_path_length = max_episode_steps
        self.sim = sim
        camera = MujocoCamera(sim.model, sim.data, camera_size, camera_size, name=CAMERA_NAME, pos=CAMERA_POS)
        super().__init__(
            task=f"metaworld/{task}",
            camera=camera,
            agent_dim=9,
            action_space=sim.action_space,
            pc_config=pc_config or PointCloudConfig(),
            success_min_steps=0,
            render_rgb=render_rgb,
            max_episode_steps=max_episode_steps,
        )
        self._full_state = np.zeros(39)

    def _sim_reset(self, seed: int) -> None:
        self.sim.seed(seed)
        obs, _ = self.sim.reset()
        self._full_state = obs

    def _sim_step(self, action: np.ndarray):
        obs, reward, _, _, info = self.sim.step(action)
        self._full_state = obs
        return reward, bool(info["success"]), {}

    def hold_action(self, last_action: np.ndarray | None) -> np.ndarray:
        """Meta-World actions are end-effector position deltas: hold = no motion, the gripper as last commanded."""
        hold = np.zeros(self.action_space.shape, np.float32)
        if last_action is not None:
            hold[3] = last_action[3]
        return hold

    def agent_pos(self) -> np.ndarray:
        return np.concatenate([
            self.sim.get_endeff_pos(),
            self.sim._get_site_pos("rightEndEffector"),
            self.sim._get_site_pos("leftEndEffector"),
        ])

    def full_state(self) -> np.ndarray:
        return np.asarray(self._full_state, dtype=np.float32)

    def close(self) -> None:
        super().close()
        self.sim.close()
