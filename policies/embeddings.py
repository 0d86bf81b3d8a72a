"""Conditioning pieces shared by the backbones: time embeddings (one time t, or two times r and t) and the
learned null condition used for classifier-free guidance."""

from __future__ import annotations

import math

import torch
from torch import nn


class SinusoidalEmbedding(nn.Module):
    """t: (B,) -> (B, dim) [sin | cos] features of (scale * t); frequencies 1 ... 1/10000 (DP3 / DDPM).

    `scale` maps t in [0, 1] to the range the frequencies are meant for. It multiplies du/dt in MeanFlow's
    JVP, so it changes the training signal, not just the parametrisation (ALGORITHMS.md pitfalls)."""

    def __init__(self, dim: int, scale: float = 1.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"sinusoidal embedding dim must be even, got {dim}")
        self.dim, self.scale = dim, float(scale)
        half = dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / max(half - 1, 1))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = (self.scale * t)[:, None] * self.freqs.to(t.dtype)[None, :]  # (B, dim/2)
        return torch.cat([args.sin(), args.cos()], dim=-1)


def _time_mlp(dim: int, scale: float) -> nn.Sequential:
    return nn.Sequential(SinusoidalEmbedding(dim, scale), nn.Linear(dim, 4 * dim), nn.Mish(), nn.Linear(4 * dim, dim))


class TimeEmbedding(nn.Module):
    """Embeds t (one-time heads) or (t, r) (average-velocity heads), each by sinusoid + MLP.

    two_times: second input is r (second="r") or t - r (second="t_minus_r"), with its own MLP; the two embeddings
    are summed (out_dim = dim) or concatenated (out_dim = 2 dim)."""

    def __init__(self, dim: int, scale: float, two_times: bool = False, combine: str = "sum", second: str = "r"):
        super().__init__()
        if combine not in ("sum", "concat") or second not in ("r", "t_minus_r"):
            raise ValueError(f"bad time embedding options combine={combine!r}, second={second!r}")
        self.two_times, self.combine, self.second = two_times, combine, second
        self.t_embed = _time_mlp(dim, scale)
        self.r_embed = _time_mlp(dim, scale) if two_times else None
        self.out_dim = 2 * dim if (two_times and combine == "concat") else dim

    def forward(self, t: torch.Tensor, r: torch.Tensor | None = None) -> torch.Tensor:
        """t, r: (B,) -> (B, out_dim)."""
        emb = self.t_embed(t)
        if not self.two_times:
            if r is not None:
                raise ValueError("this backbone embeds one time t; it was given a second time r")
            return emb
        if r is None:
            raise ValueError("this backbone embeds two times (r, t); r is missing")
        emb_r = self.r_embed(r if self.second == "r" else t - r)
        return emb + emb_r if self.combine == "sum" else torch.cat([emb, emb_r], dim=-1)


class NullCondition(nn.Module):
    """A learned embedding that replaces the global condition of the samples marked in `null_mask`.

    Output rows with null_mask True are the parameter itself, so they carry no dependence on the observation."""

    def __init__(self, cond_dim: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(cond_dim) * 0.02)

    def forward(self, cond: torch.Tensor, null_mask: torch.Tensor | None) -> torch.Tensor:
        """cond: (B, C), null_mask: (B,) bool or None -> (B, C)."""
        if null_mask is None:
            return cond
        null = self.embedding.to(cond.dtype).expand_as(cond)
        return torch.where(null_mask[:, None], null, cond)


def batch_time(t: torch.Tensor | float, batch: int, like: torch.Tensor) -> torch.Tensor:
    """A scalar or (B,) time -> (B,) tensor with `like`'s dtype and device."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.expand(batch) if t.ndim == 0 else t
