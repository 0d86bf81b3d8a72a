"""Preprocessing benchmark: depth image -> policy point cloud, the earlier path against today's, in one process.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python -m mfp.envs.pointcloud_bench [--task metaworld/reach] [--calls 300]

(one thread: the variables must be set before numpy and open3d load, hence on the command line; with several
threads the earlier path's matrix product and open3d's OpenMP loop hand work between threads and slow down.)

`reference_depth_to_point_cloud` is the path before issue 16, kept as the baseline for timing and for the
quality tests: back-project every pixel (camera-frame rays times depth, then rotated by a matrix product),
crop, then open3d's farthest-point sampling. The two paths are timed interleaved (call by call), on one thread,
from the same rendered depth image; the figures are medians and 99th percentiles in milliseconds.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from .pointcloud import CameraModel, PointCloudConfig, crop, depth_to_point_cloud


def reference_backproject(depth: np.ndarray, K: np.ndarray, cam_to_world: np.ndarray) -> np.ndarray:
    """The earlier back-projection: depth (H, W) -> world points (M, 3) float32, row-major, valid pixels."""
    h, w = depth.shape
    u = (np.arange(w, dtype=np.float32) - K[0, 2]) / K[0, 0]
    v = (np.arange(h, dtype=np.float32) - K[1, 2]) / K[1, 1]
    rays = np.stack([np.tile(u, h), np.repeat(v, w)], axis=1)        # (H*W, 2), recomputed every call
    z = depth.reshape(-1).astype(np.float32, copy=False)
    valid = np.isfinite(z) & (z > 0)
    z = z[valid]
    cam = np.empty((len(z), 3), dtype=np.float32)
    cam[:, :2] = rays[valid] * z[:, None]
    cam[:, 2] = z
    R = cam_to_world[:3, :3].astype(np.float32)
    return cam @ R.T + cam_to_world[:3, 3].astype(np.float32)


def open3d_farthest_point_sample(points: np.ndarray, num_points: int) -> np.ndarray:
    """open3d's farthest-point sampling (the earlier sampler): (M, 3) -> (num_points, 3) float32, M > num_points."""
    import open3d as o3d

    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points.astype(np.float64)))
    return np.asarray(cloud.farthest_point_down_sample(num_points).points, dtype=np.float32)


def reference_depth_to_point_cloud(depth: np.ndarray, camera: CameraModel, config: PointCloudConfig) -> np.ndarray:
    """The whole earlier path: back-project all pixels -> crop -> (stride thinning) -> open3d FPS."""
    inside = crop(reference_backproject(depth, camera.K, camera.cam_to_world), config.crop_low, config.crop_high)
    if len(inside) > config.max_points_before_fps:
        inside = inside[::int(np.ceil(len(inside) / config.max_points_before_fps))]
    return open3d_farthest_point_sample(inside, config.num_points)


def rendered_depth(task: str = "metaworld/reach", seed: int = 0) -> tuple[np.ndarray, CameraModel, PointCloudConfig]:
    """A depth image from the task's camera after a reset, its camera model and the task's point-cloud settings."""
    from .registry import make_env

    env = make_env(task)
    try:
        env.reset(seed=seed)
        return np.array(env.camera.render_depth(), copy=True), env.camera.camera_model(), env.pc_config
    finally:
        env.close()


def bench_preprocessing(depth: np.ndarray, camera: CameraModel, config: PointCloudConfig, calls: int = 300,
                        warmup: int = 20) -> dict:
    """Time both paths on the same input, interleaved: {"old_ms": {min, p50, p99}, "new_ms": {...}, "speedup_p50"}."""
    import torch

    paths = {"old": reference_depth_to_point_cloud, "new": depth_to_point_cloud}
    times: dict[str, list[float]] = {name: [] for name in paths}
    for i in range(warmup + calls):
        for name, fn in paths.items():
            t0 = time.perf_counter()
            fn(depth, camera, config)
            if i >= warmup:
                times[name].append(1000 * (time.perf_counter() - t0))
    stats = {f"{name}_ms": {q: round(float(np.percentile(t, p)), 3) for q, p in (("min", 0), ("p50", 50), ("p99", 99))}
             for name, t in times.items()}     # min: the figure least inflated by other processes on the cores
    stats["speedup_p50"] = round(stats["old_ms"]["p50"] / stats["new_ms"]["p50"], 2)
    stats.update(image=list(depth.shape), points=config.num_points, calls=calls,
                 cpu_capability=torch.backends.cpu.get_cpu_capability())
    return stats


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="metaworld/reach")
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args(argv)
    stats = bench_preprocessing(*rendered_depth(args.task), calls=args.calls)
    print(f"{args.task} {stats['image'][0]}x{stats['image'][1]} -> {stats['points']} points, {stats['calls']} calls, "
          f"CPU {stats['cpu_capability']}: " + ", ".join(
              f"{name} p50 {stats[name + '_ms']['p50']} ms (min {stats[name + '_ms']['min']}, p99 "
              f"{stats[name + '_ms']['p99']})" for name in ("old", "new")) + f", {stats['speedup_p50']}x at p50")
    return stats


if __name__ == "__main__":
    main()
