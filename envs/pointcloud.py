"""Depth image -> world-frame point cloud: back-projection, crop box, farthest-point sampling.

This is the project's one implementation, shared by the simulators and real cameras. Cameras follow the
OpenCV convention (x right, y down, z forward, depth = z), described by a pinhole intrinsic matrix K (3, 3)
and a camera-to-world transform (4, 4). A MuJoCo camera is converted to that convention in `envs/camera.py`.

Speed (issue 16; `python -m mfp.envs.pointcloud_bench` times this against the earlier path in one process):
- per camera (K, image size, pose) the world-frame ray of every pixel is computed once and cached, so a point
  is z * ray + origin (`backproject`);
- per camera and crop box, the depth interval of every pixel that lands inside the box is cached too, so
  `depth_to_point_cloud` crops on the depth image (two comparisons a pixel) and back-projects only the pixels
  that pass; the exact world-frame crop then decides the boundary cases, so the points are exactly those of
  crop(backproject(depth)), in the same (row-major pixel) order;
- farthest-point sampling is the bucket-based one of the `fpsample` package (QuickFPS on a KD-tree, exact
  farthest-point steps inside its buckets), from the first point, deterministic; it covers the cloud as well as
  open3d's (tests/test_pointcloud.py) at a third of the time on the 2,000-point Meta-World clouds.
Inputs larger than `max_points_before_fps` are first thinned by a fixed stride.
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
def _world_rays(h: int, w: int, K: tuple, pose: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Per camera: rays (H*W, 3) float32, row-major, such that the pixel's point at depth z is z * ray + origin
    (origin (3,) float32, the camera centre in the world frame). ray = R ((u - cx) / fx, (v - cy) / fy, 1)."""
    (fx, _, cx), (_, fy, cy), _ = K
    R, origin = np.asarray(pose)[:3, :3], np.asarray(pose)[:3, 3]
    u = (np.arange(w, dtype=np.float64) - cx) / fx
    v = (np.arange(h, dtype=np.float64) - cy) / fy
    cam = np.stack([np.tile(u, h), np.repeat(v, w), np.ones(h * w)], axis=1)
    rays = (cam @ R.T).astype(np.float32)
    origin = origin.astype(np.float32)
    rays.setflags(write=False)
    origin.setflags(write=False)
    return rays, origin


