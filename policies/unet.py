"""The action backbone: a 1-D temporal UNet over the action chunk with FiLM conditioning (DP3 / Diffusion Policy's
ConditionalUnet1D: Conv1d residual blocks, kernel 5, GroupNorm 8, Mish).

Call signature shared by every backbone (see also mlp.py), used by all heads:
    net(x, t, r=None, cond=None, null_mask=None, return_features=False)
        x: (B, H, A) noisy actions         t, r: (B,) times in [0, 1] (r only for two-time heads)
        cond: (B, C) global condition      null_mask: (B,) bool, rows whose condition is replaced by the null embedding
    -> out (B, H, A), or (out, features) with features = [down-block outputs (B, C_i, H / 2**i)] when asked.

Forward-mode AD (MeanFlow's JVP, meanflow.jvp_dudt): the matmuls and group norms compute their tangents from the
input's tangent alone (linear, group_norm). PyTorch's own formulas also take the weights' tangents, which are
zero here (the weights are constants of the JVP) and run as zero tensors through a slow non-BLAS matmul and a
decomposed group norm; measured on the small preset, batch 64, one thread, that made the JVP about 5x a forward.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn

from .config import UNetConfig
from .embeddings import NullCondition, TimeEmbedding


class SequenceConv1d(nn.Conv1d):
    """A stride-1, zero-padded Conv1d computed as one matrix product over unfolded windows (im2col).

    Same parameters and the same result as nn.Conv1d (up to float summation order), but on the short action
    sequences here (H = 4 to 16 steps) PyTorch's CPU convolution falls back to a slow path: measured on the
    development CPU, a small-preset UNet forward + backward at batch 64 took 140 ms with nn.Conv1d and 83 ms
    with this (`mfp bench train` measures whole steps). Taps that only ever meet the zero padding (|j - p| >= T:
    on a sequence shorter than the kernel, as in the UNet's deepest levels at H = 4, T = 1 and 2) are left out
    of the product (live_taps): their terms are exact zeros, and so is their weight gradient either way."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int):
        super().__init__(c_in, c_out, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, c_in, T) -> (B, c_out, T)."""
        B, C, T = x.shape
        lo, hi = live_taps(self.kernel_size[0], self.padding[0], T)
        k, p = hi - lo, self.padding[0] - lo                            # kernel and padding of the live taps
        weight = self.weight if k == self.kernel_size[0] else self.weight[:, :, lo:hi]
        windows = F.pad(x, (p, p)).unfold(2, k, 1)                      # (B, C, T, k)
        cols = windows.transpose(1, 2).reshape(B, T, C * k)             # (B, T, C k), C-major like the weight
        out = linear(cols, weight.reshape(self.out_channels, C * k), self.bias)    # (B, T, c_out)
        return out.transpose(1, 2)


def live_taps(kernel_size: int, padding: int, length: int) -> tuple[int, int]:
    """The taps [lo, hi) of a stride-1 convolution (kernel_size = 2 padding + 1, zero padding) that read an input
    element at some output position of a `length`-long sequence: output t reads x[t + j - padding] at tap j, so a
    tap with |j - padding| >= length reads padding only. The live taps are centred, so they pad by padding - lo
    on both sides."""
    return max(0, padding - length + 1), min(kernel_size, padding + length)


def _tangent(x: torch.Tensor) -> torch.Tensor | None:
    """x's forward-mode tangent at the current dual level (None outside forward-mode AD, and while compiling or
    exporting, which never trace a dual level)."""
    if torch.compiler.is_compiling():
        return None
    return fwAD.unpack_dual(x).tangent


def _constant(*params: torch.Tensor | None) -> bool:
    """Whether none of `params` carries a forward-mode tangent (the JVP's case: the weights are constants)."""
    return all(p is None or _tangent(p) is None for p in params)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear; under forward-mode AD with constant weight and bias (their tangents zero, as in the JVP):
    out = x_p W^T + b with tangent x_t W^T. Dual weights take PyTorch's formula."""
    x_t = _tangent(x)
    if x_t is None or not _constant(weight, bias):
        return F.linear(x, weight, bias)
    return fwAD.make_dual(F.linear(fwAD.unpack_dual(x).primal, weight, bias), F.linear(x_t, weight))


def group_norm(x: torch.Tensor, groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
               eps: float) -> torch.Tensor:
    """F.group_norm; under forward-mode AD with constant weight and bias: per group, with x_hat = (x - mean) rstd
    (biased variance), the tangent is weight * rstd * (x_t - mean(x_t) - x_hat mean(x_hat x_t)). Dual weights
    take PyTorch's formula."""
    x_t = _tangent(x)
    if x_t is None or not _constant(weight, bias):
        return F.group_norm(x, groups, weight, bias, eps)
    x_p = fwAD.unpack_dual(x).primal
    xg, tg = x_p.reshape(x_p.shape[0], groups, -1), x_t.reshape(x_p.shape[0], groups, -1)
    rstd = torch.rsqrt(xg.var(dim=-1, unbiased=False, keepdim=True) + eps)
    x_hat = (xg - xg.mean(dim=-1, keepdim=True)) * rstd
    tangent = (rstd * (tg - tg.mean(dim=-1, keepdim=True) - x_hat * (x_hat * tg).mean(dim=-1, keepdim=True)))
    tangent = tangent.reshape(x_p.shape)
    if weight is not None:
        tangent = tangent * weight.reshape(1, -1, *([1] * (x_p.ndim - 2)))
    return fwAD.make_dual(F.group_norm(x_p, groups, weight, bias, eps), tangent)


class Linear(nn.Linear):
    """nn.Linear through `linear` (same parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm through `group_norm` (same parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class Conv1dBlock(nn.Sequential):
    """Conv1d (same length) -> GroupNorm -> Mish."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, n_groups: int):
        super().__init__(SequenceConv1d(c_in, c_out, kernel_size), GroupNorm(n_groups, c_out), nn.Mish())


class ConditionalResidualBlock1D(nn.Module):
    """Two Conv1dBlocks; FiLM (per-channel scale and bias predicted from the condition) after the first."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel_size: int, n_groups: int):
        super().__init__()
        self.conv1 = Conv1dBlock(c_in, c_out, kernel_size, n_groups)
        self.conv2 = Conv1dBlock(c_out, c_out, kernel_size, n_groups)
        self.film = nn.Sequential(nn.Mish(), Linear(cond_dim, 2 * c_out))
        self.residual = SequenceConv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x: (B, c_in, T), cond: (B, cond_dim) -> (B, c_out, T)."""
        h = self.conv1(x)
        scale, bias = self.film(cond).unsqueeze(-1).chunk(2, dim=1)  # (B, c_out, 1) each
        h = self.conv2(scale * h + bias)
        return h + self.residual(x)


class ConditionalUnet1D(nn.Module):
    def __init__(self, action_dim: int, global_cond_dim: int, down_dims: tuple[int, ...] = (64, 128, 256),
                 time_embed_dim: int = 128, kernel_size: int = 5, n_groups: int = 8, time_scale: float = 1.0,
                 two_times: bool = False, time_combine: str = "sum", second_time: str = "r"):
        super().__init__()
        self.time_embed = TimeEmbedding(time_embed_dim, time_scale, two_times, time_combine, second_time)
        self.null_cond = NullCondition(global_cond_dim)
        cond_dim = self.time_embed.out_dim + global_cond_dim

        def block(c_in: int, c_out: int) -> ConditionalResidualBlock1D:
            return ConditionalResidualBlock1D(c_in, c_out, cond_dim, kernel_size, n_groups)

        dims = [action_dim, *down_dims]
        in_out = list(zip(dims[:-1], dims[1:]))
        self.down = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(in_out):
            last = i == len(in_out) - 1
            self.down.append(nn.ModuleList([
                block(c_in, c_out), block(c_out, c_out),
                nn.Conv1d(c_out, c_out, 3, stride=2, padding=1) if not last else nn.Identity(),  # T -> T / 2
            ]))
        self.mid = nn.ModuleList([block(down_dims[-1], down_dims[-1]), block(down_dims[-1], down_dims[-1])])
        self.up = nn.ModuleList()
        for c_in, c_out in reversed(in_out[1:]):
            self.up.append(nn.ModuleList([
                block(2 * c_out, c_in), block(c_in, c_in),
                nn.ConvTranspose1d(c_in, c_in, 4, stride=2, padding=1),  # T -> 2 T
            ]))
        self.final = nn.Sequential(Conv1dBlock(down_dims[0], down_dims[0], kernel_size, n_groups),
                                   SequenceConv1d(down_dims[0], action_dim, 1))

    @classmethod
    def from_config(cls, cfg: UNetConfig, action_dim: int, global_cond_dim: int, two_times: bool) -> "ConditionalUnet1D":
        return cls(action_dim, global_cond_dim, cfg.down_dims, cfg.time_embed_dim, cfg.kernel_size, cfg.n_groups,
                   cfg.time_scale, two_times, cfg.time_combine, cfg.second_time)

    def forward(self, x: torch.Tensor, t: torch.Tensor, r: torch.Tensor | None = None,
                cond: torch.Tensor | None = None, null_mask: torch.Tensor | None = None,
                return_features: bool = False):
        if cond is None:
            raise ValueError("ConditionalUnet1D needs the global condition `cond` (B, C)")
        cond = self.null_cond(cond, null_mask)
        film_cond = torch.cat([self.time_embed(t, r), cond], dim=-1)  # (B, time_dim + C)

        h = x.transpose(1, 2)  # (B, A, H)
        skips, features = [], []
        for res1, res2, downsample in self.down:
            h = res2(res1(h, film_cond), film_cond)
            skips.append(h)
            features.append(h)  # (B, C_i, H / 2**i): the dispersive loss's inputs
            h = downsample(h)
        for res in self.mid:
            h = res(h, film_cond)
        for res1, res2, upsample in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            h = upsample(res2(res1(h, film_cond), film_cond))
        out = self.final(h).transpose(1, 2)  # (B, H, A)
        return (out, features) if return_features else out
