"""The contract every policy head obeys, so trainers, evaluators and the robot loop are shared by all heads.

Batches (from `mfp.demos.dataset`), raw (unnormalised) values:
    batch["obs"]["point_cloud"]: (B, H, N, 3) float32     batch["obs"]["agent_pos"]: (B, H, d) float32
    batch["action"]:             (B, H, d_act) float32
H is the horizon; the policy conditions on the first n_obs_steps observation frames and predicts the
H-step action window that starts at the first observation frame.

Observations at inference: obs_dict["point_cloud"]: (B, n_obs_steps, N, 3), obs_dict["agent_pos"]:
(B, n_obs_steps, d). `predict_action` returns
    {"action": (B, n_action_steps, d_act)  the actions to execute now, starting at the latest observation,
     "action_pred": (B, H, d_act)          the whole predicted window}
The normaliser lives inside the policy (`policy.normalizer`) and is saved with it.
"""

from __future__ import annotations

import abc
import collections
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from mfp.demos.normalizer import MinMaxNormalizer


class ActionQueue:
    """Chunked execution: one action per call, the next chunk predicted only when the last one is used up. The one
    queue behind BasePolicy.select_action and the evaluator's PolicyRunner (the control loop schedules chunks by
    time instead: ChunkScheduler)."""

    def __init__(self) -> None:
        self._queue: collections.deque = collections.deque()

    def clear(self) -> None:
        self._queue.clear()

    def __len__(self) -> int:
        return len(self._queue)

    def next(self, predict_chunk: Callable[[], Iterable[Any]]) -> Any:
        """The next queued action; when none is left, `predict_chunk()` (an iterable of actions, oldest first)
        refills the queue first."""
        if not self._queue:
            self._queue.extend(predict_chunk())
        return self._queue.popleft()


class BasePolicy(nn.Module, abc.ABC):
    """Subclasses set `self.config` (a validated dataclass with n_obs_steps, horizon, n_action_steps)."""

    config: object

    def __init__(self) -> None:
        super().__init__()
        self.normalizer = MinMaxNormalizer()
        self._action_queue = ActionQueue()

    @abc.abstractmethod
    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss on a raw batch (normalised inside) and scalars to log."""

    @abc.abstractmethod
    def predict_action(self, obs_dict: dict[str, torch.Tensor],
                       generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Raw observations (B, n_obs_steps, ...) -> raw actions, see the module docstring; `generator` seeds
        the sampling noise (reproducible actions)."""

    def set_normalizer(self, normalizer: MinMaxNormalizer) -> None:
        self.normalizer.load_state_dict(normalizer.state_dict())

    # --- chunked execution ---------------------------------------------------------------------
    def reset(self) -> None:
        """Forget queued actions (call at the start of every episode)."""
        self._action_queue.clear()

    @torch.no_grad()
    def select_action(self, obs_dict: dict[str, torch.Tensor]) -> torch.Tensor:
        """One action (B, d_act) per call; the network runs only when the queue of chunked actions is empty."""
        # predict_action's "action" is (B, n_action_steps, d_act): queued step by step as (B, d_act)
        return self._action_queue.next(lambda: self.predict_action(obs_dict)["action"].transpose(0, 1))


def obs_to_torch(obs_history: list[dict[str, np.ndarray]], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """A list of n_obs_steps observation dicts (oldest first) -> {key: (1, n_obs_steps, ...)} tensors."""
    keys = ("point_cloud", "agent_pos")
    return {k: torch.as_tensor(np.stack([o[k] for o in obs_history]), dtype=torch.float32, device=device).unsqueeze(0)
            for k in keys}
