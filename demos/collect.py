"""Record expert demonstrations into a DemoStore: only successful episodes, executed (clipped) actions."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mfp.envs import PointCloudConfig, make_env

from .experts import make_expert
from .provenance import provenance
from .seeds import check_demo_seed
from .store import DemoStore, DemoStoreError


@dataclass
class CollectReport:
    path: Path
    task: str
    episodes_added: int
    attempts: int
    seeds_added: list[int] = field(default_factory=list)
    failed_seeds: list[int] = field(default_factory=list)
    total_episodes: int = 0
    interrupted: bool = False

    @property
    def expert_success_rate(self) -> float:
        return self.episodes_added / self.attempts if self.attempts else float("nan")

    def summary(self) -> str:
        state = " (interrupted; every committed episode is intact)" if self.interrupted else ""
        return (
            f"{self.path}: +{self.episodes_added} episodes of {self.task} ({self.total_episodes} in total){state}; "
            f"expert success {self.episodes_added}/{self.attempts} attempts; seeds {self.seeds_added}"
            + (f"; failed seeds {self.failed_seeds}" if self.failed_seeds else "")
        )


def run_expert_episode(env, expert, seed: int) -> tuple[dict[str, np.ndarray], bool]:
    """One episode driven by `expert`: the recorded arrays (observation at t, executed action at t) and success."""
    obs, info = env.reset(seed=seed)
    frames = {"point_cloud": [], "state": [], "action": [], "full_state": []}
    success, done = False, False
    while not done:
        frames["point_cloud"].append(obs["point_cloud"])
        frames["state"].append(obs["agent_pos"])
        frames["full_state"].append(info["full_state"])
        obs, _, terminated, truncated, info = env.step(expert.act(info["full_state"]))
        frames["action"].append(info["executed_action"])
        success = success or info["success"]
        done = terminated or truncated
    return {k: np.stack(v).astype(np.float32) for k, v in frames.items()}, bool(success)


def _open_or_create(out: Path, task: str, env) -> DemoStore:
    description = env.describe()
    if out.exists():
        store = DemoStore.open(out, mode="a")
        attrs = store.attrs
        if attrs.get("task") != task:
            raise DemoStoreError(f"{out}: holds task '{attrs.get('task')}', cannot append '{task}'")
        if attrs.get("env", {}).get("point_cloud") != description["point_cloud"]:
            raise DemoStoreError(
                f"{out}: was recorded with point-cloud settings {attrs.get('env', {}).get('point_cloud')}, "
                f"these are {description['point_cloud']}"
            )
        return store
    out.parent.mkdir(parents=True, exist_ok=True)
    return DemoStore.create(out, attrs={
        "task": task,
        "env": description,
        "camera": description["camera"],
        "point_cloud": description["point_cloud"],
        "action_recorded": "executed (clipped to the action space)",
        "episode_seeds": [],
        "attempted_seeds": [],
        "provenance": provenance(),
        "format": "DP3-compatible: data/{point_cloud,state,action,full_state}, meta/episode_ends",
    })


def collect(task: str, episodes: int, out, seed_start: int | None = None, max_attempts: int | None = None,
            pc_config: PointCloudConfig | None = None, camera_size: int | None = None,
            progress: bool = True, expert=None, num_points: int | None = None) -> CollectReport:
    """Record `episodes` successful expert episodes of `task` into the zarr store `out` (created or appended).

    Seeds continue after the last one the store attempted (or start at `seed_start`), stay in the
    demonstration range, and are recorded: `episode_seeds` for kept episodes, `attempted_seeds` for all.
    `expert`: any object with `.act(full_state) -> action`; the task's own expert by default.
    """
    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    out = Path(out)
    env = make_env(task, pc_config=pc_config, camera_size=camera_size, num_points=num_points)
    expert = expert if expert is not None else make_expert(task)
    store = _open_or_create(out, task, env)
    attrs = store.attrs
    attempted = list(attrs.get("attempted_seeds", []))
    episode_seeds = list(attrs.get("episode_seeds", []))[: store.n_episodes]
    seed = seed_start if seed_start is not None else (max(attempted) + 1 if attempted else 0)
    if seed in attempted:
        raise ValueError(f"{out}: seed {seed} was already used by this dataset; choose a --seed-start after {max(attempted)}")
    max_attempts = max_attempts if max_attempts is not None else 3 * episodes + 10
    report = CollectReport(path=out, task=task, episodes_added=0, attempts=0)

    stop = {"requested": False}
    previous_handler = signal.getsignal(signal.SIGTERM)

    def request_stop(signum, frame):  # finish the current commit, then stop
        stop["requested"] = True

    signal.signal(signal.SIGTERM, request_stop)
    bar = tqdm(total=episodes, desc=f"collect {task}", unit="ep", disable=not progress)
    try:
        while report.episodes_added < episodes and report.attempts < max_attempts and not stop["requested"]:
            check_demo_seed(seed)
            report.attempts += 1
            episode, success = run_expert_episode(env, expert, seed)
            attempted.append(seed)
            if success:
                # Seeds first, then the data commit: a seed can be recorded as attempted without its episode,
                # never the other way round, so no seed is ever reused.
                store.update_attrs(attempted_seeds=attempted, episode_seeds=episode_seeds + [seed])
                store.add_episode(episode)
                episode_seeds.append(seed)
                report.seeds_added.append(seed)
                report.episodes_added += 1
                bar.update(1)
            else:
                store.update_attrs(attempted_seeds=attempted)
                report.failed_seeds.append(seed)
            bar.set_postfix(attempts=report.attempts, expert_success=f"{report.expert_success_rate:.0%}")
            seed += 1
    except KeyboardInterrupt:
        report.interrupted = True
    finally:
        bar.close()
        signal.signal(signal.SIGTERM, previous_handler)
        env.close()
    report.interrupted = report.interrupted or stop["requested"]
    report.total_episodes = store.n_episodes
    if report.episodes_added < episodes and not report.interrupted:
        raise RuntimeError(
            f"{report.summary()}: the expert succeeded in only {report.episodes_added} of {report.attempts} attempts "
            f"(limit --max-attempts {max_attempts})"
        )
    return report
