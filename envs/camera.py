"""A MuJoCo camera that renders metric depth (and optionally RGB) and describes itself as a pinhole
camera in the OpenCV convention, so that `envs/pointcloud.py` back-projects it like a real one."""

from __future__ import annotations

import atexit
import functools
import os

import numpy as np

from .pointcloud import CameraModel, intrinsics_from_fovy

os.environ.setdefault("MUJOCO_GL", "egl")

# MuJoCo cameras look down their -z axis with y up; OpenCV cameras look down +z with y down.
_MUJOCO_TO_OPENCV = np.diag([1.0, -1.0, -1.0])


class MujocoCamera:
    """Renders depth (H, W) in metres from a named or free camera of a MuJoCo model.

    `pos` / `lookat`: for a free camera (no `name`), its position and the point it looks at.
    For a named camera, `pos` optionally moves it (DP3 moves Meta-World's `corner2`).
    """

    def __init__(self, model, data, width: int = 128, height: int = 128, name: str | None = None,
                 pos=None, lookat=None, up=(0.0, 0.0, 1.0)):
        import mujoco

        self._mujoco = mujoco
        self.model, self.data = model, data
        self.width, self.height = int(width), int(height)
        self.name = name or "free"
        if name is not None:
            self.cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, name)
            if self.cam_id < 0:
                names = [model.camera(i).name for i in range(model.ncam)]
                raise ValueError(f"camera '{name}' not found in the model; cameras: {names}")
            if pos is not None:
                model.cam_pos[self.cam_id] = np.asarray(pos, dtype=float)
                mujoco.mj_forward(model, data)
            self.fovy = float(model.cam_fovy[self.cam_id])
            self._free_pose = None
        else:
            if pos is None or lookat is None:
                raise ValueError("a free camera needs both pos and lookat")
            self.cam_id = -1
            self.fovy = float(model.vis.global_.fovy)
            self._free_pose = _look_at(np.asarray(pos, float), np.asarray(lookat, float), np.asarray(up, float))
        if model.vis.global_.offwidth < self.width or model.vis.global_.offheight < self.height:
            model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)
            model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)
        # Renderers by kind ("depth", "rgb"), closed by close() or, failing that, at interpreter exit. The exit
        # hook is registered after MuJoCo's own (which terminates the EGL display), so it runs before it.
        self._renderers: dict = {}
        self._exit_hook = functools.partial(_close_renderers, self._renderers)
        self.K = intrinsics_from_fovy(self.fovy, self.width, self.height)

    def _renderer(self, depth: bool):
        kind = "depth" if depth else "rgb"
        r = self._renderers.get(kind)
        if r is None:
            r = self._mujoco.Renderer(self.model, self.height, self.width)
            if depth:
                r.enable_depth_rendering()
            if not self._renderers:
                atexit.register(self._exit_hook)
            self._renderers[kind] = r
        return r

    def _scene_camera(self):
        if self.cam_id >= 0:
            return self.cam_id
        cam = self._mujoco.MjvCamera()
        cam.type = self._mujoco.mjtCamera.mjCAMERA_FREE
        pos, lookat = self._free_pose["pos"], self._free_pose["lookat"]
        d = lookat - pos
        cam.lookat[:] = lookat
        cam.distance = float(np.linalg.norm(d))
        cam.azimuth = float(np.degrees(np.arctan2(d[1], d[0])))
        cam.elevation = float(np.degrees(np.arcsin(d[2] / np.linalg.norm(d))))
        return cam

    def cam_to_world(self) -> np.ndarray:
        """(4, 4) pose of the camera in the world frame, OpenCV axes."""
        T = np.eye(4)
        if self.cam_id >= 0:
            R_mj = self.data.cam_xmat[self.cam_id].reshape(3, 3)
            T[:3, 3] = self.data.cam_xpos[self.cam_id]
        else:
            R_mj, T[:3, 3] = self._free_pose["R"], self._free_pose["pos"]
        T[:3, :3] = R_mj @ _MUJOCO_TO_OPENCV
        return T

    def camera_model(self) -> CameraModel:
        return CameraModel(K=self.K, cam_to_world=self.cam_to_world(), width=self.width, height=self.height,
                           name=self.name)

    def render_depth(self) -> np.ndarray:
        """(H, W) float32 depth along the optical axis, metres."""
        r = self._renderer(depth=True)
        r.update_scene(self.data, camera=self._scene_camera())
        return r.render().astype(np.float32, copy=False)

    def render_rgb(self) -> np.ndarray:
        """(H, W, 3) uint8."""
        r = self._renderer(depth=False)
        r.update_scene(self.data, camera=self._scene_camera())
        return r.render()

    def close(self) -> None:
        atexit.unregister(self._exit_hook)
        _close_renderers(self._renderers)


def _close_renderers(renderers: dict) -> None:
    for r in renderers.values():
        r.close()
    renderers.clear()


def _look_at(pos: np.ndarray, lookat: np.ndarray, up: np.ndarray) -> dict:
    """Rotation (MuJoCo camera axes: x right, y up, -z forward) for a free camera at pos looking at lookat.

    MuJoCo's free camera is parameterised by azimuth/elevation around `lookat` with world z up, so the
    rotation is built the same way (no roll).
    """
    forward = lookat - pos
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    cam_up = np.cross(right, forward)
    R = np.stack([right, cam_up, -forward], axis=1)
    return {"pos": pos, "lookat": lookat, "R": R}
