"""Depth image -> world-frame point cloud: back-projection, crop box, farthest-point sampling.

This is the project's one implementation, shared by the simulators and (later) real cameras. Cameras
follow the OpenCV convention (x right, y down, z forward, depth = z), described by a pinhole intrinsic
matrix K (3, 3) and a camera-to-world transform (4, 4). A MuJoCo camera is converted to that
convention in `envs/camera.py`.

Measured on the 2-core development CPU (see `mfp bench collect`): open3d's farthest-point sampling
costs about 0.9 us per input point for 512 output points, numpy's loop about 10x more, so open3d does
the sampling; inputs larger than `max_points_before_fps` are first thinned by a fixed stride.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field

import numpy as np

# A world-frame box around the Meta-World table workspace that drops the floor (BENCHMARKS.md).
METAWORLD_CROP_LOW = (-0.6, 0.3, 0.005)
METAWORLD_CROP_HIGH = (0.6, 1.0, 0.8)


@dataclass(frozen=True)
class PointCloudConfig:
    """How a depth image becomes the policy's point cloud. Saved with datasets and checkpoints."""

    num_points: int = 512
    crop_low: tuple[float, float, float] = METAWORLD_CROP_LOW
    crop_high: tuple[float, float, float] = METAWORLD_CROP_HIGH
    # Thin larger clouds by a fixed stride before FPS: FPS cost grows linearly with its input.
    max_points_before_fps: int = 4096

    def __post_init__(self) -> None:
        object.__setattr__(self, "crop_low", tuple(float(v) for v in self.crop_low))
        object.__setattr__(self, "crop_high", tuple(float(v) for v in self.crop_high))
        if self.num_points < 1:
            raise ValueError(f"PointCloudConfig.num_points must be >= 1, got {self.num_points}")
        if len(self.crop_low) != 3 or len(self.crop_high) != 3:
            raise ValueError(
                f"PointCloudConfig crop box needs 3 values per corner, got low={self.crop_low} high={self.crop_high}"
            )
        if not all(lo < hi for lo, hi in zip(self.crop_low, self.crop_high)):
            raise ValueError(
                f"PointCloudConfig crop box is empty: every low must be < high, got low={self.crop_low} high={self.crop_high}"
            )
        if self.max_points_before_fps < self.num_points:
            raise ValueError(
                f"PointCloudConfig.max_points_before_fps ({self.max_points_before_fps}) must be >= num_points ({self.num_points})"
            )

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "PointCloudConfig":
        return cls(**d)


@dataclass
class CameraModel:
    """A pinhole camera: intrinsics K (3, 3), camera-to-world pose (4, 4), OpenCV axes."""

    K: np.ndarray
    cam_to_world: np.ndarray
    width: int
    height: int
    name: str = ""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "width": int(self.width),
            "height": int(self.height),
            "K": np.asarray(self.K, dtype=float).tolist(),
            "cam_to_world": np.asarray(self.cam_to_world, dtype=float).tolist(),
        }


def intrinsics_from_fovy(fovy_deg: float, width: int, height: int) -> np.ndarray:
    """K (3, 3) for a camera with vertical field of view `fovy_deg` and square pixels (MuJoCo's model)."""
    f = 0.5 * height / np.tan(np.deg2rad(fovy_deg) / 2.0)
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


@functools.lru_cache(maxsize=8)
def _pixel_rays(h: int, w: int, fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """(H*W, 2) float32: ((u - cx) / fx, (v - cy) / fy) per pixel, row-major; cached per camera."""
    u = (np.arange(w, dtype=np.float32) - cx) / fx
    v = (np.arange(h, dtype=np.float32) - cy) / fy
    rays = np.stack([np.tile(u, h), np.repeat(v, w)], axis=1)
    rays.setflags(write=False)
    return rays


def backproject(depth: np.ndarray, K: np.ndarray, cam_to_world: np.ndarray) -> np.ndarray:
    """depth (H, W) metres along the optical axis -> points (H*W, 3) float32 in the world frame.

    Pixels with non-finite or non-positive depth are dropped.
    """
    if depth.ndim != 2:
        raise ValueError(f"backproject: depth must be (H, W), got shape {depth.shape}")
    h, w = depth.shape
    rays = _pixel_rays(h, w, float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))
    z = depth.reshape(-1).astype(np.float32, copy=False)
    valid = np.isfinite(z) & (z > 0)
    z = z[valid]
    cam = np.empty((len(z), 3), dtype=np.float32)  # camera frame
    cam[:, :2] = rays[valid] * z[:, None]
    cam[:, 2] = z
    R = cam_to_world[:3, :3].astype(np.float32)
    t = cam_to_world[:3, 3].astype(np.float32)
    return cam @ R.T + t


def crop(points: np.ndarray, low, high) -> np.ndarray:
    """Keep the points (M, 3+) whose xyz lies inside the world-frame box [low, high]."""
    xyz = points[:, :3]
    keep = np.all((xyz >= np.asarray(low, dtype=xyz.dtype)) & (xyz <= np.asarray(high, dtype=xyz.dtype)), axis=1)
    return points[keep]


def farthest_point_sample(points: np.ndarray, num_points: int, max_points_before_fps: int | None = None) -> np.ndarray:
    """Pick `num_points` rows of points (M, 3) by farthest-point sampling (open3d), deterministic.

    Inputs larger than `max_points_before_fps` are first thinned by a fixed stride. Inputs with fewer
    than `num_points` rows are padded by repeating points cyclically, so the output is always
    (num_points, 3) float32. An empty input is an error.
    """
    m = len(points)
    if m == 0:
        raise ValueError("farthest_point_sample: no points to sample from (is the crop box around the scene?)")
    if m <= num_points:
        idx = np.arange(num_points) % m
        return points[idx].astype(np.float32, copy=False)
    if max_points_before_fps is not None and m > max_points_before_fps:
        stride = int(np.ceil(m / max_points_before_fps))
        points = points[::stride]
    import open3d as o3d

    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points.astype(np.float64)))
    sampled = cloud.farthest_point_down_sample(num_points)
    return np.asarray(sampled.points, dtype=np.float32)


def depth_to_point_cloud(depth: np.ndarray, camera: CameraModel, config: PointCloudConfig) -> np.ndarray:
    """The whole pipeline: depth (H, W) -> back-project -> crop -> FPS -> (num_points, 3) float32."""
    points = backproject(depth, camera.K, camera.cam_to_world)
    return crop_and_sample(points, config, source=f"camera '{camera.name}'")


def crop_and_sample(points: np.ndarray, config: PointCloudConfig, source: str = "the cloud") -> np.ndarray:
    """World-frame points (M, 3) -> crop box -> FPS -> (num_points, 3) float32: the policy's point cloud."""
    inside = crop(points, config.crop_low, config.crop_high)
    if len(inside) == 0:
        raise ValueError(
            f"point cloud: no point of {source} lies inside the crop box "
            f"low={config.crop_low} high={config.crop_high} (of {len(points)} points)"
        )
    return farthest_point_sample(inside, config.num_points, config.max_points_before_fps)
