"""The module that becomes the exported graph: raw observations + noise -> actions in environment units.

    OneStepGraph(policy)(point_cloud (B, To, N, 3), agent_pos (B, To, d), noise (B, H, A))
        -> action (B, n_action_steps, A), action_pred (B, H, A)

It runs exactly what `PointCloudPolicy.predict_action` runs after drawing its noise: observation normalisation and
the encoder (`encode_obs`), the head's sampler with a fixed number of network evaluations, the action
unnormalisation and the execution window [To - 1, To - 1 + n_action_steps). The head's sampler is traced as it is,
so every head whose sampling is a fixed loop of network calls exports (MeanFlow, SplitMeanFlow, FlowPolicy, with
their `sample_steps`); DP3's diffusers scheduler does not and is refused by `check_exportable`. Which heads export
is the head registry's `HeadSpec.exportable` (policies/heads.py).
"""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn

from mfp.policies.heads import exportable_heads, head_spec
from mfp.policies.unet import SequenceConv1d


class ExportError(ValueError):
    """A policy, checkpoint or file that cannot be exported or loaded as an exported policy; says why."""


def check_exportable(config) -> None:
    """Refuse a head whose sampler cannot become a fixed graph, naming it and what to do instead."""
    if not head_spec(config.head).exportable:
        raise ExportError(
            f"head '{config.head}' cannot be exported: its sampler ({_sampler_words(config)}) steps a scheduler in "
            f"Python, not a fixed graph; export a head that samples with a fixed number of network evaluations: "
            f"{', '.join(exportable_heads())}")


def _sampler_words(config) -> str:
    steps = getattr(config.head_cfg, "num_inference_steps", None)
    return f"{steps} DDIM steps" if steps else "a scheduler"


def sample_steps(config, override: int | None = None) -> int:
    """The number of network evaluations the exported graph makes per call."""
    steps = override if override is not None else getattr(config.head_cfg, "sample_steps", 1)
    if int(steps) < 1:
        raise ExportError(f"sample_steps must be >= 1, got {steps}")
    return int(steps)


def with_native_convolutions(module: nn.Module) -> nn.Module:
    """A deep copy of `module` whose SequenceConv1d layers run as nn.Conv1d (the same weights and result up to
    summation order): the im2col form is a trick for torch's eager CPU kernels; in the graph one Conv node replaces
    its pad / unfold / reshape / matmul nodes (no measurable latency difference in ONNX Runtime at batch 1 on the
    development CPU, a smaller graph). The copy also leaves the caller's policy untouched (dtype, mode)."""
    module = copy.deepcopy(module)
    for layer in module.modules():
        if isinstance(layer, SequenceConv1d):
            layer.forward = functools.partial(nn.Conv1d.forward, layer)
    return module


class OneStepGraph(nn.Module):
    """See the module docstring. `policy` is a PointCloudPolicy (its config, normaliser, encoder, net, head)."""

    def __init__(self, policy: nn.Module, steps: int | None = None):
        super().__init__()
        check_exportable(policy.config)
        missing = [k for k in ("action", "agent_pos") if k not in policy.normalizer.keys]
        if policy.config.encoder.normalize_point_cloud and "point_cloud" not in policy.normalizer.keys:
            missing.append("point_cloud")
        if missing:
            raise ExportError(f"the policy's normaliser has no statistics for {missing}: export a trained policy "
                              f"(set_normalizer / a checkpoint), not a freshly built one")
        self.policy = with_native_convolutions(policy).to("cpu", torch.float32).eval()
        self.steps = sample_steps(policy.config, steps)

    def forward(self, point_cloud: torch.Tensor, agent_pos: torch.Tensor, noise: torch.Tensor):
        cfg = self.policy.config
        cond = self.policy.encode_obs({"point_cloud": point_cloud, "agent_pos": agent_pos})      # (B, To * 128)
        x = self.policy.head.sample(self.policy.net, noise, cond, steps=self.steps)             # (B, H, A) in [-1, 1]
        action_pred = self.policy.normalizer.unnormalize("action", x)
        start = cfg.n_obs_steps - 1
        return action_pred[:, start:start + cfg.n_action_steps], action_pred
