"""`mfp tasks`: list the valid task names."""

from __future__ import annotations


def tasks_parser(sub) -> None:
    p = sub.add_parser("tasks", help="list the valid task names", description="List every valid --task name.")
    p.set_defaults(run=_tasks_run)


def _tasks_run(args) -> int:
    from mfp.envs import task_names

    print("\n".join(task_names()))
    return 0
