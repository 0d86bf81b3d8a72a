"""The interface every head objective implements (MeanFlow, FlowPolicy, DP3, SplitMeanFlow).

A head knows how to turn clean normalised actions x (B, H, A) and a global condition into a training loss for a
backbone `net` (call signature in unet.py), and how to turn noise into actions. It owns no network weights, so the
same head works with the UNet (policies) and the MLP (toy problems and tests).
Conventions of every head: t in [0, 1], t = 1 is noise; z_t = (1 - t) x + t e; v = dz/dt = e - x.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class HeadLoss:
    loss: torch.Tensor                      # scalar, differentiable
    logs: dict[str, float]                  # floats to log
    features: list[torch.Tensor] = field(default_factory=list)  # backbone features of the gradient-carrying pass


class Head(nn.Module, abc.ABC):
    def __init__(self, cfg) -> None:
        super().__init__()
        self.cfg = cfg                      # the head's config dataclass (its HeadSpec.config, heads.py)

    @abc.abstractmethod
    def loss(self, net: nn.Module, x: torch.Tensor, cond: torch.Tensor | None,
             return_features: bool = False) -> HeadLoss:
        """x: (B, H, A) clean normalised actions, cond: (B, C)."""

    @abc.abstractmethod
    def sample(self, net: nn.Module, noise: torch.Tensor, cond: torch.Tensor | None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """noise: (B, H, A) ~ N(0, I) -> normalised actions (B, H, A)."""

    def clip(self, x: torch.Tensor) -> torch.Tensor:
        """Sampled actions clamped to the normalised range [-1, 1] when the head's config asks (clip_sample)."""
        return x.clamp(-1.0, 1.0) if getattr(self.cfg, "clip_sample", False) else x


class DerivedVelocity:
    """The backbone as a flow head sees it: called like the backbone, (z, t, r=None, cond=..., null_mask=...,
    return_features=...), it returns the velocity the head works with (u(z, r, t) or v(z, t)).

    cfg.prediction "velocity": the backbone's output itself. "sample": the backbone outputs the clean chunk
    x_hat and the velocity is derived as (z - x_hat) / max(t, t_floor), so a step from t to 0 lands on x_hat.
    Everything a head computes from the velocity (targets, JVP, guidance, sampling) is unchanged."""

    def __init__(self, net: nn.Module, cfg) -> None:
        self.net, self.cfg = net, cfg

    def __call__(self, z: torch.Tensor, t: torch.Tensor, r: torch.Tensor | None = None, **kwargs):
        out = self.net(z, t, r, **kwargs)
        if self.cfg.prediction == "velocity":
            return out
        x_hat, features = out if kwargs.get("return_features") else (out, None)
        velocity = (z - x_hat) / expand_time(t.clamp_min(self.cfg.t_floor), z)   # (B, H, A)
        return velocity if features is None else (velocity, features)


def expand_time(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) broadcastable against x."""
    return t.reshape(-1, *([1] * (x.ndim - 1)))


def per_sample_sq_error(err: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """(B, ...) -> (B,) squared error summed (||err||^2) or averaged over the non-batch dims."""
    sq = err.pow(2).reshape(err.shape[0], -1)
    return sq.sum(dim=1) if reduction == "sum" else sq.mean(dim=1)


def adaptive_weight(sq_err: torch.Tensor, p: float, c: float) -> torch.Tensor:
    """MeanFlow's adaptive loss weight w = 1 / (||err||^2 + c)^p, stop-gradient. sq_err: (B,) -> (B,)."""
    return (sq_err.detach() + c).pow(-p)


def adaptive_l2_loss(err: torch.Tensor, p: float, c: float, reduction: str = "sum") -> tuple[torch.Tensor, torch.Tensor]:
    """mean_i w_i ||err_i||^2 with w = adaptive_weight (p = 0: plain L2). Returns (loss, per-sample ||err||^2)."""
    sq = per_sample_sq_error(err, reduction)
    return (adaptive_weight(sq, p, c) * sq).mean(), sq


