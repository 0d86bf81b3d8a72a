"""`mfp bench collect`: environment steps per second with point-cloud observations.

Measures, for one task: steps/s of a single process, the time per step of each stage (simulation,
depth render, crop + back-projection as the environments do it (envs.pointcloud.backproject_cropped),
farthest-point sampling (fpsample's bucket FPS, envs.farthest_point_sample)), that FPS against a numpy FPS
on the same inputs (ratio), and the total steps/s of several processes stepping their own environments
at once. Prints the figures and saves them as JSON with their provenance.
"""

from __future__ import annotations

import multiprocessing as mp
import time

import numpy as np

from mfp.demos.provenance import provenance
from mfp.envs import EPISODE_STEPS, farthest_point_sample, make_env
from mfp.envs.pointcloud import backproject_cropped
from mfp.eval.bench.save import save_and_print


def _numpy_fps(points: np.ndarray, k: int) -> np.ndarray:
    """Reference FPS in numpy (one vectorised distance update per picked point)."""
    picked = np.zeros(k, dtype=np.int64)
    dist = np.full(len(points), np.inf, dtype=np.float32)
    current = 0
    for j in range(k):
        picked[j] = current
        np.minimum(dist, ((points - points[current]) ** 2).sum(1), out=dist)
        current = int(dist.argmax())
    return points[picked]


def _stage_times(task: str, steps: int) -> dict:
    env = make_env(task)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    t_sim = t_render = t_project = t_fps = t_fps_numpy = 0.0
    n_cloud = []
    cfg = env.pc_config
    for i in range(steps):
        action = rng.uniform(env.action_space.low, env.action_space.high).astype(np.float32)
        t0 = time.perf_counter()
        env._sim_step(action)
        t1 = time.perf_counter()
        depth = env.camera.render_depth()
        t2 = time.perf_counter()
        cam = env.camera.camera_model()
        inside = backproject_cropped(depth, cam.K, cam.cam_to_world, cfg.crop_low, cfg.crop_high)
        t3 = time.perf_counter()
        farthest_point_sample(inside, cfg.num_points, cfg.max_points_before_fps)
        t4 = time.perf_counter()
        if i < 10:  # the numpy reference is slow: a few calls suffice
            stride = int(np.ceil(len(inside) / cfg.max_points_before_fps))
            _numpy_fps(inside[::stride], cfg.num_points)
            t_fps_numpy += time.perf_counter() - t4
        t_sim, t_render, t_project, t_fps = t_sim + t1 - t0, t_render + t2 - t1, t_project + t3 - t2, t_fps + t4 - t3
        n_cloud.append(len(inside))
        if env._steps + 1 >= env.max_episode_steps:
            env.reset(seed=i)
    env.close()
    ms = lambda t, n=steps: round(1000 * t / n, 3)  # noqa: E731
    return {
        "sim_step_ms": ms(t_sim), "render_depth_ms": ms(t_render), "backproject_crop_ms": ms(t_project),
        "fps_fpsample_ms": ms(t_fps), "fps_numpy_ms": ms(t_fps_numpy, min(10, steps)),
        "fps_numpy_over_fpsample": round((t_fps_numpy / min(10, steps)) / (t_fps / steps), 2),
        "cropped_points_mean": int(np.mean(n_cloud)),
    }


def _steps_per_second(task: str, steps: int, seed: int = 0) -> float:
    """Full env.step (simulation + point cloud) rate of one process, random actions."""
    env = make_env(task)
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    env.step(env.action_space.sample())  # warm the renderer up
    t0 = time.perf_counter()
    for _ in range(steps):
        _, _, _, truncated, _ = env.step(rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))
        if truncated:
            env.reset(seed=seed)
    rate = steps / (time.perf_counter() - t0)
    env.close()
    return rate


def _worker(args) -> float:
    task, steps, seed = args
    return _steps_per_second(task, steps, seed)


def bench_collect(task: str = "metaworld/pick-place", steps: int = 400, processes=(1, 2), out="runs/bench/collect.json",
                  echo=print) -> dict:
    echo(f"bench collect: {task}, {steps} steps per process")
    result = {"task": task, "steps_per_process": steps, "provenance": provenance()}
    result["stages"] = _stage_times(task, min(steps, EPISODE_STEPS))
    echo("  per-step stages (ms): " + ", ".join(f"{k}={v}" for k, v in result["stages"].items()))
    result["single_process_steps_per_s"] = round(_steps_per_second(task, steps), 1)
    echo(f"  1 process: {result['single_process_steps_per_s']} steps/s")
    result["parallel"] = []
    ctx = mp.get_context("spawn")
    for n in processes:
        if n <= 1:
            continue
        t0 = time.perf_counter()
        with ctx.Pool(n) as pool:
            rates = pool.map(_worker, [(task, steps, s) for s in range(n)])
        wall = time.perf_counter() - t0
        entry = {"processes": n, "per_process_steps_per_s": [round(r, 1) for r in rates],
                 "total_steps_per_s": round(sum(rates), 1), "wall_s_including_startup": round(wall, 1)}
        result["parallel"].append(entry)
        echo(f"  {n} processes: {entry['total_steps_per_s']} steps/s in total ({entry['per_process_steps_per_s']} each)")
    return save_and_print(result, out, None)
