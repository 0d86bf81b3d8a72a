"""Evaluation in simulation: a policy (or the task's expert) rolled out on fixed, seeded episodes, serially or over
several worker processes, with videos of the first episodes and a picture of one observation's point cloud.

Every episode is a pure function of its seed: the environment's reset and the policy's sampling noise are both
seeded by it (PolicyRunner.reset), so a serial run and a parallel run of the same seeds give the same records.
Workers are spawned processes, each owning one environment and one copy of the policy (one torch thread each,
`threads`), and take episodes one at a time from a shared queue. A serial run (workers=1) is one such worker in
this process: it runs with the same thread count, restored afterwards (precision.py: the thread rule).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mfp.envs import EPISODE_STEPS
from mfp.eval.sim.rollout import EpisodeRecord, ExpertActor, PolicyRunner, run_episode
from mfp.eval.stats import percentile
from mfp.eval.task_check import policy_observation_settings, task_to_run
from mfp.policies.training.precision import INFERENCE_THREADS, torch_threads


@dataclass(frozen=True)
class EvalSetup:
    """What a worker needs to build its environment and actor: picklable, sent once per worker."""
    task: str
    point_cloud: dict | None
    policy: object | None            # a policy module, or None for the task's expert
    device: str = "cpu"
    video_seeds: tuple[int, ...] = ()
    video_dir: str | None = None
    video_format: str = "mp4"
    fps: int = 20
    max_episode_steps: int = EPISODE_STEPS

    def make_env(self):
        from mfp.envs import PointCloudConfig, make_env

        pc = PointCloudConfig.from_dict(self.point_cloud) if self.point_cloud else None
        return make_env(self.task, pc_config=pc, max_episode_steps=self.max_episode_steps)

    def make_actor(self, env):
        if self.policy is None:
            return ExpertActor(self.task, env.full_state)
        return PolicyRunner(self.policy, self.device)


class EpisodeWorker:
    """One environment + one actor, running episodes by seed (in this process or in a pool worker)."""

    def __init__(self, setup: EvalSetup):
        self.setup = setup
        self.env = setup.make_env()
        self.actor = setup.make_actor(self.env)

    def run(self, seed: int) -> EpisodeRecord:
        setup = self.setup
        frames = [] if seed in setup.video_seeds and setup.video_dir else None
        record = run_episode(self.env, self.actor, seed, frames=frames)
        if frames:
            record.video = str(save_video(frames, Path(setup.video_dir) / f"seed{seed}.{setup.video_format}",
                                          fps=setup.fps))
        return record

    def close(self) -> None:
        self.env.close()


_WORKER: EpisodeWorker | None = None


def _init_worker(setup: EvalSetup, threads: int = 1) -> None:
    global _WORKER
    import torch

    torch.set_num_threads(threads)
    _WORKER = EpisodeWorker(setup)


def _run_in_worker(seed: int) -> EpisodeRecord:
    return _WORKER.run(seed)


def save_video(frames: list[np.ndarray], path, fps: int = 20) -> Path:
    """RGB frames (H, W, 3) uint8 -> an mp4 (H.264 through imageio-ffmpeg) or a gif, by the path's suffix."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    if path.suffix == ".gif":
        imageio.mimsave(tmp, frames, duration=1000 / fps, loop=0)
    else:
        # macro_block_size=1 keeps odd frame sizes as they are (no rescaling warnings)
        imageio.mimsave(tmp, frames, fps=fps, macro_block_size=1)
    os.replace(tmp, path)
    return path


def summarize(records: list[EpisodeRecord]) -> dict:
    latencies = [ms for r in records for ms in r.inference_ms]
    return {
        "n_episodes": len(records),
        "success_rate": float(np.mean([r.success for r in records])) if records else float("nan"),
        "mean_return": float(np.mean([r.episode_return for r in records])) if records else float("nan"),
        "inference_ms_p50": percentile(latencies, 50),
        "inference_ms_p99": percentile(latencies, 99),
    }


def resolve_task(policy, task: str | None, point_cloud: dict | None) -> tuple[str, dict | None]:
    """The task and point-cloud settings to evaluate in: the checkpoint's own unless given; a task other than the
    one the policy was trained on is refused (its observations would differ)."""
    settings = policy_observation_settings(policy) if policy is not None else {"task": None, "point_cloud": None}
    task = task_to_run(task, settings["task"], prefix="evaluate: ")
    if task is None:
        raise ValueError("evaluate: no task given and the policy's checkpoint names none")
    return task, point_cloud if point_cloud is not None else settings["point_cloud"]


