"""Head formulas against independent references: FlowPolicy's loss as written in its own time convention,
SplitMeanFlow's interval-splitting target, the average-velocity samplers, DP3's scheduler wiring."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mfp.policies import DP3Config, FlowPolicyConfig, MeanFlowConfig, SplitMeanFlowConfig
from mfp.policies.dp3 import DP3Head
from mfp.policies.flowpolicy import FlowPolicyHead
from mfp.policies.meanflow import MeanFlowHead
from mfp.policies.mlp import MLPBackbone
from mfp.policies.splitmeanflow import SplitMeanFlowHead


def _net(two_times: bool, seed: int = 0) -> MLPBackbone:
    torch.manual_seed(seed)
    return MLPBackbone(action_dim=2, horizon=3, cond_dim=2, hidden=32, depth=2, time_embed_dim=8, time_scale=5.0,
                       two_times=two_times)


def _flowpolicy_reference(net, x, cond, cfg: FlowPolicyConfig, seed: int) -> torch.Tensor:
    """FlowPolicy's compute_loss transcribed in its convention (time tau: 0 = noise, 1 = data; velocity data - noise).
    Its network V(z, tau) is ours read backwards: V(z, tau) = -v(z, 1 - tau). Same random draws as the head."""
    torch.manual_seed(seed)
    B = x.shape[0]
    tau = torch.rand(B) * (1 - cfg.eps) + cfg.eps
    a0 = torch.randn_like(x)
    V = lambda z, s: -net(z, 1 - s, cond=cond)                     # noqa: E731
    e3 = lambda s: s.view(-1, 1, 1)                                 # noqa: E731
    r = torch.clamp(tau + cfg.delta, max=1.0)
    xt, xr = e3(tau) * x + (1 - e3(tau)) * a0, e3(r) * x + (1 - e3(r)) * a0
    segments = torch.linspace(0, 1, cfg.num_segments + 1)
    seg_ends = segments[torch.searchsorted(segments, tau, side="left").clamp(min=1)]
    x_at_ends = e3(seg_ends) * x + (1 - e3(seg_ends)) * a0
    vt, vr = V(xt, tau), V(xr, r)
    ft = xt + e3(seg_ends - tau) * vt
    fr = torch.where(e3(r) < 1, xr + e3(seg_ends - r) * vr, x_at_ends)
    losses_f = (ft - fr).pow(2).reshape(B, -1).mean(-1)
    far = ((seg_ends - tau) > 1.01 * cfg.delta).float()
    losses_v = far * (vt - vr).pow(2).reshape(B, -1).mean(-1)
    return (losses_f + cfg.alpha * losses_v).mean()


@pytest.mark.parametrize("num_segments", [1, 2, 3])
def test_flowpolicy_loss_matches_its_original_convention(num_segments):
    cfg = FlowPolicyConfig(num_segments=num_segments, delta=0.05, alpha=0.3,     # alpha large: the v term counts
                           prediction="velocity")                            # the reference's net outputs v
    net = _net(False)
    g = torch.Generator().manual_seed(1)
    x, cond = torch.randn(64, 3, 2, generator=g), torch.randn(64, 2, generator=g)
    torch.manual_seed(7)
    ours = FlowPolicyHead(cfg).loss(net, x, cond).loss
    ref = _flowpolicy_reference(net, x, cond, cfg, seed=7)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-7)


def test_flowpolicy_stop_gradient_target():
    net = _net(False)
    x, cond = torch.randn(8, 3, 2), torch.randn(8, 2)
    grads = {}
    for stop in (True, False):
        torch.manual_seed(0)
        net.zero_grad()
        FlowPolicyHead(FlowPolicyConfig(stop_grad_target=stop)).loss(net, x, cond).loss.backward()
        grads[stop] = torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None])
    assert not torch.allclose(grads[True], grads[False])


class LinearU(nn.Module):
    """u(z, r, t) = z * (1 + r) - t: simple enough to write the splitting target by hand."""

    def forward(self, x, t, r=None, cond=None, null_mask=None, return_features=False):
        out = x * (1 + r[:, None, None]) - t[:, None, None]
        return (out, [out]) if return_features else out


def test_splitmeanflow_target_is_the_interval_split():
    torch.manual_seed(0)
    x, cond = torch.randn(16, 3, 2), None
    cfg = SplitMeanFlowConfig(ratio_r_eq_t=0.25, adaptive_p=0.0,   # plain L2: loss = mean ||u - target||^2
                              prediction="velocity")
    head = SplitMeanFlowHead(cfg)
    torch.manual_seed(5)
    loss = head.loss(LinearU(), x, cond).loss
    # Reference, same random draws: (t, r) pair, lambda, e.
    torch.manual_seed(5)
    normal = torch.randn(16, 2) * cfg.time_std + cfg.time_mean
    pair = torch.sigmoid(normal)
    t, r = pair.max(1).values, pair.min(1).values.clone()
    idx = torch.randperm(16)[:4]
    r[idx] = t[idx]
    lam = torch.rand(16)
    e = torch.randn_like(x)
    u = lambda z, r_, t_: z * (1 + r_.view(-1, 1, 1)) - t_.view(-1, 1, 1)   # noqa: E731
    ex = lambda a: a.view(-1, 1, 1)                                         # noqa: E731
    s = t - lam * (t - r)
    z_t = (1 - ex(t)) * x + ex(t) * e
    u2 = u(z_t, s, t)
    z_s = z_t - ex(t - s) * u2
    split = (ex(s - r) * u(z_s, r, s) + ex(t - s) * u2) / ex((t - r).clamp_min(1e-12))   # the identity, divided
    target = torch.where(ex(t == r), e - x, split)
    ref = (u(z_t, r, t) - target).pow(2).sum(dim=(1, 2)).mean()
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("head", [MeanFlowHead(MeanFlowConfig(prediction="velocity", clip_sample=False)),
                                  SplitMeanFlowHead(SplitMeanFlowConfig(prediction="velocity", clip_sample=False))])
def test_average_velocity_sampling_steps(head):
    u = LinearU()
    e = torch.randn(5, 3, 2)
    one = head.sample(u, e, None, steps=1)
    torch.testing.assert_close(one, e - (e * 1 - 1))                        # x = e - u(e, 0, 1)
    two = head.sample(u, e, None, steps=2)
    z = e - 0.5 * (e * 1.5 - 1)                                             # z_0.5 = e - 0.5 u(e, 0.5, 1)
    torch.testing.assert_close(two, z - 0.5 * (z * 1 - 0.5))              # x = z - 0.5 u(z, 0, 0.5)


def test_dp3_uses_diffusers_schedulers_as_configured():
    head = DP3Head(DP3Config())
    assert type(head.train_scheduler).__name__ == "DDPMScheduler"
    assert type(head.sample_scheduler).__name__ == "DDIMScheduler"
    sc = head.sample_scheduler.config
    assert (sc.num_train_timesteps, sc.beta_schedule, sc.prediction_type, sc.clip_sample) == \
        (100, "squaredcos_cap_v2", "sample", True)
    # A network that returns the clean sample exactly makes DDIM return it after 10 steps.
    target = torch.rand(4, 3, 2) * 2 - 1
    calls = []

    class Oracle(nn.Module):
        def forward(self, x, t, r=None, cond=None, null_mask=None, return_features=False):
            calls.append(t[0].item())
            return target

    out = head.sample(Oracle(), torch.randn(4, 3, 2), None)
    assert len(calls) == 10 and calls[0] == pytest.approx(0.9) and calls[-1] == 0.0   # k / N for k = 90 ... 0
    torch.testing.assert_close(out, target, atol=1e-5, rtol=0)
