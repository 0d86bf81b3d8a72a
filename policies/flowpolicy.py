"""FlowPolicy's head: consistency flow matching (Consistency-FM) with a velocity network v(z_t, t), one Euler step.

FlowPolicy's code uses time 0 = noise; here (as in every head) t = 1 is noise, z_t = (1 - t) x + t e and
v = e - x, so its time tau is 1 - t and its velocity is -v. Translated, one training step is:
    tau ~ U[eps, 1]:  t = 1 - tau,  r = max(t - delta, 0)              (r is delta closer to the data)
    [0, 1] cut into num_segments; s = the end of t's segment on the data side (largest boundary <= t)
    f(z, t) = z - (t - s) v(z, t)      the segment end predicted by a straight step
    f_r     = f(z_r, r) if r > 0 else z_s (the true point, the boundary condition)
    loss    = mean_i [ mean (f(z_t, t) - f_r)^2 + alpha * 1[t - s > 1.01 delta] * mean (v_t - v_r)^2 ]
v_r is stop-gradient (stop_grad_target), as in the Consistency-FM loss that FlowPolicy's repository also ships;
FlowPolicy's policy file lets gradients through both velocities (stop_grad_target=False reproduces it), and then the
objective has a collapsed minimiser (one-step samples near the mean on the toy test).
Sampling: Euler from t = 1 - eps with step 1 / sample_steps; one step is x = e - v(e, 1 - eps). With 2 segments,
one step extrapolates across both: on a bimodal target that is biased (sample_steps = num_segments is not).
`prediction` "sample": the backbone outputs x_hat and v = (z - x_hat) / t (head.DerivedVelocity); sampling then
steps on a grid from 1 - eps to 0, so one step returns x_hat(e, 1 - eps). Samples are clamped to [-1, 1].
"""

from __future__ import annotations

import torch
from torch import nn

from .config import FlowPolicyConfig
from .head import DerivedVelocity, Head, HeadLoss, expand_time
from .heads import HeadSpec, register_head


class FlowPolicyHead(Head):
    cfg: FlowPolicyConfig

    def loss(self, net: nn.Module, x: torch.Tensor, cond: torch.Tensor | None,
             return_features: bool = False) -> HeadLoss:
        cfg = self.cfg
        net = DerivedVelocity(net, cfg)      # v from the backbone's output (cfg.prediction)
        B = x.shape[0]
        tau = torch.rand(B, device=x.device, dtype=x.dtype) * (1 - cfg.eps) + cfg.eps   # FlowPolicy's time
        t = 1 - tau
        r = (t - cfg.delta).clamp_min(0.0)
        e = torch.randn_like(x)

        def on_path(s: torch.Tensor) -> torch.Tensor:
            return (1 - expand_time(s, x)) * x + expand_time(s, x) * e

        boundaries = torch.linspace(0, 1, cfg.num_segments + 1, device=x.device, dtype=x.dtype)
        seg = torch.searchsorted(boundaries, tau.contiguous(), side="left").clamp(min=1)
        s = 1 - boundaries[seg]                                                            # (B,) segment end

        z_t, z_r = on_path(t), on_path(r)
        v_t, features = net(z_t, t, cond=cond, return_features=True)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not cfg.stop_grad_target):
            v_r = torch.nan_to_num(net(z_r, r, cond=cond))
        f_t = z_t - expand_time(t - s, x) * v_t
        f_r = torch.where(expand_time(r > 0, x), z_r - expand_time(r - s, x) * v_r, on_path(s))

        loss_f = (f_t - f_r).pow(2).reshape(B, -1).mean(dim=1)
        far_from_end = ((t - s) > 1.01 * cfg.delta).to(x.dtype)
        loss_v = far_from_end * (v_t - v_r).pow(2).reshape(B, -1).mean(dim=1)
        loss = (loss_f + cfg.alpha * loss_v).mean()
        logs = {"flow_loss": loss.item(), "consistency_f": loss_f.mean().item(), "consistency_v": loss_v.mean().item()}
        return HeadLoss(loss, logs, list(features) if return_features else [])

    @torch.no_grad()
    def sample(self, net: nn.Module, noise: torch.Tensor, cond: torch.Tensor | None,
               generator: torch.Generator | None = None, steps: int | None = None) -> torch.Tensor:
        cfg = self.cfg
        steps = steps or cfg.sample_steps
        net = DerivedVelocity(net, cfg)
        z, B = noise, noise.shape[0]
        if cfg.prediction == "velocity":     # FlowPolicy's sampler (steps of 1 / steps from t = 1 - eps)
            for i in range(steps):
                t = 1 - (i / steps * (1 - cfg.eps) + cfg.eps)
                z = z - net(z, torch.full((B,), t, device=z.device, dtype=z.dtype), cond=cond) / steps
            return self.clip(z)
        # "sample": a uniform grid from t = 1 - eps down to 0, so the last step lands on the predicted x_hat
        times = torch.linspace(1 - cfg.eps, 0.0, steps + 1, device=z.device, dtype=z.dtype)
        for i in range(steps):
            z = z - (times[i] - times[i + 1]) * net(z, times[i].expand(B), cond=cond)
        return self.clip(z)


# Time scale 99: FlowPolicy's code multiplies t by 99.
register_head(HeadSpec("flowpolicy", FlowPolicyConfig, FlowPolicyHead,
                       two_times=False, time_scale=99.0, label="FlowPolicy 1-step"))
