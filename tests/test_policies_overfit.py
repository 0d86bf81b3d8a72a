"""Each head, with the tiny UNet preset, overfits one episode: its actions end far closer to the demonstrated ones
than the untrained policy's. Two episodes: a synthetic one where agent_pos is constant, so the encoder's point
branch must carry the information, and 50 steps of a recorded Meta-World demonstration.

Episode: 50 steps; an object (a fixed random cloud of 128 points) moves on a smooth curve; the 4-D action is a
smooth function of the step. Training windows: every (H = 4)-step window, observations from its first 2 steps.
"""

from __future__ import annotations

import math

import pytest
import torch

from mfp.policies import HEAD_NAMES, PolicyConfig, UNetConfig, build_policy
from mfp.demos.normalizer import MinMaxNormalizer

T, N_POINTS, AGENT_DIM, ACTION_DIM, H, TO = 50, 64, 9, 4, 4, 2
TRAIN_STEPS = {"meanflow": 400, "splitmeanflow": 400, "flowpolicy": 250, "dp3": 150}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def synthetic_episode(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    k = torch.arange(T, dtype=torch.float32)
    phase = 2 * math.pi * k / T
    obj = torch.stack([0.3 * torch.cos(phase), 0.3 * torch.sin(phase), 0.1 * k / T], dim=-1)     # (T, 3)
    base = torch.randn(N_POINTS, 3, generator=g) * 0.05                                          # fixed shape
    clutter = torch.rand(N_POINTS // 4, 3, generator=g) * 0.2 - 0.6                             # static table points
    point_cloud = torch.cat([base[None] + obj[:, None], clutter[None].expand(T, -1, -1)], dim=1)[:, :N_POINTS]
    action = torch.stack([torch.sin(phase), torch.cos(2 * phase), k / T, torch.tanh(3 * torch.sin(phase))], dim=-1)
    agent_pos = torch.zeros(T, AGENT_DIM)
    return {"point_cloud": point_cloud, "agent_pos": agent_pos, "action": action}


def windows(ep: dict[str, torch.Tensor]) -> dict:
    starts = range(T - H + 1)
    stack = lambda key: torch.stack([ep[key][s:s + H] for s in starts])   # noqa: E731  (W, H, ...)
    return {"obs": {"point_cloud": stack("point_cloud"), "agent_pos": stack("agent_pos")}, "action": stack("action")}


def action_error(policy, batch) -> float:
    obs = {k: v[:, :TO] for k, v in batch["obs"].items()}
    pred = policy.predict_action(obs, generator=torch.Generator().manual_seed(0))["action_pred"]
    return (pred - batch["action"]).pow(2).mean().item()


def overfit_error_ratio(head: str, ep: dict[str, torch.Tensor], agent_dim: int) -> float:
    """Train a tiny-preset policy on every window of one episode; trained / untrained action error."""
    torch.manual_seed(0)
    cfg = PolicyConfig(head=head, horizon=H, n_obs_steps=TO, n_action_steps=3, n_points=N_POINTS,
                       agent_dim=agent_dim, action_dim=ACTION_DIM, unet=UNetConfig(preset="tiny"))
    policy = build_policy(cfg)
    policy.set_normalizer(MinMaxNormalizer().fit({k: ep[k] for k in ("action", "agent_pos", "point_cloud")}))
    batch = windows(ep)
    untrained = action_error(policy, batch)

    opt = torch.optim.AdamW(policy.parameters(), lr=2e-3, weight_decay=1e-6)
    steps = TRAIN_STEPS[head]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    for _ in range(steps):
        loss, _ = policy.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    trained = action_error(policy, batch)
    print(f"{head}: untrained {untrained:.4f} trained {trained:.5f}")
    return trained / untrained


@pytest.mark.parametrize("head", HEAD_NAMES)
def test_each_head_overfits_one_episode(head):
    assert overfit_error_ratio(head, synthetic_episode(), AGENT_DIM) < 0.1


@pytest.mark.parametrize("head", HEAD_NAMES)
def test_each_head_overfits_one_recorded_episode(head, reach_demos):
    """The first 50 steps of a recorded Meta-World reach demonstration (real clouds and robot state). A cloud's
    first 64 of its 512 farthest-point-sampled points are themselves a farthest-point sample."""
    from mfp.demos.store import DemoStore

    rec = DemoStore.open(reach_demos).get_episode(0)
    ep = {"point_cloud": torch.from_numpy(rec["point_cloud"][:T, :N_POINTS]),
          "agent_pos": torch.from_numpy(rec["state"][:T]), "action": torch.from_numpy(rec["action"][:T])}
    assert overfit_error_ratio(head, ep, agent_dim=ep["agent_pos"].shape[1]) < 0.1
