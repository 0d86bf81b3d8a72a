"""The training hook that evaluates a policy in simulation while it trains (`mfp train --eval-every`, the suite's
top-5 figure)."""

from __future__ import annotations


def simulation_eval_fn(data_path, episodes: int):
    """The training hook that rolls the EMA policy out in the dataset's task on `episodes` evaluation seeds."""
    from mfp.demos.seeds import eval_seeds
    from mfp.demos.store import DemoStore

    from .evaluator import evaluate

    if episodes < 1:
        raise ValueError(f"--eval-episodes must be >= 1 when evaluating during training, got {episodes}")
    attrs = DemoStore.open(data_path).attrs
    task, point_cloud = attrs.get("task"), attrs.get("point_cloud")
    if task is None:
        raise ValueError(f"{data_path}: the dataset names no task, so it cannot be evaluated in simulation")

    def eval_fn(policy, step: int) -> dict:
        result = evaluate(policy, task, eval_seeds(episodes), progress=False, point_cloud=point_cloud)
        return {k: result[k] for k in ("task", "n_episodes", "success_rate", "inference_ms_p50", "inference_ms_p99")}

    return eval_fn
