"""MeanFlow pieces against their formulas: the JVP, the adaptive weight, the CFG target, the null branch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mfp.policies import MeanFlowConfig, PolicyConfig, UNetConfig, build_policy
from mfp.policies.head import adaptive_l2_loss, adaptive_weight, sample_logit_normal_pair
from mfp.policies.meanflow import MeanFlowHead, guided_velocity
from mfp.policies.unet import ConditionalUnet1D
from mfp.demos.normalizer import MinMaxNormalizer


@pytest.mark.parametrize("time_scale", [1.0, 1000.0])
def test_jvp_matches_finite_difference_along_v_0_1(time_scale, jvp_matches_finite_differences):
    torch.manual_seed(0)
    net = ConditionalUnet1D(action_dim=3, global_cond_dim=5, down_dims=(16, 32), time_embed_dim=16,
                            time_scale=time_scale, two_times=True).double()
    p = jvp_matches_finite_differences(net)      # du/dt along (v, 0, 1) against finite differences (r fixed)
    z, v, cond, t, r, dudt, fd, h = p.z, p.v, p.cond, p.t, p.r, p.dudt, p.fd, p.h
    torch.testing.assert_close(p.u, net(z, t, r, cond=cond))
    # The tangent matters: moving r too (tangent (v, 1, 1)) or ignoring dz/dt gives a different derivative.
    fd_r = (net(z + h * v, t + h, r + h, cond=cond) - net(z - h * v, t - h, r - h, cond=cond)) / (2 * h)
    fd_z0 = (net(z, t + h, r, cond=cond) - net(z, t - h, r, cond=cond)) / (2 * h)
    assert (dudt - fd_r).abs().max() > 1e-3 * fd.abs().max()
    assert (dudt - fd_z0).abs().max() > 1e-3 * fd.abs().max()


def test_adaptive_weight_and_loss_match_hand_computation():
    err = torch.tensor([[[0.1, -0.2], [0.3, 0.0]], [[1.0, 2.0], [-1.0, 0.5]]], requires_grad=True)  # (B=2, H=2, A=2)
    p, c = 0.5, 1e-3
    sq = [0.01 + 0.04 + 0.09 + 0.0, 1.0 + 4.0 + 1.0 + 0.25]           # ||err_i||^2
    w = [1.0 / (s + c) ** p for s in sq]
    torch.testing.assert_close(adaptive_weight(torch.tensor(sq), p, c), torch.tensor(w))
    loss, sq_out = adaptive_l2_loss(err, p, c, reduction="sum")
    torch.testing.assert_close(sq_out, torch.tensor(sq))
    torch.testing.assert_close(loss, torch.tensor((w[0] * sq[0] + w[1] * sq[1]) / 2))
    # The weight is stop-gradient: d loss / d err_i = w_i * 2 err_i / B, not the derivative of sq / (sq + c)^p.
    loss.backward()
    expected = torch.stack([w[0] * 2 * err[0], w[1] * 2 * err[1]]).detach() / 2
    torch.testing.assert_close(err.grad, expected)
    # p = 1 (MeanFlow paper) and the "mean" reduction (MP1's code).
    loss1, _ = adaptive_l2_loss(err.detach(), 1.0, c, reduction="mean")
    m = [s / 4 for s in sq]
    torch.testing.assert_close(loss1, torch.tensor((m[0] / (m[0] + c) + m[1] / (m[1] + c)) / 2))


class AnalyticNet(nn.Module):
    """u(z, r, t | c) = a t z + b r + g(c), g(c) = sum(c) per sample, g(null) = n0: du/dt along (v, 0, 1) = a z + a t v."""

    def __init__(self, a=0.7, b=-0.3, n0=0.25):
        super().__init__()
        self.a, self.b, self.n0 = a, b, n0

    def g(self, cond, null_mask):
        g = cond.sum(dim=-1)
        if null_mask is not None:
            g = torch.where(null_mask, torch.full_like(g, self.n0), g)
        return g[:, None, None]

    def forward(self, x, t, r=None, cond=None, null_mask=None, return_features=False):
        out = self.a * t[:, None, None] * x + self.b * r[:, None, None] + self.g(cond, null_mask)
        return (out, [out]) if return_features else out


def _small_inputs():
    g = torch.Generator().manual_seed(3)
    x, e = torch.randn(3, 2, 2, generator=g), torch.randn(3, 2, 2, generator=g)
    t, r = torch.tensor([0.8, 0.6, 0.4]), torch.tensor([0.2, 0.6, 0.1])
    cond = torch.randn(3, 4, generator=g)
    dropped = torch.tensor([False, True, False])
    return x, e, t, r, cond, dropped


def test_cfg_target_matches_hand_formula_with_kappa():
    x, e, t, r, cond, dropped = _small_inputs()
    w, kappa = 2.0, 0.3
    head = MeanFlowHead(MeanFlowConfig(cfg_w=w, cfg_kappa=kappa, p_uncond=0.1, prediction="velocity"))
    net = AnalyticNet()
    u, u_tgt, v_tilde, dudt, _ = head.targets(net, x, e, t, r, cond, dropped)

    a, b, n0 = net.a, net.b, net.n0
    for i in range(3):
        z = (1 - t[i]) * x[i] + t[i] * e[i]
        v = e[i] - x[i]
        u_c = a * t[i] * z + b * t[i] + cond[i].sum()        # u(z, t, t | c)
        u_n = a * t[i] * z + b * t[i] + n0                   # u(z, t, t | null)
        vt = v if dropped[i] else w * v + kappa * u_c + (1 - w - kappa) * u_n
        dudt_i = a * z + a * t[i] * vt                       # tangent (v_tilde, 0, 1)
        g_i = n0 if dropped[i] else cond[i].sum()            # dropped samples are trained on the null condition
        torch.testing.assert_close(v_tilde[i], vt)
        torch.testing.assert_close(dudt[i], dudt_i)
        torch.testing.assert_close(u[i], a * t[i] * z + b * r[i] + g_i)
        torch.testing.assert_close(u_tgt[i], vt - (t[i] - r[i]) * dudt_i)
    assert not u_tgt.requires_grad


def test_guidance_scale_one_equals_unguided_targets_exactly():
    torch.manual_seed(0)
    x, e, t, r, cond, dropped = _small_inputs()
    net = ConditionalUnet1D(action_dim=2, global_cond_dim=4, down_dims=(8,), time_embed_dim=8, time_scale=10.0,
                            two_times=True)
    u_c, u_n = torch.randn(3, 2, 2), torch.randn(3, 2, 2)
    v = e - x
    assert torch.equal(guided_velocity(v, u_c, u_n, 1.0, 0.0, dropped), v)
    unguided = MeanFlowHead(MeanFlowConfig(p_uncond=0.1))            # w = 1, kappa = 0: no extra passes
    z = (1 - t[:, None, None]) * x + t[:, None, None] * e
    # the guided path itself (real u(z,t,t|c), u(z,t,t|null) from the network) at w = 1, kappa = 0 returns v exactly
    assert torch.equal(unguided.guided_velocity(net, z, v, t, cond, dropped), v)
    ref = unguided.targets(net, x, e, t, r, cond, dropped)
    guided2 = MeanFlowHead(MeanFlowConfig(cfg_w=2.0, p_uncond=0.1)).targets(net, x, e, t, r, cond, dropped)
    assert not torch.allclose(guided2[1], ref[1])                    # guidance does change the target
    torch.testing.assert_close(guided2[1][1], ref[1][1])             # ... except for the dropped sample


def test_null_branch_ignores_the_observation():
    cfg = PolicyConfig(head="meanflow", head_cfg=MeanFlowConfig(cfg_w=2.0, p_uncond=0.2), n_points=32,
                       unet=UNetConfig(preset="tiny"))
    torch.manual_seed(0)
    policy = build_policy(cfg)
    B = 3
    obs = {"point_cloud": torch.randn(B, 2, 32, 3), "agent_pos": torch.randn(B, 2, 9)}
    norm = MinMaxNormalizer().fit({"action": torch.randn(100, 4), "agent_pos": torch.randn(100, 9) * 2,
                                   "point_cloud": torch.randn(100, 3) * 2})
    policy.set_normalizer(norm)
    obs2 = {k: torch.randn_like(v) for k, v in obs.items()}
    obs2["point_cloud"].requires_grad_(True)
    z, t = torch.randn(B, 4, 4), torch.rand(B)
    null = torch.ones(B, dtype=torch.bool)
    cond1, cond2 = policy.encode_obs(obs), policy.encode_obs(obs2)
    out1 = policy.net(z, t, t, cond=cond1, null_mask=null)
    out2 = policy.net(z, t, t, cond=cond2, null_mask=null)
    assert torch.equal(out1, out2)
    grad, = torch.autograd.grad(out2.sum(), obs2["point_cloud"], allow_unused=True)
    assert grad is None or torch.count_nonzero(grad) == 0
    # ... while the conditional branch does depend on it (so the test above is not vacuous).
    assert not torch.allclose(policy.net(z, t, t, cond=cond1), policy.net(z, t, t, cond=cond2))


def test_logit_normal_pairs_are_sorted_with_the_requested_r_equal_t_fraction():
    g = torch.Generator().manual_seed(0)
    t, r = sample_logit_normal_pair(1000, -0.4, 1.0, 0.75, "cpu", generator=g)
    assert torch.all(t >= r) and torch.all((t > 0) & (t < 1))
    assert (t == r).sum().item() == 750
    # logit-normal(-0.4, 1): the median of a single draw is sigmoid(-0.4) ~ 0.40; t is the max of two draws.
    assert abs(torch.logit(t).mean().item() - (-0.4 + 1.0 / 3.14159 ** 0.5)) < 0.1
