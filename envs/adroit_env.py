"""Adroit hand tasks (gymnasium-robotics 1.4.2, AdroitHand{Door,Hammer,Pen,Relocate}-v1) with point clouds.

The unwrapped gymnasium-robotics env is stepped directly: our base class does the 200-step truncation and
clips actions to [-1, 1]. `reset(seed=s)` of the gymnasium-robotics env re-seeds its `np_random`, which
draws the object/goal placement (door position, nail-board height, pen target orientation, ball and
target positions).

agent_pos: the `data.qpos` entries of the actuated joints (arm + hand; actuator_trnid), as many as the
action has dimensions. full_state: the env's own observation vector (objects, goals, palm-to-object
vectors), as float32: for the DAPG experts and analysis only. goal_achieved: the env's per-step
`info["success"]`; the base class turns it into the benchmark's episode rule (more than 25 goal steps,
20 for pen). One change to a model: relocate's target marker is drawn smaller (see below).
"""

from __future__ import annotations

import numpy as np

from .base import PointCloudEnv
from .camera import MujocoCamera
from .pointcloud import PointCloudConfig

CAMERA_SIZE = 128

# Camera poses and world-frame crop boxes, chosen by looking: a script rendered each task's 128x128 RGB
# image and scatter plots (top, front, side, 3-D) of the cropped 512-point cloud at steps 0-199 of expert
# episodes for several seeds, and the pose/box were adjusted until the hand, the object (door + handle,
# hammer + nail board, pen + target pen, ball + target) were in view on every frame and the table and
# floor were gone. Pixels inside the box per frame (seeds 0-3, every 10th step): door 2750-4600,
# hammer 850-1250, pen 850-1300, relocate 550-1350 (all above the 512 sampled points). World frame: the table top is the plane z = 0 (|x|, |y| < 0.45), the forearm enters
# from -y, the objects lie towards +y. Free cameras (MuJoCo's default fovy 45 deg): the models' named
# cameras ('fixed', 'vil_camera') look straight along +y and either lose the hand once the door is open
# ('fixed') or waste most pixels on the floor ('vil_camera').
# - door: the door opens towards the hand and the hand ends at the door's free edge (x ~ 0.3, y ~ -0.3),
#   so the camera stands high in front; the box keeps both door posts (they mark the randomised door
#   placement), the whole door swing and the wrist, and drops the table (z < 0.005) and most of the forearm.
# - hammer: seen from the front-left so that the nail on the board's -x face is visible; the box holds
#   the hammer on the table, the board at every randomised height and the hand.
# - pen: the hand stays put, so a close camera; y > -0.34 drops the forearm, z > 0.005 keeps a dropped pen.
# - relocate: the hand carries the ball under its palm, so the camera looks from the front-right side
#   (from above only the back of the hand shows). The ball starts in x [-0.15, 0.15], y [-0.15, 0.3];
#   the target lies in x, y [-0.2, 0.2], z [0.15, 0.35]; the box holds both and the hand wherever it
#   goes. Checked with segmentation renders along expert episodes (seeds 0-3): the hand never touches
#   the image border, 550-1350 pixels fall in the box; the ball is hidden inside the grasping hand in
#   about 40 % of the frames, as from every single viewpoint tried.
TASKS = {
    "door": dict(env_id="AdroitHandDoor-v1", success_min_steps=25,
                 camera=dict(pos=(0.1, -1.05, 1.0), lookat=(0.05, -0.05, 0.18)),
                 crop_low=(-0.4, -0.45, 0.005), crop_high=(0.55, 0.45, 0.7)),
    "hammer": dict(env_id="AdroitHandHammer-v1", success_min_steps=25,
                   camera=dict(pos=(-0.45, -0.85, 0.8), lookat=(-0.05, -0.08, 0.15)),
                   crop_low=(-0.4, -0.45, 0.005), crop_high=(0.3, 0.25, 0.55)),
    "pen": dict(env_id="AdroitHandPen-v1", success_min_steps=20,
                camera=dict(pos=(0.12, -0.72, 0.55), lookat=(0.05, -0.2, 0.22)),
                crop_low=(-0.2, -0.34, 0.005), crop_high=(0.35, 0.05, 0.45)),
    "relocate": dict(env_id="AdroitHandRelocate-v1", success_min_steps=25,
                     camera=dict(pos=(0.55, -0.6, 0.55), lookat=(-0.03, -0.05, 0.17)),
                     crop_low=(-0.35, -0.4, 0.005), crop_high=(0.35, 0.45, 0.5)),
}

