"""DP3's head (the diffusion baseline): DDPM training, DDIM sampling, with diffusers' schedulers as DP3 uses them.

Training: k ~ U{0, ..., N-1}, x_k = sqrt(abar_k) x + sqrt(1 - abar_k) e (DDPMScheduler.add_noise); the network
predicts e ("epsilon") or x ("sample", DP3's config); MSE loss. Sampling: DDIMScheduler, num_inference_steps
deterministic steps (eta = 0). The backbone sees time k / N in [0, 1) (t = 1 is noise, like the flow heads);
with time_scale = N its sinusoidal embedding gets DP3's integer step k.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import DP3Config
from .head import Head, HeadLoss
from .heads import HeadSpec, register_head


class DP3Head(Head):

    def __init__(self, cfg: DP3Config):
        super().__init__(cfg)
        from diffusers import DDIMScheduler, DDPMScheduler  # imported here: diffusers is slow to import

        kw = dict(num_train_timesteps=cfg.num_train_timesteps, beta_start=cfg.beta_start, beta_end=cfg.beta_end,
                  beta_schedule=cfg.beta_schedule, clip_sample=cfg.clip_sample, prediction_type=cfg.prediction_type)
        self.train_scheduler = DDPMScheduler(**kw)
        self.sample_scheduler = DDIMScheduler(**kw, set_alpha_to_one=True, steps_offset=0)

    def loss(self, net: nn.Module, x: torch.Tensor, cond: torch.Tensor | None,
             return_features: bool = False) -> HeadLoss:
        N = self.cfg.num_train_timesteps
        B = x.shape[0]
        k = torch.randint(0, N, (B,), device=x.device)
        e = torch.randn_like(x)
        x_k = self.train_scheduler.add_noise(x, e, k)
        pred, features = net(x_k, k.to(x.dtype) / N, cond=cond, return_features=True)
        target = e if self.cfg.prediction_type == "epsilon" else x
        loss = F.mse_loss(pred, target)
        return HeadLoss(loss, {"flow_loss": loss.item()}, list(features) if return_features else [])

    @torch.no_grad()
    def sample(self, net: nn.Module, noise: torch.Tensor, cond: torch.Tensor | None,
               generator: torch.Generator | None = None, steps: int | None = None) -> torch.Tensor:
        N = self.cfg.num_train_timesteps
        scheduler = self.sample_scheduler
        scheduler.set_timesteps(steps or self.cfg.num_inference_steps, device=noise.device)
        z, B = noise, noise.shape[0]
        for k in scheduler.timesteps:
            out = net(z, torch.full((B,), float(k) / N, device=z.device, dtype=z.dtype), cond=cond)
            z = scheduler.step(out, k, z, eta=0.0, generator=generator).prev_sample
        return z


# Time scale None: DP3 feeds integer diffusion steps (scale = num_train_timesteps reproduces them). Not exportable:
# its sampler steps a diffusers scheduler in Python.
register_head(HeadSpec("dp3", DP3Config, DP3Head,
                       two_times=False, time_scale=None, label="DP3 DDIM-10", exportable=False))
