"""The head registry: a new head is one module and one registration line. This file defines a throw-away head,
registers it, and trains it through `mfp train`'s own function without any other file knowing of it."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F

from mfp.policies.config import PolicyConfig
from mfp.policies.head import Head, HeadLoss
from mfp.policies.heads import HeadSpec, head_names, register_head, registered_heads, unregister_head
from mfp.policies.training import load_policy

N_POINTS = 32


@dataclass
class DirectConfig:
    """The throw-away head's settings."""

    name: ClassVar[str] = "direct"
    clip_sample: bool = True


class DirectHead(Head):
    """Regresses the clean chunk from a zero input in one backbone call: the smallest head there is."""

    def loss(self, net, x, cond, return_features=False) -> HeadLoss:
        t = torch.ones(x.shape[0], device=x.device, dtype=x.dtype)
        pred, features = net(torch.zeros_like(x), t, cond=cond, return_features=True)
        loss = F.mse_loss(pred, x)
        return HeadLoss(loss, {"flow_loss": loss.item()}, list(features) if return_features else [])

    @torch.no_grad()
    def sample(self, net, noise, cond, generator=None):
        t = torch.ones(noise.shape[0], device=noise.device, dtype=noise.dtype)
        return self.clip(net(torch.zeros_like(noise), t, cond=cond))


@pytest.fixture
def direct_head():
    register_head(HeadSpec("direct", DirectConfig, DirectHead, two_times=False, time_scale=1.0))
    yield "direct"
    unregister_head("direct")


@pytest.fixture
def dataset(tmp_path, synthetic_store):
    return synthetic_store(tmp_path / "d.zarr", n_eps=3, T=12, n_points=N_POINTS)


def test_built_in_heads_are_registered_in_order():
    assert head_names() == ("meanflow", "flowpolicy", "dp3", "splitmeanflow")
    assert tuple(registered_heads()) == head_names()
    assert {n: s.two_times for n, s in registered_heads().items()} == {
        "meanflow": True, "flowpolicy": False, "dp3": False, "splitmeanflow": True}


def test_a_registered_head_trains_through_mfp_train(direct_head, dataset, tmp_path, capsys, one_torch_thread):
    from mfp.eval.cli.train import train_parser

    assert direct_head in head_names() and PolicyConfig(head=direct_head).head_cfg == DirectConfig()
    parser = argparse.ArgumentParser(prog="mfp")
    train_parser(parser.add_subparsers(dest="command", required=True))   # --head choices include the new head
    out = tmp_path / "run"
    args = parser.parse_args(["train", "--data", str(dataset), "--out", str(out), "--head", direct_head,
                              "--preset", "tiny", "--steps", "2", "--batch-size", "4", "--val-every", "0",
                              "--ckpt-every", "2", "--no-progress"])
    assert args.run(args) == 0
    assert f"trained {direct_head} to step 2" in capsys.readouterr().out
    policy = load_policy(out)
    assert isinstance(policy.head, DirectHead) and policy.config.head_cfg == DirectConfig()
    obs = {"point_cloud": torch.zeros(1, 2, N_POINTS, 3), "agent_pos": torch.zeros(1, 2, 9)}
    assert policy.predict_action(obs)["action"].shape == (1, 3, 4)


def test_an_unknown_head_names_the_registered_ones():
    with pytest.raises(ValueError, match="head must be one of .*'meanflow'"):
        PolicyConfig(head="nope")
