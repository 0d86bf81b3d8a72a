"""Observation encoder (DP3): a PointNet-style point-cloud branch and a state MLP, concatenated per observation
step and flattened over the n_obs_steps steps into the global condition of the backbone.

    point_cloud: (B, To, N, 3), agent_pos: (B, To, d)  ->  cond: (B, To * (point_out_dim + state_dims[-1]))
With DP3's widths: 64 + 64 = 128 per step, 256 for To = 2.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import EncoderConfig


class PointNetEncoderXYZ(nn.Module):
    """Shared per-point MLP 3 -> 64 -> 128 -> 256 (LayerNorm + ReLU after each), max-pool over points,
    Linear 256 -> 64 + LayerNorm. No T-Net, no colour."""

    def __init__(self, dims: tuple[int, ...] = (64, 128, 256), out_dim: int = 64):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in dims:
            layers += [nn.Linear(c_in, c_out), nn.LayerNorm(c_out), nn.ReLU()]
            c_in = c_out
        self.point_mlp = nn.Sequential(*layers)
        self.projection = nn.Sequential(nn.Linear(c_in, out_dim), nn.LayerNorm(out_dim))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """points: (B, N, 3) -> (B, out_dim)."""
        return self.projection(self.point_mlp(points).amax(dim=1))  # amax: 10x faster than max(dim).values here


class StateMLP(nn.Sequential):
    """d -> 64 -> 64 with ReLU between layers (DP3's create_mlp: no activation after the last layer)."""

    def __init__(self, in_dim: int, dims: tuple[int, ...] = (64, 64)):
        layers: list[nn.Module] = []
        c_in = in_dim
        for i, c_out in enumerate(dims):
            layers.append(nn.Linear(c_in, c_out))
            if i < len(dims) - 1:
                layers.append(nn.ReLU())
            c_in = c_out
        super().__init__(*layers)


class ObsEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig, agent_dim: int, n_obs_steps: int):
        super().__init__()
        self.n_obs_steps = n_obs_steps
        self.point_encoder = PointNetEncoderXYZ(cfg.point_dims, cfg.point_out_dim)
        self.state_mlp = StateMLP(agent_dim, cfg.state_dims)
        self.out_dim = n_obs_steps * cfg.step_dim

    def forward(self, point_cloud: torch.Tensor, agent_pos: torch.Tensor) -> torch.Tensor:
        """point_cloud: (B, To, N, 3), agent_pos: (B, To, d) -> (B, To * step_dim), steps in time order."""
        B, To = point_cloud.shape[:2]
        pc_feat = self.point_encoder(point_cloud.reshape(B * To, *point_cloud.shape[2:]))  # (B To, 64)
        state_feat = self.state_mlp(agent_pos.reshape(B * To, -1))                         # (B To, 64)
        return torch.cat([pc_feat, state_feat], dim=-1).reshape(B, -1)
