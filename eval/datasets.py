"""What the CLI and the suite read of a recorded dataset before training on it."""

from __future__ import annotations


def dataset_shapes(path) -> dict[str, int]:
    """n_points, agent_dim, action_dim of a recorded dataset (PolicyConfig fields), from DemoDataset.shapes."""
    from mfp.demos.dataset import DemoDataset

    # A dataset without episodes: ValueError "... holds no episodes".
    shapes = DemoDataset(path, horizon=1, n_obs_steps=1).shapes
    return {"n_points": int(shapes["point_cloud"][0]), "agent_dim": int(shapes["agent_pos"][0]),
            "action_dim": int(shapes["action"][0])}
