"""What a policy's action chunks look like without a rollout: how far they are from the demonstrated chunks, and
how much the sampling noise alone moves them.

Both figures are in the normalised action space ([-1, 1] per dimension), so tasks and heads compare:
    chunk_error   mean over windows of the RMS over (H, A) of  x_pred - x_demo   (first noise draw)
    noise_spread  mean over windows and draw pairs of the RMS over (H, A) of  x_pred(noise a) - x_pred(noise b)
A one-step head that passes its noise through to the actions has a large noise_spread (the chunk changes when only
the noise does); a head that has learnt the data has a small chunk_error on windows it was not trained on.

    windows = demo_windows("data/door-heldout.zarr", policy.config)
    chunk_diagnostics(policy, windows)     # {"chunk_error": 0.04, "noise_spread": 0.01, "windows": 128, "draws": 4}
"""

from __future__ import annotations

import itertools

import torch

from mfp.demos.dataset import DemoDataset


def demo_windows(path, config, n_windows: int = 128, val_ratio: float = 0.0, seed: int = 0) -> dict:
    """Up to n_windows (observation, chunk) windows of a dataset, evenly spread over it, in the policy's window
    layout: {"obs": {"point_cloud": (n, To, N, 3), "agent_pos": (n, To, d)}, "action": (n, H, A)}, raw values.
    val_ratio > 0: only the validation episodes of a run trained with that val_ratio and seed on this dataset."""
    val = val_ratio > 0
    dataset = DemoDataset(path, config.horizon, config.n_obs_steps, config.n_action_steps,
                          val_ratio=val_ratio, seed=seed, validation=val)
    if len(dataset) == 0:
        raise ValueError(f"{path}: no {'validation ' if val else ''}windows to diagnose")
    idx = torch.linspace(0, len(dataset) - 1, min(n_windows, len(dataset))).round().long().unique().tolist()
    items = [dataset[i] for i in idx]
    To = config.n_obs_steps
    return {"obs": {k: torch.stack([it["obs"][k][:To] for it in items]) for k in ("point_cloud", "agent_pos")},
            "action": torch.stack([it["action"] for it in items])}


@torch.no_grad()
def chunk_diagnostics(policy, windows: dict, n_draws: int = 4, seed: int = 0, batch: int = 64) -> dict:
    """chunk_error and noise_spread (module docstring) of `policy` on `windows` (demo_windows), over n_draws
    noise draws per window (seeded)."""
    if n_draws < 2:
        raise ValueError(f"noise_spread needs at least 2 noise draws, got {n_draws}")
    normalize = policy.normalizer.normalize
    demo = normalize("action", windows["action"].float())                           # (n, H, A)
    n = demo.shape[0]
    draws = []
    for d in range(n_draws):
        g = torch.Generator().manual_seed(seed * 1000 + d)
        chunks = []
        for lo in range(0, n, batch):
            obs = {k: v[lo:lo + batch] for k, v in windows["obs"].items()}
            chunks.append(policy.predict_action(obs, generator=g)["action_pred"].float())
        draws.append(normalize("action", torch.cat(chunks)))                         # (n, H, A)

    def rms(a: torch.Tensor) -> torch.Tensor:                                        # (n, H, A) -> (n,)
        return a.pow(2).flatten(1).mean(dim=1).sqrt()

    spread = torch.stack([rms(a - b) for a, b in itertools.combinations(draws, 2)]).mean()
    return {"chunk_error": float(rms(draws[0] - demo).mean()), "noise_spread": float(spread),
            "windows": int(n), "draws": int(n_draws)}
