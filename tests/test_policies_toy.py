"""Each head learns a small conditional 2-D distribution well enough that its samples match it, and MeanFlow
without its JVP term (a deliberately wrong target) does not.

Toy: the condition (one-hot, 2 classes) selects one of two Gaussian mixtures: class 0 has modes at (+-1, 0),
class 1 at (0, +-1), std 0.3. A bimodal target matters: a one-step sampler that learnt only the instantaneous
velocity lands between the modes. Distance: sliced 2-Wasserstein (128 projections, 1000 samples per class;
two independent true sample sets are ~0.035 apart), the worse of the two classes.
Backbone: the small MLP of mlp.py (same call signature as the UNet) so each head trains in seconds.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mfp.policies import DP3Config, FlowPolicyConfig, MeanFlowConfig, SplitMeanFlowConfig
from mfp.policies.config import DEFAULT_TIME_SCALE
from mfp.policies.dp3 import DP3Head
from mfp.policies.flowpolicy import FlowPolicyHead
from mfp.policies.meanflow import MeanFlowHead
from mfp.policies.mlp import MLPBackbone
from mfp.policies.splitmeanflow import SplitMeanFlowHead

CENTERS = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]], [[0.0, 1.0], [0.0, -1.0]]])  # (class, mode, xy)
STD = 0.3
THRESHOLD = 0.25


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sample_toy(c: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """c: (n,) class indices -> (n, 2) samples."""
    mode = torch.randint(0, 2, c.shape, generator=g)
    return CENTERS[c, mode] + STD * torch.randn(c.shape[0], 2, generator=g)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, g: torch.Generator, n_proj: int = 128) -> float:
    d = torch.randn(2, n_proj, generator=g)
    d = d / d.norm(dim=0)
    pa, pb = (a @ d).sort(dim=0).values, (b @ d).sort(dim=0).values
    return ((pa - pb) ** 2).mean().sqrt().item()


def train(head, two_times: bool, time_scale: float, steps: int, lr: float = 3e-3, seed: int = 0,
          batch: int = 256) -> MLPBackbone:
    torch.manual_seed(seed)
    net = MLPBackbone(action_dim=2, horizon=1, cond_dim=2, hidden=128, depth=3, time_embed_dim=32,
                      time_scale=time_scale, two_times=two_times)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        c = torch.randint(0, 2, (batch,), generator=g)
        out = head.loss(net, sample_toy(c, g)[:, None, :], F.one_hot(c, 2).float())   # x: (B, H=1, A=2)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        sched.step()
    return net


def distance(head, net, sample_steps: int | None = None) -> float:
    """Worse class's sliced Wasserstein distance between the head's samples and the toy distribution."""
    g = torch.Generator().manual_seed(1234)
    dists = []
    for cls in (0, 1):
        c = torch.full((1000,), cls)
        noise = torch.randn(1000, 1, 2, generator=g)
        kwargs = {} if sample_steps is None else {"steps": sample_steps}
        xs = head.sample(net, noise, F.one_hot(c, 2).float(), **kwargs)[:, 0]
        dists.append(sliced_wasserstein(xs, sample_toy(c, g), g))
    return max(dists)


def train_and_measure(head, two_times: bool, time_scale: float, steps: int, **kwargs) -> float:
    return distance(head, train(head, two_times, time_scale, steps, **kwargs))


class MeanFlowWithoutJVP(MeanFlowHead):
    """Deliberately wrong: u_tgt = v (the (t - r) du/dt term dropped), i.e. flow matching on u(z, r, t)."""

    def target(self, v_tilde, dudt, t, r):
        return v_tilde.detach()


def test_distance_floor_and_collapse_reference():
    g = torch.Generator().manual_seed(0)
    c = torch.zeros(1000, dtype=torch.long)
    floor = sliced_wasserstein(sample_toy(c, g), sample_toy(c, g), g)
    between_modes = sliced_wasserstein(torch.randn(1000, 2, generator=g) * STD, sample_toy(c, g), g)
    assert floor < 0.06 and between_modes > 0.4     # a sampler collapsed between the modes is far off


@pytest.mark.parametrize("prediction", ["sample", "velocity"])
def test_meanflow_one_step_matches_and_wrong_target_does_not(prediction):
    # What ships: MeanFlowConfig's defaults and the policy's MeanFlow time scale (DEFAULT_TIME_SCALE), with the
    # backbone predicting the clean sample (the default) or the velocity. Clamping is off: the toy reaches +-1.9.
    scale = DEFAULT_TIME_SCALE["meanflow"]
    cfg = MeanFlowConfig(prediction=prediction, clip_sample=False)
    right = train_and_measure(MeanFlowHead(cfg), True, scale, steps=1000)
    wrong = train_and_measure(MeanFlowWithoutJVP(cfg), True, scale, steps=1000)
    print(f"meanflow ({prediction}) one-step SW {right:.3f}; without the JVP term {wrong:.3f}")
    assert right < THRESHOLD < wrong
    assert wrong > 1.5 * right


def test_splitmeanflow_one_step_matches():
    d = train_and_measure(SplitMeanFlowHead(SplitMeanFlowConfig(clip_sample=False)), True,
                          DEFAULT_TIME_SCALE["splitmeanflow"], steps=2000)
    print(f"splitmeanflow one-step SW {d:.3f}")
    assert d < THRESHOLD


def test_dp3_ddim_matches():
    # The toy reaches +-1.9, beyond the [-1, 1] of normalised actions that DP3's clip_sample assumes.
    d = train_and_measure(DP3Head(DP3Config(clip_sample=False)), False, 100.0, steps=800)
    print(f"dp3 10-step DDIM SW {d:.3f}")
    assert d < THRESHOLD


@pytest.mark.parametrize("prediction", ["sample", "velocity"])
def test_flowpolicy_matches_with_one_step_per_segment(prediction):
    # FlowPolicy's one-step sampler extrapolates across both consistency segments of its default config; on a
    # bimodal target that is biased (one-step SW about 0.44 here, worse than collapsing between the modes), so the
    # distribution test samples with one Euler step per segment (2 network evaluations) ...
    head = FlowPolicyHead(FlowPolicyConfig(num_segments=2, prediction=prediction, clip_sample=False))
    net = train(head, False, 99.0, steps=2000, lr=2e-3, batch=1024)   # consistency training is slow and noisy
    d2, d1 = distance(head, net, sample_steps=2), distance(head, net, sample_steps=1)
    print(f"flowpolicy ({prediction}) 2-step SW {d2:.3f}, 1-step SW {d1:.3f}")
    assert d2 < THRESHOLD < d1
    # ... and with a single segment, one step is the whole path and matches, on most training seeds: consistency
    # training on this bimodal target sometimes settles between the modes (sample, seed 0: SW 0.44 on an AMD EPYC,
    # below 0.25 on an Intel CPU; seeds 1 and 2: 0.08 and 0.16), and which seeds do depends on the CPU's rounding.
    head = FlowPolicyHead(FlowPolicyConfig(num_segments=1, prediction=prediction, clip_sample=False))
    dists = []
    for seed in (0, 1, 2):
        dists.append(distance(head, train(head, False, 99.0, steps=2000, lr=2e-3, batch=1024, seed=seed),
                              sample_steps=1))
        if sum(d < THRESHOLD for d in dists) == 2:
            break
    print(f"flowpolicy ({prediction}) one segment, 1-step SW by training seed {[round(d, 3) for d in dists]}")
    assert sum(d < THRESHOLD for d in dists) >= 2, dists
