"""The MeanFlow objective (MP1's head): learn the average velocity u(z_t, r, t) over [r, t], sample in one step.

    MeanFlow identity   u(z_t, r, t) = v - (t - r) du/dt,   du/dt = JVP of u along (dz/dt, dr/dt, dt/dt) = (v, 0, 1)
    target              u_tgt = sg(v - (t - r) * du/dt)          (forward-mode AD, in float32 or wider)
    loss                mean_i w_i ||u_i - u_tgt_i||^2,   w = sg(1 / (||u - u_tgt||^2 + c)^p)
    (t, r)              logit-normal pairs sorted t >= r, a fraction with r = t (plain flow matching)
    guidance (CFG)      v_tilde = w v + kappa u(z_t, t, t | c) + (1 - w - kappa) u(z_t, t, t | null)  (no grad)
                        replaces v in the target AND as the JVP tangent; samples whose condition was dropped
                        (prob. p_uncond, learned null embedding) keep v_tilde = v. w = 1, kappa = 0: unguided.
    sampling            one step x = e - u(e, 0, 1); k steps z_r = z_t - (t - r) u(z_t, r, t), clamped to [-1, 1]
    prediction          "velocity": the backbone outputs u; "sample": it outputs x_hat and u = (z_t - x_hat) / t
                        (head.DerivedVelocity), so one step returns x_hat(e, 0, 1); every formula above holds for u
    jvp_tangent         "v": dz/dt = v (or v_tilde); "model": dz/dt = sg(u(z_t, t, t)), the network's own
                        instantaneous velocity (improved MeanFlow), the target keeps v
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.utils._pytree import tree_map

from .config import MeanFlowConfig
from .head import (AverageVelocityHead, DerivedVelocity, HeadLoss, adaptive_l2_loss, average_velocity_error,
                   expand_time, sample_times)
from .heads import HeadSpec, register_head


def guided_velocity(v: torch.Tensor, u_cond: torch.Tensor, u_null: torch.Tensor, w: float, kappa: float,
                    dropped: torch.Tensor | None = None) -> torch.Tensor:
    """v_tilde = w v + kappa u_cond + (1 - w - kappa) u_null, and v where `dropped` (B,) is True. All (B, H, A)."""
    v_tilde = w * v + kappa * u_cond + (1.0 - w - kappa) * u_null
    if dropped is not None:
        v_tilde = torch.where(expand_time(dropped, v), v, v_tilde)
    return v_tilde


def meanflow_target(v: torch.Tensor, dudt: torch.Tensor, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """u_tgt = sg(v - (t - r) du/dt). v, dudt: (B, H, A); t, r: (B,)."""
    return (v - expand_time(t - r, v) * dudt).detach()


def jvp_dudt(fn, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor, dz_dt: torch.Tensor):
    """Total time derivative of u = fn(z, r, t) along (dz/dt, dr/dt, dt/dt) = (dz_dt, 0, 1), by forward-mode AD.

    fn returns (u, aux). Runs outside autocast and in at least float32 (half-precision JVPs are a known NaN
    source). Returns (u, du/dt, aux); u and aux keep their autograd graph, du/dt is not detached here.
    Dual tensors (torch.autograd.forward_ad) rather than torch.func.jvp, so that the backbone's layers can give
    their own tangent formulas (unet.linear, unet.group_norm); r is no dual (its tangent is zero)."""
    dtype = torch.promote_types(z.dtype, torch.float32)
    z, r, t, dz_dt = (a.to(dtype) for a in (z, r, t, dz_dt))
    with torch.autocast(device_type=z.device.type, enabled=False), fwAD.dual_level():
        out, aux = fn(fwAD.make_dual(z, dz_dt), r, fwAD.make_dual(t, torch.ones_like(t)))
        u, dudt = fwAD.unpack_dual(out)
        aux = tree_map(_primal, aux)
    if dudt is None:                    # u does not depend on (z, t)
        dudt = torch.zeros_like(u)
    return u, dudt, aux


def _primal(x):
    """A dual tensor's primal (its autograd graph kept); anything else unchanged."""
    return fwAD.unpack_dual(x).primal if torch.is_tensor(x) else x


