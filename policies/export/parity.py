"""How far an exported policy's actions are from its torch source's: the figure `mfp export` prints.

    max_action_difference(torch_policy, onnx_policy)   # max |onnx - torch| over a batch, environment units

Both are given the same observations and the same sampling noise. The observations are drawn uniformly inside the
normaliser's ranges (the values the policy was trained on: its min-max statistics), so the check needs no dataset.
It is cheap (one batch through each) and catches a graph that does not compute what the torch policy computes; the
thorough check, over the frames of a recorded episode, is tests/test_export.py.
"""

from __future__ import annotations

import torch


def training_range_observations(policy, batch: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """{point_cloud (B, To, N, 3), agent_pos (B, To, d)} uniform inside the normaliser's ranges (standard normal
    for a key without statistics)."""
    cfg, normalizer = policy.config, policy.normalizer
    shapes = {"point_cloud": (batch, cfg.n_obs_steps, cfg.n_points, 3),
              "agent_pos": (batch, cfg.n_obs_steps, cfg.agent_dim)}
    g = torch.Generator().manual_seed(seed)
    obs = {}
    for key, shape in shapes.items():
        if key in normalizer.keys:
            unit = 2 * torch.rand(shape, generator=g) - 1                   # [-1, 1]: the normalised range
            obs[key] = normalizer.unnormalize(key, unit).float()
        else:
            obs[key] = torch.randn(shape, generator=g)
    return obs


@torch.no_grad()
def max_action_difference(torch_policy, onnx_policy, batch: int = 8, seed: int = 0) -> float:
    """max |onnx - torch| of the whole predicted window (action_pred), same observations, and the same noise: each
    draws it from a generator seeded alike, exactly as the other does (OnnxPolicy.predict_action). The torch policy
    is used as it is (on the CPU, float32, in eval mode, as load_policy gives it)."""
    obs = training_range_observations(torch_policy, batch, seed)
    ref = torch_policy.predict_action(obs, generator=torch.Generator().manual_seed(seed + 1))["action_pred"]
    out = onnx_policy.predict_action(obs, generator=torch.Generator().manual_seed(seed + 1))["action_pred"]
    return float((out - ref).abs().max())