def evaluate(policy, task: str | None, seeds, device: str = "cpu", progress: bool = True,
             point_cloud: dict | None = None, workers: int = 1, video_dir=None, n_videos: int = 0,
             video_format: str = "mp4", max_episode_steps: int = EPISODE_STEPS, threads: int | None = None) -> dict:
    """Roll `policy` (None: the task's expert) out on `seeds`: {"task", "success_rate", ..., "episodes": [...]}.

    `seeds`: a list, or seed sets {set number: seeds} (mfp.demos.seeds.eval_seed_set), all run in one pass; the
    result then also holds each set's success and "success_std", the spread over the sets.

    The environment makes observations exactly as the policy's training data did (task, crop box, point count
    from the checkpoint, or `point_cloud`: the dataset's settings). `workers` > 1 runs episodes in that many
    spawned processes; the records are the same as a serial run's. The first `n_videos` seeds are recorded as
    videos under `video_dir`. A policy is only evaluated on evaluation seeds (>= EVAL_SEED_START, never a
    demonstration's); the expert may replay any seed. `threads`: torch threads per worker, the serial run in this
    process included (default: precision.INFERENCE_THREADS, 1: batch-1 inference is per-operation overhead bound,
    and a thread that loses its core on a shared machine stalls every call).
    """
    from tqdm import tqdm

    from mfp.demos.seeds import EVAL_SEED_START

    seed_sets = {int(k): [int(x) for x in v] for k, v in seeds.items()} if isinstance(seeds, dict) else None
    seeds = [x for v in seed_sets.values() for x in v] if seed_sets else [int(x) for x in seeds]
    if len(set(seeds)) != len(seeds):
        raise ValueError("evaluate: a seed is listed twice")
    if workers < 1:
        raise ValueError(f"evaluate: workers must be >= 1, got {workers}")
    threads = INFERENCE_THREADS if threads is None else int(threads)
    if threads < 1:
        raise ValueError(f"evaluate: threads must be >= 1, got {threads}")
    if policy is not None and any(s < EVAL_SEED_START for s in seeds):
        raise ValueError(f"evaluate: seeds below {EVAL_SEED_START} are demonstration seeds; a policy is evaluated "
                         f"only on evaluation seeds (mfp.demos.seeds.eval_seeds), got {min(seeds)}")
    task, point_cloud = resolve_task(policy, task, point_cloud)
    setup = EvalSetup(task=task, point_cloud=point_cloud, policy=policy, device=str(device),
                      video_seeds=tuple(seeds[:n_videos]) if video_dir else (),
                      video_dir=str(video_dir) if video_dir else None, video_format=video_format,
                      max_episode_steps=max_episode_steps)
    label = "expert" if policy is None else "policy"
    bar = tqdm(total=len(seeds), desc=f"eval {task} ({label})", unit="ep", disable=not progress)
    by_seed: dict[int, EpisodeRecord] = {}

    def done(record: EpisodeRecord) -> None:
        by_seed[record.seed] = record
        bar.update(1)
        bar.set_postfix(success=f"{np.mean([r.success for r in by_seed.values()]):.0%}")

    try:
        if workers == 1 or len(seeds) == 1:
            with torch_threads(threads):                  # one worker, in this process: the workers' thread rule
                worker = EpisodeWorker(setup)
                try:
                    for seed in seeds:
                        done(worker.run(seed))
                finally:
                    worker.close()
        else:
            _run_pool(setup, seeds, workers, done, threads)
    finally:
        bar.close()
    records = [by_seed[s] for s in seeds]
    result = {"task": task, "actor": label, "workers": workers, **summarize(records),
              "episodes": [r.to_dict() for r in records]}
    if seed_sets:
        set_of = {x: k for k, v in seed_sets.items() for x in v}
        rates = {str(k): float(np.mean([by_seed[x].success for x in v])) for k, v in seed_sets.items()}
        result.update(success_by_seed_set=rates, success_std=float(np.std(list(rates.values()))))
        for e in result["episodes"]:
            e["seed_set"] = set_of[e["seed"]]
    if video_dir and n_videos:
        result["videos"] = [r.video for r in records if r.video]
    return result


def _run_pool(setup: EvalSetup, seeds: list[int], workers: int, done, threads: int = 1) -> None:
    import concurrent.futures as cf

    import torch.multiprocessing as tmp

    ctx = tmp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=min(workers, len(seeds)), mp_context=ctx,
                                initializer=_init_worker, initargs=(setup, threads)) as pool:
        futures = [pool.submit(_run_in_worker, seed) for seed in seeds]
        try:
            for future in cf.as_completed(futures):
                done(future.result())
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def save_observation_picture(task: str, point_cloud: dict | None, seed: int, path) -> Path:
    """A picture of the point cloud the policy sees at the start of episode `seed`, with the crop box."""
    from mfp.eval.sim.plots import save_point_cloud_png

    env = EvalSetup(task=task, point_cloud=point_cloud, policy=None).make_env()
    try:
        obs, _ = env.reset(seed=seed)
        pc = env.pc_config
        return save_point_cloud_png(obs["point_cloud"], path, title=f"{task}, seed {seed}: {len(obs['point_cloud'])} "
                                    f"points (what the policy sees)", crop_low=pc.crop_low, crop_high=pc.crop_high)
    finally:
        env.close()
