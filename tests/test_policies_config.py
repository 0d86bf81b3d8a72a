"""PolicyConfig: validation errors, JSON round trip, presets and their parameter counts."""

from __future__ import annotations

import json

import pytest
import torch

from mfp.policies import (DP3Config, DispersiveConfig, FlowPolicyConfig, MeanFlowConfig, PolicyConfig,
                          SplitMeanFlowConfig, UNetConfig, build_policy, count_parameters)


def test_n_action_steps_beyond_the_window_is_refused_with_the_rule():
    with pytest.raises(ValueError, match=r"n_action_steps \(4\) must be <= horizon - n_obs_steps \+ 1 = 3"):
        PolicyConfig(horizon=4, n_obs_steps=2, n_action_steps=4)   # MP1's config
    assert PolicyConfig(horizon=4, n_obs_steps=2, n_action_steps=3).n_action_steps == 3
    assert PolicyConfig(horizon=16, n_obs_steps=2, n_action_steps=8).n_action_steps == 8


@pytest.mark.parametrize("kwargs, message", [
    (dict(head="ddim"), "head must be one of"),
    (dict(head="dp3", head_cfg=MeanFlowConfig()), "head_cfg is a MeanFlowConfig but head is 'dp3'"),
    (dict(n_obs_steps=5, horizon=4), r"n_obs_steps \(5\) must be <= horizon"),
    (dict(horizon=6, n_action_steps=2), r"horizon \(6\) must be divisible by 2\*\*2"),
    (dict(action_dim=0), "action_dim must be a positive integer"),
    (dict(dispersive=DispersiveConfig(blocks=(0, 3))), "the UNet has only 3"),
    (dict(head_cfg=MeanFlowConfig(cfg_w=2.0, p_uncond=0.1), head="flowpolicy"), "head_cfg is a MeanFlowConfig"),
])
def test_policy_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PolicyConfig(**kwargs)


@pytest.mark.parametrize("make, message", [
    (lambda: MeanFlowConfig(cfg_w=2.0), "needs a trained null condition: set p_uncond > 0"),
    (lambda: MeanFlowConfig(ratio_r_eq_t=1.5), "ratio_r_eq_t must lie in"),
    (lambda: MeanFlowConfig(adaptive_c=0.0), "adaptive_c must be > 0"),
    (lambda: MeanFlowConfig(error_reduction="max"), "error_reduction"),
    (lambda: DP3Config(num_inference_steps=200), "num_inference_steps must lie in"),
    (lambda: DP3Config(prediction_type="v_prediction"), "prediction_type"),
    (lambda: FlowPolicyConfig(num_segments=0), "num_segments"),
    (lambda: SplitMeanFlowConfig(sample_steps=0), "sample_steps"),
    (lambda: UNetConfig(down_dims=(60, 120)), "multiples of n_groups=8"),
    (lambda: UNetConfig(preset="huge"), "unet.preset must be one of"),
    (lambda: UNetConfig(kernel_size=4), "kernel_size must be odd"),
    (lambda: DispersiveConfig(variant="l1"), "dispersive.variant"),
    (lambda: DispersiveConfig(weight=-1), "dispersive.weight"),
])
def test_sub_config_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_from_dict_refuses_unknown_keys():
    d = PolicyConfig().to_dict()
    d["unet"]["down_dim"] = [8]
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['down_dim'\]"):
        PolicyConfig.from_dict(d)


@pytest.mark.parametrize("cfg", [
    PolicyConfig(),
    PolicyConfig.mp1(action_dim=7, agent_dim=24, n_points=1024),
    PolicyConfig(head="meanflow", head_cfg=MeanFlowConfig(cfg_w=2.0, cfg_kappa=0.3, p_uncond=0.1),
                 unet=UNetConfig(preset="tiny", time_combine="concat", second_time="t_minus_r", time_scale=1.0)),
    PolicyConfig(head="dp3", horizon=16, n_action_steps=8, head_cfg=DP3Config(prediction_type="epsilon")),
    PolicyConfig(head="flowpolicy", head_cfg=FlowPolicyConfig(num_segments=1)),
    PolicyConfig(head="splitmeanflow", unet=UNetConfig(down_dims=(16, 32))),
])
def test_to_dict_from_dict_round_trip_through_json(cfg):
    d = cfg.to_dict()
    back = PolicyConfig.from_dict(json.loads(json.dumps(d)))
    assert back == cfg
    assert back.to_dict() == d
    assert type(back.head_cfg) is type(cfg.head_cfg)
    assert (d["n_points"], d["agent_dim"], d["action_dim"]) == (cfg.n_points, cfg.agent_dim, cfg.action_dim)


def test_time_scale_defaults_per_head_and_explicit_value_wins():
    assert PolicyConfig(head="meanflow").unet.time_scale == 1.0          # MP1's code; best with prediction=sample
    assert PolicyConfig(head="splitmeanflow").unet.time_scale == 1000.0
    assert PolicyConfig(head="dp3").unet.time_scale == 100.0         # DP3's integer diffusion steps
    assert PolicyConfig(head="flowpolicy").unet.time_scale == 99.0
    shared = UNetConfig()
    assert PolicyConfig(head="meanflow", unet=UNetConfig(time_scale=1000.0)).unet.time_scale == 1000.0
    PolicyConfig(head="dp3", unet=shared)
    assert shared.time_scale is None                                 # the caller's object is not mutated


def test_presets_parameter_counts():
    counts = {}
    for preset in ("tiny", "small", "paper"):
        with torch.device("meta"):   # no memory for the 256 M paper model
            counts[preset] = count_parameters(build_policy(PolicyConfig(unet=UNetConfig(preset=preset))))
    assert 4.5e6 < counts["small"] < 6.5e6, counts            # "about 5 M"
    assert 245e6 < counts["paper"] < 265e6, counts            # "about 256 M"
    assert counts["tiny"] < 1e6
    assert PolicyConfig(unet=UNetConfig(preset="paper")).unet.down_dims == (512, 1024, 2048)
    assert PolicyConfig().unet.preset == "small"              # the CPU default
