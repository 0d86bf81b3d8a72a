"""A torch Dataset of padded training windows over a demonstration store (read once into memory)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .normalizer import MinMaxNormalizer
from .sampler import SequenceSampler, val_episode_mask
from .store import DemoStore


class DemoDataset(torch.utils.data.Dataset):
    """Items: {"obs": {"point_cloud": (H, N, 3), "agent_pos": (H, d)}, "action": (H, d_act)}, raw values.

    Windows start up to n_obs_steps - 1 steps before an episode and end up to n_action_steps - 1 after it,
    padded with the edge frames, as in DP3.
    """

    def __init__(self, path, horizon: int, n_obs_steps: int = 2, n_action_steps: int = 1, val_ratio: float = 0.0,
                 seed: int = 0, validation: bool = False, max_episodes: int | None = None):
        store = DemoStore.open(path, "r")
        self.path = Path(path)
        self.attrs = store.attrs
        ends = store.episode_ends
        if store.n_episodes == 0:
            raise ValueError(f"{path}: the dataset holds no episodes")
        episode_mask = np.ones(store.n_episodes, dtype=bool)
        if max_episodes is not None:
            episode_mask[max_episodes:] = False
        val_mask = val_episode_mask(store.n_episodes, val_ratio, seed) & episode_mask
        train_mask = episode_mask & ~val_mask
        self.train_mask, self.val_mask = train_mask, val_mask
        self.arrays = {
            "point_cloud": np.asarray(store.read("point_cloud")[..., :3], dtype=np.float32),
            "agent_pos": np.asarray(store.read("state"), dtype=np.float32),
            "action": np.asarray(store.read("action"), dtype=np.float32),
        }
        for key, arr in self.arrays.items():
            if not np.isfinite(arr).all():
                raise ValueError(f"{path}: 'data/{'state' if key == 'agent_pos' else key}' holds non-finite values")
        self.sampler = SequenceSampler(self.arrays, ends, horizon, pad_before=n_obs_steps - 1,
                                       pad_after=n_action_steps - 1, episode_mask=val_mask if validation else train_mask)
        self.horizon, self.n_obs_steps, self.n_action_steps = horizon, n_obs_steps, n_action_steps
        self.seed, self.val_ratio = seed, val_ratio
        self._episode_ends = ends

    def validation_dataset(self) -> "DemoDataset":
        return DemoDataset(self.path, self.horizon, self.n_obs_steps, self.n_action_steps, self.val_ratio, self.seed,
                           validation=True)

    @property
    def shapes(self) -> dict[str, tuple]:
        """Per-step shapes: point_cloud (N, 3), agent_pos (d,), action (d_act,)."""
        return {k: v.shape[1:] for k, v in self.arrays.items()}

    def fit_normalizer(self) -> MinMaxNormalizer:
        """Min-max statistics of the training episodes only."""
        steps = np.zeros(len(self.arrays["action"]), dtype=bool)
        for i, end in enumerate(self._episode_ends):
            if self.train_mask[i]:
                steps[(0 if i == 0 else self._episode_ends[i - 1]):end] = True
        return MinMaxNormalizer().fit({
            "action": self.arrays["action"][steps],
            "agent_pos": self.arrays["agent_pos"][steps],
            "point_cloud": self.arrays["point_cloud"][steps].reshape(-1, 3),
        })

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, idx: int) -> dict:
        w = self.sampler.sample_sequence(idx)
        return {
            "obs": {"point_cloud": torch.from_numpy(np.ascontiguousarray(w["point_cloud"])),
                    "agent_pos": torch.from_numpy(np.ascontiguousarray(w["agent_pos"]))},
            "action": torch.from_numpy(np.ascontiguousarray(w["action"])),
        }