class MeanFlowHead(AverageVelocityHead):
    cfg: MeanFlowConfig

    def target(self, v_tilde: torch.Tensor, dudt: torch.Tensor, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """The regression target; a method so that an ablation (e.g. a test's wrong target) can override it."""
        return meanflow_target(v_tilde, dudt, t, r)

    def guided_velocity(self, net: nn.Module, z: torch.Tensor, v: torch.Tensor, t: torch.Tensor,
                        cond: torch.Tensor | None, dropped: torch.Tensor | None) -> torch.Tensor:
        """v_tilde with this head's (w, kappa): two extra passes u(z, t, t | c) and u(z, t, t | null), no grad."""
        B = z.shape[0]
        with torch.no_grad():
            keep = torch.zeros(B, dtype=torch.bool, device=z.device)
            u_cond = net(z, t, t, cond=cond, null_mask=keep)
            u_null = net(z, t, t, cond=cond, null_mask=~keep)
        return guided_velocity(v, u_cond, u_null, self.cfg.cfg_w, self.cfg.cfg_kappa, dropped)

    def targets(self, net: nn.Module, x: torch.Tensor, e: torch.Tensor, t: torch.Tensor, r: torch.Tensor,
                cond: torch.Tensor | None, dropped: torch.Tensor | None = None):
        """Deterministic part of the loss, for given data x, noise e (B, H, A), times t >= r (B,) and dropped
        conditions (B,) bool. Returns (u, u_tgt, v_tilde, du/dt, features); only u and features carry gradient.
        `net` is the backbone; the velocity u comes from it through DerivedVelocity (cfg.prediction)."""
        net = DerivedVelocity(net, self.cfg)
        z = (1 - expand_time(t, x)) * x + expand_time(t, x) * e   # z_t: (B, H, A)
        v = e - x
        v_tilde = self.guided_velocity(net, z, v, t, cond, dropped) if self.cfg.guided else v
        tangent = v_tilde
        if self.cfg.jvp_tangent == "model":
            with torch.no_grad():
                tangent = net(z, t, t, cond=cond, null_mask=dropped)      # u(z_t, t, t): the model's own v

        def u_fn(z_, r_, t_):
            return net(z_, t_, r_, cond=cond, null_mask=dropped, return_features=True)

        u, dudt, features = jvp_dudt(u_fn, z, r, t, tangent)
        dudt = dudt.detach()
        return u, self.target(v_tilde, dudt, t, r), v_tilde, dudt, list(features)

    def loss(self, net: nn.Module, x: torch.Tensor, cond: torch.Tensor | None,
             return_features: bool = False) -> HeadLoss:
        cfg = self.cfg
        B = x.shape[0]
        t, r = sample_times(cfg, x)
        e = torch.randn_like(x)
        dropped = (torch.rand(B, device=x.device) < cfg.p_uncond) if cfg.p_uncond > 0 else None  # (B,) bool
        u, u_tgt, _, dudt, features = self.targets(net, x, e, t, r, cond, dropped)
        loss, _ = adaptive_l2_loss(average_velocity_error(cfg, u, u_tgt, t), cfg.adaptive_p, cfg.adaptive_c, cfg.error_reduction)
        logs = {"flow_loss": loss.item(), "mse": (u - u_tgt).detach().pow(2).mean().item(),
                "dudt_abs": dudt.abs().mean().item()}
        return HeadLoss(loss, logs, features if return_features else [])

# Time scale 1.0, as MP1's code feeds t; with prediction="sample" a 450-step CPU probe (metaworld/door-open,
# held-out chunk error) gave 0.17 at scale 1 against 0.24 at 1000 (docs/results/2026-12-01-one-step-cpu.md); the
# velocity parameterisation did better at 1000 (the 2026-11 probe).
register_head(HeadSpec("meanflow", MeanFlowConfig, MeanFlowHead,
                       two_times=True, time_scale=1.0, label="MeanFlow 1-NFE"))
