"""Task names -> environments: `make_env("metaworld/pick-place")`, `make_env("adroit/door")`."""

from __future__ import annotations

import dataclasses
import functools

from .base import PointCloudEnv
from .pointcloud import PointCloudConfig

ADROIT_TASKS = ("door", "hammer", "pen", "relocate")


@functools.lru_cache(maxsize=1)
def task_names() -> tuple[str, ...]:
    """Every valid task name: the 50 Meta-World v3 tasks, then the 4 Adroit tasks."""
    from .metaworld_env import metaworld_task_names

    return tuple(f"metaworld/{t}" for t in metaworld_task_names()) + tuple(f"adroit/{t}" for t in ADROIT_TASKS)


def check_task_name(name: str) -> tuple[str, str]:
    """'suite/task' -> (suite, task); an unknown name is a ValueError listing the valid ones."""
    if not isinstance(name, str) or name not in task_names():
        valid = ", ".join(task_names())
        raise ValueError(f"unknown task {name!r}; valid tasks are: {valid}")
    suite, task = name.split("/", 1)
    return suite, task


def default_pc_config(name: str) -> PointCloudConfig:
    """The task's point-cloud settings: its crop box, 512 points."""
    suite, task = check_task_name(name)
    if suite == "metaworld":
        return PointCloudConfig()
    from .adroit_env import adroit_pc_config

    return adroit_pc_config(task)


def make_env(name: str, pc_config: PointCloudConfig | None = None, camera_size: int | None = None,
             render_rgb: bool = False, max_episode_steps: int = 200, num_points: int | None = None) -> PointCloudEnv:
    """A gymnasium env with dict observations {point_cloud (N, 3), agent_pos (d,)} (see envs/base.py).

    `pc_config` replaces the task's point-cloud settings; `num_points` changes only their point count.
    """
    suite, task = check_task_name(name)
    if num_points is not None:
        pc_config = dataclasses.replace(pc_config or default_pc_config(name), num_points=num_points)
    kwargs = dict(pc_config=pc_config, render_rgb=render_rgb, max_episode_steps=max_episode_steps)
    if camera_size is not None:
        kwargs["camera_size"] = camera_size
    if suite == "metaworld":
        from .metaworld_env import MetaWorldEnv

        return MetaWorldEnv(task, **kwargs)
    from .adroit_env import AdroitEnv

    return AdroitEnv(task, **kwargs)
