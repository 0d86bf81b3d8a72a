"""Which task, and which observation settings, a trained policy runs with: one rule for the evaluator and
`mfp control`."""

from __future__ import annotations


def task_to_run(requested: str | None, trained_on: str | None, prefix: str = "") -> str | None:
    """`requested`, else the task the policy was trained on (its checkpoint's dataset). Another task than the one it
    was trained on is refused: its observations (camera, crop box, state) would differ. `prefix` starts the
    error's message (e.g. "evaluate: ")."""
    if requested and trained_on and requested != trained_on:
        raise ValueError(f"{prefix}the policy was trained on {trained_on}, not {requested}")
    return requested or trained_on


def policy_observation_settings(policy) -> dict:
    """The task and point-cloud settings a checkpointed policy was trained with (from its dataset)."""
    data = getattr(policy, "checkpoint_info", {}).get("data", {})
    return {"task": data.get("task"), "point_cloud": data.get("point_cloud")}
