"""SplitMeanFlow's head: the same average velocity u(z_t, r, t) as MeanFlow, learnt without a JVP from the
interval-splitting identity, so it is cheaper per step and works under torch.compile.

    (t - r) u(z_t, r, t) = (s - r) u(z_s, r, s) + (t - s) u(z_t, s, t)      for r <= s <= t
With lambda ~ U[0, 1] and s = t - lambda (t - r):
    u2 = u(z_t, s, t);  z_s = z_t - (t - s) u2  (a step with the model itself);  u1 = u(z_s, r, s)
    target = sg((1 - lambda) u1 + lambda u2);  the r = t fraction gets the boundary condition target v = e - x.
Loss: the adaptive L2 of MeanFlow (p = 0: plain L2). Sampling: one step x = e - u(e, 0, 1) (or k steps), clamped.
`prediction` ("velocity" or "sample") says what the backbone outputs, as for MeanFlow (head.DerivedVelocity).
"""

from __future__ import annotations

import torch
from torch import nn

from .config import SplitMeanFlowConfig
from .head import (AverageVelocityHead, DerivedVelocity, HeadLoss, adaptive_l2_loss, average_velocity_error,
                   expand_time, sample_times)
from .heads import HeadSpec, register_head


class SplitMeanFlowHead(AverageVelocityHead):
    cfg: SplitMeanFlowConfig

    def loss(self, net: nn.Module, x: torch.Tensor, cond: torch.Tensor | None,
             return_features: bool = False) -> HeadLoss:
        cfg = self.cfg
        net = DerivedVelocity(net, cfg)      # u from the backbone's output (cfg.prediction)
        B = x.shape[0]
        t, r = sample_times(cfg, x)
        lam = torch.rand(B, device=x.device, dtype=x.dtype)
        s = t - lam * (t - r)
        e = torch.randn_like(x)
        z_t = (1 - expand_time(t, x)) * x + expand_time(t, x) * e
        v = e - x
        with torch.no_grad():
            u2 = net(z_t, t, s, cond=cond)                       # u(z_t, s, t)
            z_s = z_t - expand_time(t - s, x) * u2
            u1 = net(z_s, s, r, cond=cond)                       # u(z_s, r, s)
            split = (1 - expand_time(lam, x)) * u1 + expand_time(lam, x) * u2
            u_tgt = torch.where(expand_time(t == r, x), v, split)
        u, features = net(z_t, t, r, cond=cond, return_features=True)
        loss, _ = adaptive_l2_loss(average_velocity_error(cfg, u, u_tgt, t), cfg.adaptive_p, cfg.adaptive_c, cfg.error_reduction)
        logs = {"flow_loss": loss.item(), "mse": (u - u_tgt).detach().pow(2).mean().item()}
        return HeadLoss(loss, logs, list(features) if return_features else [])

register_head(HeadSpec("splitmeanflow", SplitMeanFlowConfig, SplitMeanFlowHead,
                       two_times=True, time_scale=1000.0, label="SplitMeanFlow 1-NFE"))
