"""Dispersive loss ("Diffuse and Disperse", Wang & He 2025): a contrastive loss without positive pairs that
spreads a batch's hidden representations apart. MP1 applies it to the outputs of the first two UNet down blocks.

For one block, h_i = sample i's flattened feature map, D_ij a dissimilarity:
    infonce_l2 (default): D = ||h_i - h_j||^2,          L = log mean_ij exp(-D_ij / tau)
    cosine:               D = 1 - cos(h_i, h_j),         L = log mean_ij exp(-D_ij / tau)
    hinge:                D = ||h_i - h_j||^2,           L = mean_ij max(0, margin - D_ij)^2
i = j terms are included (constants). With normalize_by_max (MP1), D is divided by its batch maximum first
(not detached, as in MP1's code). Blocks are summed (MP1). It is identically zero for one sample: refused at B < 2.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def pairwise_sq_dists(h: torch.Tensor) -> torch.Tensor:
    """h: (B, D) -> (B, B) squared L2 distances (Gram form: no (B, B, D) intermediate)."""
    sq = h.pow(2).sum(dim=1)
    return (sq[:, None] + sq[None, :] - 2.0 * h @ h.T).clamp_min(0.0)


def dispersive_loss_single(h: torch.Tensor, variant: str = "infonce_l2", temperature: float = 1.0,
                           normalize_by_max: bool = True, hinge_margin: float = 1.0) -> torch.Tensor:
    """h: (B, ...) one block's features -> scalar loss."""
    B = h.shape[0]
    if B < 2:
        raise ValueError(f"dispersive loss needs a batch of at least 2 samples (it is identically zero at "
                         f"batch size 1), got {B}; set dispersive.weight = 0 or use a larger batch")
    h = h.reshape(B, -1).float()
    if variant == "cosine":
        hn = F.normalize(h, dim=1)
        dist = (1.0 - hn @ hn.T).clamp_min(0.0)
    elif variant in ("infonce_l2", "hinge"):
        dist = pairwise_sq_dists(h)
    else:
        raise ValueError(f"unknown dispersive variant {variant!r}")
    if normalize_by_max:
        dist = dist / (dist.max() + 1e-8)
    if variant == "hinge":
        return F.relu(hinge_margin - dist).pow(2).mean()
    return torch.logsumexp((-dist / temperature).reshape(-1), dim=0) - math.log(B * B)  # log mean exp


def dispersive_loss(features: list[torch.Tensor], **kwargs) -> torch.Tensor:
    """Sum of `dispersive_loss_single` over the given blocks' features."""
    if not features:
        raise ValueError("dispersive loss: no features given")
    return sum(dispersive_loss_single(h, **kwargs) for h in features)
