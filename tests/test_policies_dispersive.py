"""Dispersive loss: values against a hand computation, refusal at batch size 1, wiring into the policy loss."""

from __future__ import annotations

import math

import pytest
import torch

from mfp.policies import DispersiveConfig, PolicyConfig, UNetConfig, build_policy
from mfp.policies.dispersive import dispersive_loss, dispersive_loss_single
from mfp.demos.normalizer import MinMaxNormalizer

H3 = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])   # squared distances: 1, 4, 5


def _hand_infonce(d: list[list[float]], tau: float) -> float:
    n = len(d)
    return math.log(sum(math.exp(-d[i][j] / tau) for i in range(n) for j in range(n)) / n ** 2)


def test_infonce_l2_matches_hand_computation():
    d = [[0, 1, 4], [1, 0, 5], [4, 5, 0]]
    got = dispersive_loss_single(H3, "infonce_l2", temperature=0.5, normalize_by_max=False)
    assert got.item() == pytest.approx(_hand_infonce(d, 0.5), rel=1e-6)
    # MP1's normalisation: D / max(D) = D / 5
    got = dispersive_loss_single(H3, "infonce_l2", temperature=1.0, normalize_by_max=True)
    assert got.item() == pytest.approx(_hand_infonce([[x / 5 for x in row] for row in d], 1.0), rel=1e-6)


def test_cosine_and_hinge_match_hand_computation():
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    c = 1 / math.sqrt(2)
    d = [[0, 1, 1 - c], [1, 0, 1 - c], [1 - c, 1 - c, 0]]
    got = dispersive_loss_single(h, "cosine", temperature=0.5, normalize_by_max=False)
    assert got.item() == pytest.approx(_hand_infonce(d, 0.5), abs=1e-6)
    d2 = [[0, 1, 4], [1, 0, 5], [4, 5, 0]]
    hinge = sum(max(0.0, 3.0 - x) ** 2 for row in d2 for x in row) / 9
    got = dispersive_loss_single(H3, "hinge", normalize_by_max=False, hinge_margin=3.0)
    assert got.item() == pytest.approx(hinge, rel=1e-6)


def test_feature_maps_are_flattened_and_blocks_summed():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 8, 4, generator=g), torch.randn(4, 16, 2, generator=g)
    total = dispersive_loss([a, b], variant="infonce_l2", temperature=1.0, normalize_by_max=True)
    expected = sum(dispersive_loss_single(f.reshape(4, -1)) for f in (a, b))
    torch.testing.assert_close(total, expected)


def test_dispersion_pushes_features_apart():
    h = (torch.randn(6, 5) * 0.1).requires_grad_(True)
    before = torch.cdist(h, h).mean().item()
    opt = torch.optim.SGD([h], lr=0.05)
    for _ in range(20):
        opt.zero_grad()
        dispersive_loss_single(h, normalize_by_max=False).backward()
        opt.step()
    assert torch.cdist(h, h).mean().item() > before


def test_refused_at_batch_size_one():
    with pytest.raises(ValueError, match="at least 2 samples"):
        dispersive_loss_single(torch.randn(1, 7))


def _policy_and_batch(weight: float, B: int):
    cfg = PolicyConfig(head="flowpolicy", n_points=16, unet=UNetConfig(preset="tiny"),
                       dispersive=DispersiveConfig(weight=weight, blocks=(0, 1)))
    torch.manual_seed(0)
    policy = build_policy(cfg)
    batch = {"obs": {"point_cloud": torch.randn(B, 4, 16, 3), "agent_pos": torch.randn(B, 4, 9)},
             "action": torch.randn(B, 4, 4)}
    policy.set_normalizer(MinMaxNormalizer().fit({"action": torch.randn(50, 4) * 2, "agent_pos": torch.randn(50, 9) * 2,
                                                   "point_cloud": torch.randn(50, 3) * 2}))
    return policy, batch


def test_policy_refuses_dispersive_at_batch_one_but_not_when_off():
    policy, batch = _policy_and_batch(0.5, 1)
    with pytest.raises(ValueError, match="at least 2 samples"):
        policy.compute_loss(batch)
    policy, batch = _policy_and_batch(0.0, 1)
    loss, logs = policy.compute_loss(batch)
    assert logs["dispersive"] == 0.0 and torch.isfinite(loss)


def test_policy_loss_adds_weight_times_dispersive():
    policy, batch = _policy_and_batch(0.5, 4)
    torch.manual_seed(1)
    loss, logs = policy.compute_loss(batch)
    assert logs["dispersive"] < 0                      # log of a mean of exp(-D) with D >= 0
    assert loss.item() == pytest.approx(logs["flow_loss"] + 0.5 * logs["dispersive"], rel=1e-5, abs=1e-6)
    policy0, _ = _policy_and_batch(0.0, 4)
    torch.manual_seed(1)
    loss0, logs0 = policy0.compute_loss(batch)
    assert loss0.item() == pytest.approx(logs["flow_loss"], rel=1e-5)   # same flow loss, no dispersive term
