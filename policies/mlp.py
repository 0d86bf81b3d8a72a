"""A small MLP backbone with the same call signature as the UNet (see unet.py), for low-dimensional problems:
toy distributions in the tests, quick checks of a head objective without the cost of a UNet."""

from __future__ import annotations

import torch
from torch import nn

from .embeddings import NullCondition, TimeEmbedding


class MLPBackbone(nn.Module):
    """x: (B, H, A) flattened, concatenated with the time embedding(s) and the condition, through `depth`
    hidden layers of width `hidden` (SiLU). Features for the dispersive loss: every hidden layer's output."""

    def __init__(self, action_dim: int, horizon: int = 1, cond_dim: int = 0, hidden: int = 128, depth: int = 3,
                 time_embed_dim: int = 32, time_scale: float = 1.0, two_times: bool = False,
                 time_combine: str = "sum", second_time: str = "r"):
        super().__init__()
        self.horizon, self.action_dim, self.cond_dim = horizon, action_dim, cond_dim
        self.time_embed = TimeEmbedding(time_embed_dim, time_scale, two_times, time_combine, second_time)
        self.null_cond = NullCondition(cond_dim) if cond_dim > 0 else None
        c_in = horizon * action_dim + self.time_embed.out_dim + cond_dim
        self.hidden = nn.ModuleList()
        for _ in range(depth):
            self.hidden.append(nn.Sequential(nn.Linear(c_in, hidden), nn.SiLU()))
            c_in = hidden
        self.out = nn.Linear(c_in, horizon * action_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, r: torch.Tensor | None = None,
                cond: torch.Tensor | None = None, null_mask: torch.Tensor | None = None,
                return_features: bool = False):
        B = x.shape[0]
        parts = [x.reshape(B, -1), self.time_embed(t, r)]
        if self.cond_dim > 0:
            if cond is None:
                raise ValueError("this MLPBackbone was built with cond_dim > 0: pass `cond`")
            parts.append(self.null_cond(cond, null_mask))
        h = torch.cat(parts, dim=-1)
        features = []
        for layer in self.hidden:
            h = layer(h)
            features.append(h)
        out = self.out(h).reshape(B, self.horizon, self.action_dim)
        return (out, features) if return_features else out