def average_velocity_error(cfg, u: torch.Tensor, u_tgt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The error an average-velocity head's loss weighs: u - u_tgt ("velocity" loss space, MeanFlow's), or the same
    error as it moves the one-step endpoint, max(t, t_floor) (u - u_tgt) = x_tgt - x_hat ("sample" loss space, the
    clean-sample loss DP3 trains with). All (B, H, A); t (B,)."""
    err = u - u_tgt
    if cfg.loss_space == "sample":
        err = err * expand_time(t.clamp_min(cfg.t_floor), err)
    return err


def sample_times(cfg, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, r), each (B,) in x's dtype, for an average-velocity head's config (time_dist, a fraction r = t, a
    fraction at the one-step query (r, t) = (0, 1))."""
    t, r = sample_logit_normal_pair(x.shape[0], cfg.time_mean, cfg.time_std, cfg.ratio_r_eq_t, x.device,
                                    dist=cfg.time_dist, ratio_one_step=cfg.ratio_one_step)
    return t.to(x.dtype), r.to(x.dtype)


def sample_logit_normal_pair(batch: int, mean: float, std: float, ratio_r_eq_t: float, device: torch.device | str,
                             generator: torch.Generator | None = None, dist: str = "logit_normal",
                             ratio_one_step: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, r), each (B,): two draws sorted so t >= r (logit-normal sigmoid(N(mean, std)), or "uniform" on [0, 1]);
    then a random int(ratio_r_eq_t * B) of the batch gets r = t (MP1 / MeanFlow code), and the next
    int(ratio_one_step * B) of that permutation get (r, t) = (0, 1), the point one-step sampling queries."""
    if dist == "uniform":
        pair = torch.rand(batch, 2, device=device, generator=generator)
    else:
        pair = torch.sigmoid(torch.randn(batch, 2, device=device, generator=generator) * std + mean)
    t, r = pair.max(dim=1).values, pair.min(dim=1).values
    n_equal, n_one = int(ratio_r_eq_t * batch), int(ratio_one_step * batch)
    perm = torch.randperm(batch, device=device, generator=generator)
    r = r.clone()
    r[perm[:n_equal]] = t[perm[:n_equal]]
    if n_one:
        one = perm[n_equal:n_equal + n_one]
        t = t.clone()
        t[one], r[one] = 1.0, 0.0
    return t, r


class AverageVelocityHead(Head):
    """A head whose network is the average velocity u(z, r, t) (MeanFlow, SplitMeanFlow): both sample alike,
    e -> x = e - u(e, 0, 1) in one step (or cfg.sample_steps / `steps` steps), u derived per cfg.prediction,
    clamped per cfg.clip_sample."""

    @torch.no_grad()
    def sample(self, net: nn.Module, noise: torch.Tensor, cond: torch.Tensor | None,
               generator: torch.Generator | None = None, steps: int | None = None) -> torch.Tensor:
        return self.clip(average_velocity_sample(DerivedVelocity(net, self.cfg), noise, cond,
                                                 steps or self.cfg.sample_steps))


def average_velocity_sample(net: nn.Module, noise: torch.Tensor, cond: torch.Tensor | None, steps: int) -> torch.Tensor:
    """Sampling with an average-velocity network u(z, r, t): z_r = z_t - (t - r) u(z_t, r, t) on a uniform grid
    from t = 1 to 0. One step: x = e - u(e, 0, 1)."""
    times = torch.linspace(1.0, 0.0, steps + 1, device=noise.device, dtype=noise.dtype)
    z = noise
    B = noise.shape[0]
    for i in range(steps):
        t, r = times[i].expand(B), times[i + 1].expand(B)
        z = z - (times[i] - times[i + 1]) * net(z, t, r, cond=cond)
    return z
