"""Chunk diagnostics (chunk error, noise spread) and suite variants, on a real recorded dataset."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mfp.eval.suite.runner import SuiteConfig, train_job
from mfp.eval.suite.variants import parse_variant
from mfp.policies import MeanFlowConfig, PolicyConfig, UNetConfig, build_policy
from mfp.policies.diagnostics import chunk_diagnostics, demo_windows
from mfp.policies.training import read_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ConstantBackbone(nn.Module):
    """Outputs `value` everywhere (a clean chunk in "sample" mode, a velocity in "velocity" mode)."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x, t, r=None, cond=None, null_mask=None, return_features=False):
        out = torch.full_like(x, self.value)
        return (out, [out]) if return_features else out


def _policy(data, prediction: str, value: float):
    from mfp.demos.dataset import DemoDataset

    shapes = DemoDataset(data, 4).shapes
    cfg = PolicyConfig(head="meanflow", head_cfg=MeanFlowConfig(prediction=prediction, clip_sample=False),
                       n_points=shapes["point_cloud"][0], agent_dim=shapes["agent_pos"][0],
                       action_dim=shapes["action"][0], unet=UNetConfig(preset="tiny"))
    policy = build_policy(cfg)
    policy.set_normalizer(DemoDataset(data, 4).fit_normalizer())
    policy.net = ConstantBackbone(value)
    return policy.eval()


def test_a_deterministic_chunk_has_no_spread_and_its_error_is_the_rms_to_the_demos(reach_demos):
    policy = _policy(reach_demos, "sample", 0.25)
    windows = demo_windows(reach_demos, policy.config, n_windows=40)
    assert windows["action"].shape == (40, 4, 4) and windows["obs"]["point_cloud"].shape[1] == 2
    out = chunk_diagnostics(policy, windows, n_draws=3)
    demo = policy.normalizer.normalize("action", windows["action"])
    expected = (0.25 - demo).pow(2).flatten(1).mean(1).sqrt().mean()
    assert out["noise_spread"] < 1e-5
    assert out["chunk_error"] == pytest.approx(float(expected), rel=1e-4)
    assert out["windows"] == 40 and out["draws"] == 3


def test_noise_passed_through_to_the_chunk_shows_as_spread(reach_demos):
    # velocity 0 in one step: x = e - 0 = e, so two draws differ by e_a - e_b, whose RMS is about sqrt(2).
    policy = _policy(reach_demos, "velocity", 0.0)
    out = chunk_diagnostics(policy, demo_windows(reach_demos, policy.config, n_windows=64), n_draws=4)
    assert out["noise_spread"] == pytest.approx(math.sqrt(2), rel=0.1)
    with pytest.raises(ValueError, match="2 noise draws"):
        chunk_diagnostics(policy, demo_windows(reach_demos, policy.config, n_windows=4), n_draws=1)


def test_variant_settings_go_to_head_unet_and_training():
    v = parse_variant("mf-x=meanflow:prediction=velocity,adaptive_p=1,second_time=t_minus_r,lr=3e-4,"
                      "dispersive_weight=0.5")
    assert (v.label, v.head) == ("mf-x", "meanflow")
    assert v.head_cfg == {"prediction": "velocity", "adaptive_p": 1}
    assert v.unet == {"second_time": "t_minus_r"} and v.train == {"lr": 3e-4} and v.dispersive_weight == 0.5
    with pytest.raises(ValueError, match="unknown setting 'adaptive_q'"):
        parse_variant("bad=meanflow:adaptive_q=1")
    with pytest.raises(ValueError, match="unknown head"):
        parse_variant("bad=meanflo:lr=1")
    with pytest.raises(ValueError, match="unknown head or variant 'mf-y'"):
        SuiteConfig(tasks=("metaworld/reach",), heads=("mf-y",), variants=("mf-x=meanflow:lr=1e-3",))


def test_a_suite_variant_trains_with_its_settings_and_is_its_own_job(reach_demos, tmp_path):
    cfg = SuiteConfig(tasks=("metaworld/reach",), heads=("meanflow", "mf-x"), seeds=(0,), steps=2, batch_size=4,
                      preset="tiny", amp="none", runs_dir=str(tmp_path / "runs"), results=str(tmp_path / "r.jsonl"),
                      variants=("mf-x=meanflow:prediction=velocity,ratio_r_eq_t=0.75,second_time=t_minus_r,lr=1e-3",))
    assert cfg.row_variant("meanflow") is None
    assert cfg.row_variant("mf-x")["train"] == {"lr": 1e-3}
    plain, _ = train_job(cfg, "metaworld/reach", "meanflow", 0, reach_demos, progress=False)
    varied, _ = train_job(cfg, "metaworld/reach", "mf-x", 0, reach_demos, progress=False)
    assert plain.parent != varied.parent
    a, b = read_checkpoint(plain), read_checkpoint(varied)
    assert a.policy_config.head_cfg.prediction == "sample" and b.policy_config.head_cfg.prediction == "velocity"
    assert b.policy_config.head_cfg.ratio_r_eq_t == 0.75 and b.policy_config.unet.second_time == "t_minus_r"
    # The optimiser really ran with the variant's learning rate (its param groups are saved with the checkpoint).
    assert a.meta["optimizer"]["param_groups"][0]["initial_lr"] == pytest.approx(3e-4)    # TrainConfig's default
    assert b.meta["optimizer"]["param_groups"][0]["initial_lr"] == pytest.approx(1e-3)


def test_mfp_check_diagnose_reports_the_runs_validation_windows(reach_demos, tmp_path, capsys):
    import json

    from mfp.eval.cli import main
    from mfp.policies.training import TrainConfig, load_policy, train

    cfg = PolicyConfig(head="meanflow", n_points=512, agent_dim=9, action_dim=4, unet=UNetConfig(preset="tiny"))
    run = tmp_path / "run"
    train(reach_demos, cfg, TrainConfig(steps=2, batch_size=4, val_ratio=0.3, val_every=0, amp="none"), run,
          progress=False)
    capsys.readouterr()                                   # what training printed
    assert main(["check", str(run), "--diagnose", "--json", "--windows", "16", "--draws", "2"]) == 0
    d = json.loads(capsys.readouterr().out)["diagnostics"]
    assert d["windows_from"] == "the run's validation episodes" and d["windows"] == 16
    policy = load_policy(run)
    expected = chunk_diagnostics(policy, demo_windows(reach_demos, policy.config, 16, val_ratio=0.3), n_draws=2)
    assert d["chunk_error"] == pytest.approx(expected["chunk_error"], rel=1e-5)
    assert d["noise_spread"] == pytest.approx(expected["noise_spread"], rel=1e-5)
    training_windows = demo_windows(reach_demos, policy.config, 16)
    assert not torch.equal(training_windows["action"], demo_windows(reach_demos, policy.config, 16, 0.3)["action"])
