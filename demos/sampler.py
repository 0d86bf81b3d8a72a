"""Windows of `horizon` steps over episodes, padded at episode edges by repeating the edge frame.

`create_indices` does all the index arithmetic (as in diffusion_policy's SequenceSampler): each window
is (buffer_start, buffer_end, sample_start, sample_end) — the slice read from the flat arrays and where
it lands in the window; the rest of the window repeats the first/last frame read.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np


def edge_padded(frames, before: int, after: int = 0):
    """`frames` (an array, frames along axis 0, or a list) with its first frame repeated `before` times in front and
    its last frame `after` times behind. The one rule for steps beyond an episode's edge: training windows
    (SequenceSampler) and the observation history at the start of a rollout (PolicyRunner) both use it."""
    if isinstance(frames, np.ndarray):
        return np.concatenate([np.repeat(frames[:1], before, axis=0), frames, np.repeat(frames[-1:], after, axis=0)])
    frames = list(frames)
    return [frames[0]] * before + frames + [frames[-1]] * after


def create_indices(episode_ends: np.ndarray, horizon: int, pad_before: int = 0, pad_after: int = 0,
                   episode_mask: np.ndarray | None = None) -> np.ndarray:
    """(W, 4) int64 windows over the episodes selected by `episode_mask` (all by default).

    A window may start up to `pad_before` steps before its episode and end up to `pad_after` steps after it.
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    if not (0 <= pad_before < horizon and 0 <= pad_after < horizon):
        raise ValueError(f"pad_before/pad_after must lie in [0, horizon), got {pad_before}, {pad_after} for horizon {horizon}")
    episode_ends = np.asarray(episode_ends, dtype=np.int64)
    if episode_mask is None:
        episode_mask = np.ones(len(episode_ends), dtype=bool)
    if len(episode_mask) != len(episode_ends):
        raise ValueError(f"episode_mask has {len(episode_mask)} entries for {len(episode_ends)} episodes")
    indices = []
    for i, end in enumerate(episode_ends):
        if not episode_mask[i]:
            continue
        start = 0 if i == 0 else int(episode_ends[i - 1])
        length = int(end) - start
        for offset in range(-pad_before, length - horizon + pad_after + 1):
            buffer_start = max(offset, 0) + start
            buffer_end = min(offset + horizon, length) + start
            sample_start = buffer_start - (offset + start)
            sample_end = sample_start + (buffer_end - buffer_start)
            indices.append((buffer_start, buffer_end, sample_start, sample_end))
    return np.asarray(indices, dtype=np.int64).reshape(-1, 4)


def val_episode_mask(n_episodes: int, val_ratio: float = 0.0, seed: int = 0) -> np.ndarray:
    """Boolean (E,) mask of held-out validation episodes: round(E * val_ratio) of them, at least one when
    val_ratio > 0, and never all of them."""
    if not 0.0 <= val_ratio < 1.0:
        raise ValueError(f"val_ratio must lie in [0, 1), got {val_ratio}")
    mask = np.zeros(n_episodes, dtype=bool)
    n_val = min(max(1, round(n_episodes * val_ratio)), n_episodes - 1) if val_ratio > 0 else 0
    if n_val > 0:
        mask[np.random.default_rng(seed).choice(n_episodes, size=n_val, replace=False)] = True
    return mask


class SequenceSampler:
    """Reads padded windows {key: (horizon, ...)} from in-memory arrays {key: (T, ...)}."""

    def __init__(self, arrays: Mapping[str, np.ndarray], episode_ends: np.ndarray, horizon: int,
                 pad_before: int = 0, pad_after: int = 0, episode_mask: np.ndarray | None = None):
        self.arrays = dict(arrays)
        self.horizon = horizon
        self.indices = create_indices(episode_ends, horizon, pad_before, pad_after, episode_mask)

    def __len__(self) -> int:
        return len(self.indices)

    def sample_sequence(self, idx: int) -> dict[str, np.ndarray]:
        buffer_start, buffer_end, sample_start, sample_end = self.indices[idx]
        out = {}
        for key, arr in self.arrays.items():
            chunk = arr[buffer_start:buffer_end]
            if sample_start == 0 and sample_end == self.horizon:
                out[key] = chunk
            else:
                out[key] = edge_padded(chunk, sample_start, self.horizon - sample_end)
        return out
