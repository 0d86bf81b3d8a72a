"""Rollouts of a policy in a simulated task: the policy side (observation history, action chunks) and episodes.

`PolicyRunner` is the one implementation of the policy side: it keeps the last n_obs_steps observations
(the first one repeated at an episode's start, as the training windows are padded), calls the network
only when its queue of chunked actions is empty, and times each call. A simulator or a robot gives it
observation dicts {point_cloud (N, 3), agent_pos (d,)} and executes the actions it returns.
"""

from __future__ import annotations

import collections
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from mfp.policies.base import obs_to_torch


class PolicyRunner:
    def __init__(self, policy, device: str | torch.device = "cpu"):
        self.policy = policy.to(device).eval()
        self.device = torch.device(device)
        cfg = policy.config
        self.n_obs_steps = int(cfg.n_obs_steps)
        self._history: collections.deque = collections.deque(maxlen=self.n_obs_steps)
        self._queue: collections.deque = collections.deque()
        self.inference_ms: list[float] = []

    def reset(self) -> None:
        self._history.clear()
        self._queue.clear()
        self.policy.reset()

    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """The next action (d_act,) for the latest observation."""
        if not self._history:
            self._history.extend([obs] * self.n_obs_steps)
        else:
            self._history.append(obs)
        if not self._queue:
            batch = obs_to_torch(list(self._history), self.device)
            t0 = time.perf_counter()
            actions = self.policy.predict_action(batch)["action"][0]  # (n_action_steps, d_act)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.inference_ms.append(1000 * (time.perf_counter() - t0))
            self._queue.extend(actions.float().cpu().numpy())
        return self._queue.popleft()


@dataclass
class EpisodeRecord:
    seed: int
    success: bool
    steps: int
    episode_return: float
    first_success_step: int | None = None
    inference_ms: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["inference_ms_mean"] = float(np.mean(self.inference_ms)) if self.inference_ms else None
        del d["inference_ms"]
        return d


def run_episode(env, runner: PolicyRunner, seed: int, frames: list | None = None) -> EpisodeRecord:
    """One episode from `seed` until the env truncates; `frames` collects RGB renders when given."""
    runner.reset()
    obs, _ = env.reset(seed=seed)
    record = EpisodeRecord(seed=int(seed), success=False, steps=0, episode_return=0.0)
    n_calls = len(runner.inference_ms)
    done = False
    while not done:
        if frames is not None:
            frames.append(env.render())
        obs, reward, terminated, truncated, info = env.step(runner.act(obs))
        record.steps += 1
        record.episode_return += float(reward)
        if info["success"] and not record.success:
            record.success, record.first_success_step = True, record.steps
        done = terminated or truncated
    record.inference_ms = runner.inference_ms[n_calls:]
    return record


def policy_observation_settings(policy) -> dict:
    """The task and point-cloud settings a checkpointed policy was trained with (from its dataset)."""
    data = getattr(policy, "checkpoint_info", {}).get("data", {})
    return {"task": data.get("task"), "point_cloud": data.get("point_cloud")}


def evaluate(policy, task: str | None, seeds, device: str = "cpu", progress: bool = True,
             point_cloud: dict | None = None) -> dict:
    """Success over the given evaluation seeds, serially: {"success_rate", "episodes": [...], ...}.

    The environment makes observations exactly as the policy's training data did (task, crop box, point
    count from the checkpoint, or `point_cloud`: the dataset's settings); `task` may only be omitted for a
    checkpointed policy.
    """
    from tqdm import tqdm

    from mfp.envs import PointCloudConfig, make_env

    settings = policy_observation_settings(policy)
    if point_cloud is not None:
        settings["point_cloud"] = point_cloud
    task = task or settings["task"]
    if task is None:
        raise ValueError("evaluate: no task given and the policy's checkpoint names none")
    if settings["task"] is not None and task != settings["task"]:
        raise ValueError(f"evaluate: the policy was trained on {settings['task']}, not {task}")
    pc = settings["point_cloud"]
    env = make_env(task, pc_config=PointCloudConfig.from_dict(pc) if pc else None)
    runner = PolicyRunner(policy, device)
    records = []
    try:
        bar = tqdm(list(seeds), desc=f"eval {task}", unit="ep", disable=not progress)
        for seed in bar:
            records.append(run_episode(env, runner, seed))
            bar.set_postfix(success=f"{np.mean([r.success for r in records]):.0%}")
    finally:
        env.close()
    latencies = [ms for r in records for ms in r.inference_ms]
    return {
        "task": task,
        "n_episodes": len(records),
        "success_rate": float(np.mean([r.success for r in records])) if records else float("nan"),
        "inference_ms_p50": float(np.percentile(latencies, 50)) if latencies else None,
        "inference_ms_p99": float(np.percentile(latencies, 99)) if latencies else None,
        "episodes": [r.to_dict() for r in records],
    }
