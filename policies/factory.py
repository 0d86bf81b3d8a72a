"""`build_policy(config) -> BasePolicy`: the one entry point that turns a PolicyConfig (or its dict from a
checkpoint) into a policy. Every registered head (heads.py) is served by PointCloudPolicy."""

from __future__ import annotations

from typing import Any

from .base import BasePolicy
from .config import PolicyConfig
from .policy import PointCloudPolicy


def build_policy(config: PolicyConfig | dict[str, Any]) -> BasePolicy:
    if isinstance(config, dict):
        config = PolicyConfig.from_dict(config)
    if not isinstance(config, PolicyConfig):
        raise TypeError(f"build_policy needs a PolicyConfig or its dict, got {type(config).__name__}")
    return PointCloudPolicy(config)


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())