# Relocate's target is drawn as a translucent sphere of radius 0.07 (a site: no physics). Depth rendering
# treats it as opaque, so once the ball reaches the target it vanishes inside the sphere's shell. The
# marker is drawn smaller (radius 0.02, smaller than the ball's 0.035): the target stays visible and the
# ball hides it when it is there. Only the drawing changes; the success test (distance < 0.1) does not.
RELOCATE_TARGET_SITE = "target"
RELOCATE_TARGET_MARKER_RADIUS = 0.02


def adroit_pc_config(task: str, num_points: int = 512) -> PointCloudConfig:
    """The task's default point-cloud config (its crop box)."""
    spec = TASKS[task]
    return PointCloudConfig(num_points=num_points, crop_low=spec["crop_low"], crop_high=spec["crop_high"])


def _make_sim(env_id: str):
    import contextlib
    import io

    import gymnasium as gym

    # gymnasium_robotics prints a notice at import that the *Dense*-v1 rewards changed in 1.2.1: these sparse
    # envs' success test, which is all this project uses, did not.
    with contextlib.redirect_stderr(io.StringIO()):
        import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)
    return gym.make(env_id).unwrapped


class AdroitEnv(PointCloudEnv):
    def __init__(self, task: str, pc_config: PointCloudConfig | None = None, camera_size: int = CAMERA_SIZE,
                 render_rgb: bool = False, max_episode_steps: int = 200):
        if task not in TASKS:
            raise ValueError(f"unknown Adroit task {task!r}; valid tasks are: {', '.join(TASKS)}")
        spec = TASKS[task]
        sim = _make_sim(spec["env_id"])
        self.sim = sim
        model = sim.model
        if task == "relocate":
            import mujoco

            site_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, RELOCATE_TARGET_SITE)
            model.site_size[site_id, 0] = RELOCATE_TARGET_MARKER_RADIUS
        # Actuated joints (every Adroit actuator drives one joint): their qpos addresses, in actuator order.
        joint_ids = model.actuator_trnid[:, 0]
        self._agent_qpos_idx = np.asarray(model.jnt_qposadr[joint_ids], dtype=np.int64)
        self.agent_joint_names = [model.joint(int(j)).name for j in joint_ids]
        camera = MujocoCamera(model, sim.data, camera_size, camera_size, **spec["camera"])
        super().__init__(
            task=f"adroit/{task}",
            camera=camera,
            agent_dim=len(self._agent_qpos_idx),
            action_space=sim.action_space,
            pc_config=pc_config or adroit_pc_config(task),
            success_min_steps=spec["success_min_steps"],
            render_rgb=render_rgb,
            max_episode_steps=max_episode_steps,
        )
        self._full_state = np.zeros(sim.observation_space.shape, dtype=np.float64)

    def _sim_reset(self, seed: int) -> None:
        obs, _ = self.sim.reset(seed=seed)
        self._full_state = obs

    def _sim_step(self, action: np.ndarray):
        obs, reward, _, _, info = self.sim.step(action)
        self._full_state = obs
        return float(reward), bool(info["success"]), {}

    def agent_pos(self) -> np.ndarray:
        return self.sim.data.qpos[self._agent_qpos_idx].astype(np.float32)

    def full_state(self) -> np.ndarray:
        return np.asarray(self._full_state, dtype=np.float32)

    def close(self) -> None:
        super().close()
        self.sim.close()