@functools.lru_cache(maxsize=8)
def _depth_window(h: int, w: int, K: tuple, pose: tuple, low: tuple, high: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Per camera and crop box: (z_min, z_max), each (H*W,) float32, such that every pixel whose point
    z * ray + origin lies in [low, high] has z_min <= z <= z_max (and z_min > 0). The window is computed for the
    box grown by far more than float32 rounding of a point's coordinates (about 1e-6 of their magnitudes), then
    widened by a relative 1e-5, so it never drops a point the exact crop keeps; the exact crop decides the rest."""
    rays, origin = _world_rays(h, w, K, pose)
    d = rays.astype(np.float64)
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    grow = 1e-6 * (1.0 + 2.0 * np.abs(origin) + np.abs(low) + np.abs(high))     # world units, per axis
    lo_gap = low - grow - origin
    hi_gap = high + grow - origin
    with np.errstate(divide="ignore", invalid="ignore"):
        a, b = lo_gap / d, hi_gap / d                                   # (H*W, 3) per-axis depth bounds
    z_lo, z_hi = np.minimum(a, b), np.maximum(a, b)
    flat = d == 0                                                       # an axis the ray does not move along
    inside = (lo_gap <= 0) & (hi_gap >= 0)                               # origin within the box on that axis
    z_lo = np.where(flat, np.where(inside, -np.inf, np.inf), z_lo).max(axis=1)
    z_hi = np.where(flat, np.where(inside, np.inf, -np.inf), z_hi).min(axis=1)
    z_lo = np.maximum(z_lo - 1e-5 * np.abs(z_lo) - 1e-7, np.finfo(np.float32).tiny)
    z_hi = z_hi + 1e-5 * np.abs(z_hi) + 1e-7
    window = (z_lo.astype(np.float32), z_hi.astype(np.float32))
    for a in window:
        a.setflags(write=False)
    return window


def _camera_key(depth: np.ndarray, K: np.ndarray, cam_to_world: np.ndarray) -> tuple:
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {depth.shape}")
    K = np.asarray(K, dtype=np.float64)
    pose = np.asarray(cam_to_world, dtype=np.float64)
    if K.shape != (3, 3) or pose.shape != (4, 4):
        raise ValueError(f"camera: K must be (3, 3) and cam_to_world (4, 4), got {K.shape} and {pose.shape}")
    return (depth.shape[0], depth.shape[1], tuple(map(tuple, K)), tuple(map(tuple, pose)))


def _points_at(z: np.ndarray, rays: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """z (M,) float32, rays (M, 3) -> world points (M, 3) float32: the one formula every path uses."""
    return z[:, None] * rays + origin


def backproject(depth: np.ndarray, K: np.ndarray, cam_to_world: np.ndarray) -> np.ndarray:
    """depth (H, W) metres along the optical axis -> points (M, 3) float32 in the world frame, row-major.

    Pixels with non-finite or non-positive depth are dropped.
    """
    key = _camera_key(depth, K, cam_to_world)
    rays, origin = _world_rays(*key)
    z = depth.reshape(-1).astype(np.float32, copy=False)
    valid = np.flatnonzero(np.isfinite(z) & (z > 0))
    return _points_at(z[valid], rays[valid], origin)


def backproject_cropped(depth: np.ndarray, K: np.ndarray, cam_to_world: np.ndarray, low, high) -> np.ndarray:
    """crop(backproject(depth, K, cam_to_world), low, high), the same points in the same order, computed by
    cropping on the depth image first (cached per-pixel depth windows) and back-projecting only what passes."""
    key = _camera_key(depth, K, cam_to_world)
    low = tuple(float(v) for v in low)
    high = tuple(float(v) for v in high)
    rays, origin = _world_rays(*key)
    z_lo, z_hi = _depth_window(*key, low, high)
    z = depth.reshape(-1).astype(np.float32, copy=False)
    candidates = np.flatnonzero((z >= z_lo) & (z <= z_hi))              # NaN and inf fail both tests
    return crop(_points_at(z[candidates], rays[candidates], origin), low, high)


def crop(points: np.ndarray, low, high) -> np.ndarray:
    """Keep the points (M, 3+) whose xyz lies inside the world-frame box [low, high]."""
    xyz = points[:, :3]
    inside = (xyz >= np.asarray(low, dtype=xyz.dtype)) & (xyz <= np.asarray(high, dtype=xyz.dtype))   # (M, 3)
    return points[inside[:, 0] & inside[:, 1] & inside[:, 2]]      # half the time of np.all(axis=1) here


# The bucket KD-tree height of fpsample's bucket FPS: buckets of about 2**4 points. Measured on the 2-core
# development CPU (AVX-512), 512 of 2,125 Meta-World points: height 2 0.55 ms, 3 0.43, 4 0.41, 5 0.49, 6 0.70;
# of 4,096: 0.64, 0.54, 0.51, 0.59, 0.80 (open3d: 1.27 and 6.3 ms).
FPS_BUCKET_HEIGHT = 4


def farthest_point_sample(points: np.ndarray, num_points: int, max_points_before_fps: int | None = None) -> np.ndarray:
    """Pick `num_points` rows of points (M, 3) by farthest-point sampling (fpsample's bucket FPS from the first
    point), deterministic, in their input order.

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
    import fpsample

    xyz = np.ascontiguousarray(points[:, :3], dtype=np.float32)
    idx = np.sort(fpsample.bucket_fps_kdline_sampling(xyz, num_points, h=FPS_BUCKET_HEIGHT, start_idx=0))
    return xyz[idx]


def depth_to_point_cloud(depth: np.ndarray, camera: CameraModel, config: PointCloudConfig) -> np.ndarray:
    """The whole pipeline: depth (H, W) -> crop -> back-project -> FPS -> (num_points, 3) float32."""
    inside = backproject_cropped(depth, camera.K, camera.cam_to_world, config.crop_low, config.crop_high)
    if len(inside) == 0:
        valid = int(np.count_nonzero(np.isfinite(depth) & (depth > 0)))
        raise ValueError(f"point cloud: no point of camera '{camera.name}' lies inside the crop box "
                         f"low={config.crop_low} high={config.crop_high} (of {valid} points)")
    return farthest_point_sample(inside, config.num_points, config.max_points_before_fps)


def crop_and_sample(points: np.ndarray, config: PointCloudConfig, source: str = "the cloud") -> np.ndarray:
    """World-frame points (M, 3) -> crop box -> FPS -> (num_points, 3) float32: the policy's point cloud."""
    inside = crop(points, config.crop_low, config.crop_high)
    if len(inside) == 0:
        raise ValueError(
            f"point cloud: no point of {source} lies inside the crop box "
            f"low={config.crop_low} high={config.crop_high} (of {len(points)} points)"
        )
    return farthest_point_sample(inside, config.num_points, config.max_points_before_fps)
