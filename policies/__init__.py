"""Policies: DP3 point-cloud encoder + 1-D temporal UNet + one of four head objectives.

Where things are: config.py (PolicyConfig and friends), factory.py (build_policy), policy.py (the policy class),
encoder.py, unet.py, embeddings.py (time / null-condition embeddings), head.py (the head interface and shared
loss pieces), meanflow.py (the MeanFlow loss), flowpolicy.py, dp3.py, splitmeanflow.py, dispersive.py, mlp.py
(a small backbone for toy problems).
"""

from .config import (DP3Config, DispersiveConfig, EncoderConfig, FlowPolicyConfig, HEAD_NAMES, MeanFlowConfig,
                     PolicyConfig, SplitMeanFlowConfig, UNetConfig)
from .factory import build_policy, count_parameters

__all__ = ["build_policy", "count_parameters", "PolicyConfig", "MeanFlowConfig", "FlowPolicyConfig", "DP3Config",
           "SplitMeanFlowConfig", "EncoderConfig", "UNetConfig", "DispersiveConfig", "HEAD_NAMES"]
