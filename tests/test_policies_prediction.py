"""The flow heads' `prediction` option ("sample": the backbone outputs the clean chunk x_hat, the head derives its
velocity as (z - x_hat) / max(t, t_floor)) and `clip_sample` (sampled actions stay in [-1, 1]); a checkpoint saved
before these options existed still acts exactly as it did."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from mfp.policies import (DP3Config, FlowPolicyConfig, MeanFlowConfig, PolicyConfig, SplitMeanFlowConfig,
                          UNetConfig, build_policy)
from mfp.policies.dp3 import DP3Head
from mfp.policies.flowpolicy import FlowPolicyHead
from mfp.policies.head import DerivedVelocity
from mfp.policies.meanflow import MeanFlowHead, jvp_dudt
from mfp.policies.splitmeanflow import SplitMeanFlowHead
from mfp.policies.training.checkpoint import load_policy
from mfp.policies.unet import ConditionalUnet1D

FIXTURES = Path(__file__).parent / "fixtures"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class FixedChunk(nn.Module):
    """A backbone that outputs the same chunk whatever its inputs."""

    def __init__(self, chunk: torch.Tensor):
        super().__init__()
        self.chunk = chunk
        self.calls = 0

    def forward(self, x, t, r=None, cond=None, null_mask=None, return_features=False):
        self.calls += 1
        out = self.chunk.expand_as(x).clone()
        return (out, [out]) if return_features else out


SAMPLE_HEADS = [
    MeanFlowHead(MeanFlowConfig(prediction="sample")),
    SplitMeanFlowHead(SplitMeanFlowConfig(prediction="sample")),
    FlowPolicyHead(FlowPolicyConfig(prediction="sample")),
]


@pytest.mark.parametrize("head", SAMPLE_HEADS, ids=lambda h: h.cfg.name)
def test_sample_mode_one_step_returns_the_backbone_chunk_for_any_noise(head):
    chunk = torch.tensor([[[0.5, -0.25], [0.1, 0.9], [-0.7, 0.0]]])          # (1, H=3, A=2), inside [-1, 1]
    net = FixedChunk(chunk)
    for seed in range(3):
        noise = torch.randn(4, 3, 2, generator=torch.Generator().manual_seed(seed)) * 3
        out = head.sample(net, noise, torch.zeros(4, 2), steps=1)
        torch.testing.assert_close(out, chunk.expand(4, 3, 2), rtol=0, atol=1e-6)
    assert net.calls == 3                                                   # one network evaluation per sample


@pytest.mark.parametrize("head", SAMPLE_HEADS, ids=lambda h: h.cfg.name)
def test_velocity_mode_one_step_depends_on_the_noise(head):
    """The contrast that makes the test above mean something: a velocity backbone passes the noise through."""
    cfg = type(head.cfg)(prediction="velocity", clip_sample=False)
    velocity_head = type(head)(cfg)
    chunk = torch.zeros(1, 3, 2)
    a = velocity_head.sample(FixedChunk(chunk), torch.ones(1, 3, 2), None, steps=1)
    b = velocity_head.sample(FixedChunk(chunk), -torch.ones(1, 3, 2), None, steps=1)
    assert (a - b).abs().min() > 0.5


def test_derived_velocity_is_z_minus_x_hat_over_floored_t():
    chunk = torch.full((1, 2, 1), 0.25)
    net = DerivedVelocity(FixedChunk(chunk), MeanFlowConfig(prediction="sample", t_floor=0.1))
    z = torch.ones(3, 2, 1)
    t = torch.tensor([1.0, 0.5, 0.01])                                      # the last is below the floor
    v = net(z, t, torch.zeros(3))
    expected = (1 - 0.25) / torch.tensor([1.0, 0.5, 0.1])
    torch.testing.assert_close(v, expected.view(3, 1, 1).expand(3, 2, 1))


def test_jvp_through_the_derived_velocity_matches_finite_differences(jvp_matches_finite_differences):
    torch.manual_seed(0)
    unet = ConditionalUnet1D(action_dim=3, global_cond_dim=5, down_dims=(16, 32), time_embed_dim=16,
                             time_scale=1000.0, two_times=True).double()
    net = DerivedVelocity(unet, MeanFlowConfig(prediction="sample"))
    p = jvp_matches_finite_differences(net)      # du/dt along (v, 0, 1) against finite differences
    z, v, cond, t, r, dudt, fd = p.z, p.v, p.cond, p.t, p.r, p.dudt, p.fd
    torch.testing.assert_close(p.u, (z - unet(z, t, r, cond=cond)) / t.view(-1, 1, 1))
    # The derived u's own 1/t term is part of the derivative: the backbone's JVP alone differs.
    _, dxdt, _ = jvp_dudt(lambda z_, r_, t_: unet(z_, t_, r_, cond=cond, return_features=True), z, r, t, v)
    assert (dudt - dxdt).abs().max() > 1e-2 * fd.abs().max()


@dataclasses.dataclass
class ForcedGuidance(MeanFlowConfig):
    """Takes the guided path (two extra passes, v_tilde) whatever cfg_w and cfg_kappa are."""

    @property
    def guided(self) -> bool:
        return True


def test_cfg_scale_one_equals_unguided_in_sample_mode():
    torch.manual_seed(0)
    unet = ConditionalUnet1D(action_dim=2, global_cond_dim=4, down_dims=(8, 16), time_embed_dim=8,
                             time_scale=1000.0, two_times=True)
    g = torch.Generator().manual_seed(3)
    x, e = torch.rand(5, 4, 2, generator=g) * 2 - 1, torch.randn(5, 4, 2, generator=g)
    t, r = torch.rand(5, generator=g) * 0.5 + 0.5, torch.rand(5, generator=g) * 0.5
    cond = torch.randn(5, 4, generator=g)
    dropped = torch.tensor([False, True, False, False, True])
    unguided = MeanFlowHead(MeanFlowConfig(prediction="sample", p_uncond=0.1)).targets(unet, x, e, t, r, cond, dropped)
    scale_one = MeanFlowHead(ForcedGuidance(prediction="sample", p_uncond=0.1)).targets(unet, x, e, t, r, cond, dropped)
    torch.testing.assert_close(scale_one[1], unguided[1], rtol=1e-5, atol=1e-5)     # u_tgt
    torch.testing.assert_close(scale_one[2], e - x, rtol=0, atol=1e-6)               # v_tilde = v
    scale_two = MeanFlowHead(MeanFlowConfig(prediction="sample", p_uncond=0.1, cfg_w=2.0)).targets(
        unet, x, e, t, r, cond, dropped)
    assert (scale_two[1] - unguided[1]).abs().max() > 1e-3                         # w = 2 changes the target


@pytest.mark.parametrize("head", [
    MeanFlowHead(MeanFlowConfig()), SplitMeanFlowHead(SplitMeanFlowConfig()), FlowPolicyHead(FlowPolicyConfig()),
    MeanFlowHead(MeanFlowConfig(prediction="velocity")), DP3Head(DP3Config())], ids=lambda h: h.cfg.name)
def test_no_sampled_action_leaves_the_normalised_range(head):
    torch.manual_seed(0)
    two = isinstance(head, (MeanFlowHead, SplitMeanFlowHead))
    unet = ConditionalUnet1D(action_dim=2, global_cond_dim=4, down_dims=(8, 16), time_embed_dim=8,
                             time_scale=100.0, two_times=two)
    with torch.no_grad():                                                 # an untrained net with large outputs
        unet.final[-1].weight.mul_(50)
    noise = torch.randn(64, 4, 2, generator=torch.Generator().manual_seed(0)) * 3
    out = head.sample(unet, noise, torch.randn(64, 4))
    assert out.abs().max() <= 1.0
    unclipped = type(head)(type(head.cfg)(**{**head.cfg.__dict__, "clip_sample": False}))
    assert unclipped.sample(unet, noise, torch.randn(64, 4)).abs().max() > 1.0   # the clamp did something


def test_checkpoint_saved_before_the_options_loads_as_velocity_and_acts_identically():
    policy = load_policy(FIXTURES / "legacy_velocity_meanflow.safetensors", use_ema=False)
    assert policy.config.head_cfg.prediction == "velocity" and policy.config.head_cfg.clip_sample is False
    expected = json.loads((FIXTURES / "legacy_velocity_meanflow.json").read_text())
    obs = {k: torch.tensor(v) for k, v in expected["obs"].items()}
    out = policy.predict_action(obs, generator=torch.Generator().manual_seed(expected["noise_seed"]))
    torch.testing.assert_close(out["action_pred"], torch.tensor(expected["action_pred"]), rtol=0, atol=1e-5)


def test_new_configs_default_to_sample_and_save_it():
    cfg = PolicyConfig(head="meanflow", n_points=16, unet=UNetConfig(preset="tiny"))
    saved = cfg.to_dict()
    assert saved["head_cfg"]["prediction"] == "sample" and saved["head_cfg"]["clip_sample"] is True
    assert PolicyConfig.from_saved(saved) == cfg                         # a saved field wins over LEGACY
    with pytest.raises(ValueError, match="prediction"):
        MeanFlowConfig(prediction="epsilon")


def test_policy_in_sample_mode_overfits_one_chunk():
    """End to end through the policy: a few hundred steps on one (observation, chunk) pair reproduce the chunk in
    one step, for any noise (what the velocity parameterisation failed at within the suite's budget)."""
    torch.manual_seed(0)
    cfg = PolicyConfig(head="meanflow", n_points=16, agent_dim=3, action_dim=2, horizon=4,
                       unet=UNetConfig(preset="tiny"))
    policy = build_policy(cfg)
    from mfp.demos.normalizer import MinMaxNormalizer

    action = torch.tensor([[[0.2, -0.5], [0.4, -0.3], [0.6, -0.1], [0.8, 0.1]]])
    policy.set_normalizer(MinMaxNormalizer().fit({"action": torch.tensor([[-1.0, -1.0], [1.0, 1.0]]),
                                                  "agent_pos": torch.rand(10, 3), "point_cloud": torch.rand(10, 3)}))
    obs = {"point_cloud": torch.rand(1, 2, 16, 3), "agent_pos": torch.rand(1, 2, 3)}
    batch = {"obs": {k: v.expand(32, *v.shape[1:]) for k, v in obs.items()}, "action": action.expand(32, 4, 2)}
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    for _ in range(300):
        loss, _ = policy.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    policy.eval()
    outs = [policy.predict_action(obs, generator=torch.Generator().manual_seed(s))["action_pred"] for s in range(4)]
    for out in outs:
        assert (out - action).abs().max() < 0.1
    assert max((a - b).abs().max() for a in outs for b in outs) < 0.05      # the noise barely moves the chunk


def test_time_pairs_cover_the_one_step_query_and_the_uniform_law():
    from mfp.policies.head import sample_logit_normal_pair

    g = torch.Generator().manual_seed(0)
    n = 20000
    t, r = sample_logit_normal_pair(n, -0.4, 1.0, 0.5, "cpu", generator=g, dist="uniform", ratio_one_step=0.25)
    one = (t == 1.0) & (r == 0.0)
    equal = t == r
    assert int(one.sum()) == n // 4 and int(equal.sum()) == n // 2 and not (one & equal).any()
    rest = ~one & ~equal
    assert (t[rest] > r[rest]).all()
    # The other quarter: max and min of two U[0, 1] draws, P(t <= a) = a^2 and P(r <= a) = 1 - (1 - a)^2.
    for a in (0.25, 0.5, 0.75):
        assert float((t[rest] <= a).float().mean()) == pytest.approx(a * a, abs=0.02)
        assert float((r[rest] <= a).float().mean()) == pytest.approx(1 - (1 - a) ** 2, abs=0.02)
    # The logit-normal default almost never reaches the one-step query: why ratio_one_step exists.
    t_ln, _ = sample_logit_normal_pair(n, -0.4, 1.0, 0.0, "cpu", generator=g)
    assert float((t_ln > 0.95).float().mean()) < 0.01
    with pytest.raises(ValueError, match="ratio_r_eq_t \\+ ratio_one_step"):
        MeanFlowConfig(ratio_r_eq_t=0.8, ratio_one_step=0.3)
