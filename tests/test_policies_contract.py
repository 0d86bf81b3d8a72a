"""Every head through the same checks: loss and logs, finite gradients, predict_action shapes and window,
determinism with a seed, save/load round trip, the action queue, missing normaliser statistics."""

from __future__ import annotations

import json

import pytest
import torch

from mfp.policies import HEAD_NAMES, DispersiveConfig, MeanFlowConfig, PolicyConfig, UNetConfig, build_policy
from mfp.policies.base import BasePolicy
from mfp.demos.normalizer import MinMaxNormalizer

N_POINTS, AGENT_DIM, ACTION_DIM, B = 24, 5, 3, 4


def make_config(head: str) -> PolicyConfig:
    head_cfg = MeanFlowConfig(cfg_w=1.5, cfg_kappa=0.2, p_uncond=0.25) if head == "meanflow" else None
    return PolicyConfig(head=head, head_cfg=head_cfg, horizon=8, n_obs_steps=2, n_action_steps=4, n_points=N_POINTS,
                        agent_dim=AGENT_DIM, action_dim=ACTION_DIM, unet=UNetConfig(preset="tiny"),
                        dispersive=DispersiveConfig(weight=0.1))


def make_batch(cfg: PolicyConfig, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    H = cfg.horizon
    return {"obs": {"point_cloud": torch.randn(B, H, N_POINTS, 3, generator=g),
                    "agent_pos": torch.randn(B, H, AGENT_DIM, generator=g)},
            "action": torch.rand(B, H, ACTION_DIM, generator=g) * 4 - 1}


def make_policy(head: str, seed: int = 0) -> BasePolicy:
    torch.manual_seed(seed)
    cfg = make_config(head)
    policy = build_policy(cfg)
    batch = make_batch(cfg, 99)
    norm = MinMaxNormalizer().fit({"action": batch["action"], "agent_pos": batch["obs"]["agent_pos"],
                                   "point_cloud": batch["obs"]["point_cloud"]})
    policy.set_normalizer(norm)
    return policy


def obs_window(batch: dict, To: int) -> dict:
    return {k: v[:, :To] for k, v in batch["obs"].items()}


@pytest.fixture(params=HEAD_NAMES)
def head(request) -> str:
    return request.param


def test_loss_is_a_differentiable_scalar_with_float_logs(head):
    policy = make_policy(head)
    assert policy.config.head == head and isinstance(policy.config, PolicyConfig)
    loss, logs = policy.compute_loss(make_batch(policy.config))
    assert loss.ndim == 0 and loss.requires_grad and torch.isfinite(loss)
    assert {"loss", "flow_loss", "dispersive"} <= set(logs)
    assert all(isinstance(v, float) for v in logs.values())
    assert logs["loss"] == pytest.approx(loss.item())
    assert logs["dispersive"] != 0.0                   # weight 0.1 here: the regulariser is active


def test_backward_gives_finite_gradients_reaching_encoder_and_backbone(head):
    policy = make_policy(head)
    loss, _ = policy.compute_loss(make_batch(policy.config))
    loss.backward()
    grads = {n: p.grad for n, p in policy.named_parameters() if p.grad is not None}
    assert all(torch.isfinite(g).all() for g in grads.values())
    for prefix in ("encoder.point_encoder", "encoder.state_mlp", "net.down", "net.up", "net.time_embed.t_embed"):
        assert any(n.startswith(prefix) and g.abs().sum() > 0 for n, g in grads.items()), prefix
    if policy.config.two_times:
        assert any(n.startswith("net.time_embed.r_embed") and g.abs().sum() > 0 for n, g in grads.items())


def test_null_embedding_learns_only_from_dropped_conditions():
    """MeanFlow's condition dropout trains the learned null embedding: its gradient is non-zero exactly on the steps
    whose gradient-carrying pass replaced some sample's condition, and zero when none was dropped (the guidance
    passes use it too, but without gradient)."""
    policy = make_policy("meanflow")
    batch = make_batch(policy.config)
    masks = []

    def record(module, inputs, output):
        if torch.is_grad_enabled():                       # the pass the loss is differentiated through
            masks.append(inputs[1])

    policy.net.null_cond.register_forward_hook(record)
    seen = set()
    for seed in range(16):
        torch.manual_seed(seed)
        policy.zero_grad(set_to_none=True)
        masks.clear()
        loss, _ = policy.compute_loss(batch)
        loss.backward()
        (mask,) = masks
        dropped = bool(mask is not None and mask.any())
        grad = policy.net.null_cond.embedding.grad
        grad_norm = 0.0 if grad is None else grad.abs().sum().item()
        assert (grad_norm > 0) == dropped, (seed, mask, grad_norm)
        seen.add(dropped)
    assert seen == {True, False}                          # p_uncond 0.25, batch 4: both cases among the seeds


def test_predict_action_shapes_and_execution_window(head):
    policy = make_policy(head)
    cfg = policy.config
    out = policy.predict_action(obs_window(make_batch(cfg), cfg.n_obs_steps), generator=torch.Generator().manual_seed(0))
    assert out["action_pred"].shape == (B, cfg.horizon, ACTION_DIM)
    assert out["action"].shape == (B, cfg.n_action_steps, ACTION_DIM)
    start = cfg.n_obs_steps - 1
    assert torch.equal(out["action"], out["action_pred"][:, start:start + cfg.n_action_steps])
    assert torch.isfinite(out["action_pred"]).all()


def test_one_step_sampling_runs_the_backbone_the_expected_number_of_times(head):
    """NFE counted, not read from the config: the backbone's forward calls during one predict_action with each
    head's default sampler. The one-step heads call it once (MeanFlow's guidance is folded into training, so no
    extra unconditional pass at inference); DP3's DDIM calls it once per denoising step."""
    policy = make_policy(head)
    cfg = policy.config
    calls = []
    policy.net.register_forward_pre_hook(lambda module, args: calls.append(1))
    policy.predict_action(obs_window(make_batch(cfg), cfg.n_obs_steps), generator=torch.Generator().manual_seed(0))
    if head == "dp3":
        assert cfg.head_cfg.num_inference_steps > 1 and len(calls) == cfg.head_cfg.num_inference_steps
    else:
        assert len(calls) == 1


def test_determinism_with_a_seed(head):
    policy = make_policy(head)
    cfg = policy.config
    obs = obs_window(make_batch(cfg), cfg.n_obs_steps)
    a1 = policy.predict_action(obs, generator=torch.Generator().manual_seed(7))["action_pred"]
    a2 = policy.predict_action(obs, generator=torch.Generator().manual_seed(7))["action_pred"]
    a3 = policy.predict_action(obs, generator=torch.Generator().manual_seed(8))["action_pred"]
    assert torch.equal(a1, a2)
    assert not torch.equal(a1, a3)          # the noise is used
    batch = make_batch(cfg)
    torch.manual_seed(3)
    l1, _ = policy.compute_loss(batch)
    torch.manual_seed(3)
    l2, _ = policy.compute_loss(batch)
    assert torch.equal(l1, l2)
    # Two policies built under the same seed are identical.
    assert all(torch.equal(p, q) for p, q in zip(make_policy(head, 5).parameters(), make_policy(head, 5).parameters()))


def test_save_load_round_trip_gives_identical_actions(head, tmp_path):
    policy = make_policy(head)
    cfg = policy.config
    path = tmp_path / "ckpt.pt"
    torch.save({"config": json.dumps(cfg.to_dict()), "state_dict": policy.state_dict()}, path)
    ckpt = torch.load(path)
    torch.manual_seed(123)                                  # different init: everything must come from the file
    restored = build_policy(json.loads(ckpt["config"]))
    restored.load_state_dict(ckpt["state_dict"])            # strict: normaliser statistics included
    assert restored.config == cfg
    obs = obs_window(make_batch(cfg, 1), cfg.n_obs_steps)
    a = policy.predict_action(obs, generator=torch.Generator().manual_seed(0))["action_pred"]
    b = restored.predict_action(obs, generator=torch.Generator().manual_seed(0))["action_pred"]
    assert torch.equal(a, b)


def test_select_action_runs_the_network_once_per_chunk(head, monkeypatch):
    policy = make_policy(head)
    cfg = policy.config
    obs = obs_window(make_batch(cfg), cfg.n_obs_steps)
    calls = []
    original = policy.predict_action

    def counting(obs_dict):
        calls.append(1)
        return original(obs_dict, generator=torch.Generator().manual_seed(len(calls)))

    monkeypatch.setattr(policy, "predict_action", counting)
    policy.reset()
    first = original(obs, generator=torch.Generator().manual_seed(1))["action"]
    steps = [policy.select_action(obs) for _ in range(cfg.n_action_steps + 1)]
    assert len(calls) == 2
    for k in range(cfg.n_action_steps):
        assert torch.equal(steps[k], first[:, k])


def test_clear_errors_for_bad_inputs(head):
    policy = make_policy(head)
    cfg = policy.config
    batch = make_batch(cfg)
    with pytest.raises(ValueError, match="n_obs_steps=2"):
        policy.predict_action({k: v[:, :3] for k, v in batch["obs"].items()})
    with pytest.raises(ValueError, match="n_points=24"):
        policy.predict_action({"point_cloud": batch["obs"]["point_cloud"][:, :2, :10],
                               "agent_pos": batch["obs"]["agent_pos"][:, :2]})
    with pytest.raises(ValueError, match="horizon=8"):
        policy.compute_loss({"obs": batch["obs"], "action": batch["action"][:, :4]})
    fresh = build_policy(cfg)                                # normaliser never fitted
    with pytest.raises(KeyError, match="normaliser has no statistics"):
        fresh.compute_loss(batch)


def test_sequence_conv_matches_torch_conv1d():
    from mfp.policies.unet import SequenceConv1d

    torch.manual_seed(0)
    for c_in, c_out, k, T in ((4, 64, 5, 4), (64, 32, 5, 1), (16, 8, 1, 3), (8, 8, 3, 16)):
        conv = SequenceConv1d(c_in, c_out, k)
        ref = torch.nn.Conv1d(c_in, c_out, k, padding=k // 2)
        ref.load_state_dict(conv.state_dict())
        x = torch.randn(3, c_in, T, requires_grad=True)
        torch.testing.assert_close(conv(x), ref(x), rtol=1e-5, atol=1e-5)
        g1 = torch.autograd.grad(conv(x).square().sum(), (x, conv.weight))
        g2 = torch.autograd.grad(ref(x).square().sum(), (x, ref.weight))
        for a, b in zip(g1, g2):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
