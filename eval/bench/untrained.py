"""Policies with random weights for the speed benchmarks: the compute of a trained policy without training one."""

from __future__ import annotations

import numpy as np
import torch


def untrained_policy(head: str, preset: str, n_points: int, agent_dim: int, cloud: np.ndarray, device: str):
    """A policy with random weights and a normaliser fitted to `cloud`: the compute of a trained one."""
    from mfp.demos.normalizer import MinMaxNormalizer
    from mfp.policies import PolicyConfig, build_policy

    torch.manual_seed(0)
    policy = build_policy(PolicyConfig(head=head, n_points=n_points, agent_dim=agent_dim, action_dim=4,
                                       unet={"preset": preset}))
    rng = np.random.default_rng(0)
    policy.set_normalizer(MinMaxNormalizer().fit({"point_cloud": cloud, "agent_pos": rng.normal(size=(64, agent_dim)),
                                                  "action": rng.uniform(-1, 1, size=(64, 4))}))
    return policy.to(device).eval()
