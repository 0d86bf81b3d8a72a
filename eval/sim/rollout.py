"""Rollouts of a policy in a simulated task: the policy side (observation history, action chunks) and episodes.

`PolicyRunner` is the one implementation of the policy side: it keeps the last n_obs_steps observations
(the first one repeated at an episode's start, as the training windows are padded), calls the network
only when its queue of chunked actions is empty, and times each call. A simulator or a robot gives it
observation dicts {point_cloud (N, 3), agent_pos (d,)} and executes the actions it returns.

Per-frame feature cache: a policy that encodes frames on their own (`encode_frames` and
`predict_action_from_features`: PointCloudPolicy) has each observation encoded once, when it is observed, and its
features kept for the next n_obs_steps calls; the network call at a chunk boundary then runs the head alone on the
cached features (padded at an episode's start as the observations are), giving the actions predict_action gives
on the same observations. Any other policy (OnnxPolicy: one graph from raw observations) is called with the raw
history, as `predict_action(batch)`.
"""

from __future__ import annotations

import collections
import functools
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

from mfp.demos.sampler import edge_padded
from mfp.policies.base import ActionQueue, obs_to_torch


def caches_features(policy) -> bool:
    """Whether `policy` can be conditioned on frames encoded one at a time (encode_frames and
    predict_action_from_features), so PolicyRunner caches per-frame features."""
    return all(callable(getattr(policy, name, None)) for name in ("encode_frames", "predict_action_from_features"))


class PolicyRunner:
    """reset / observe / predict_chunk / act, see the module docstring. `inference_ms`: the network call of each
    chunk (with the feature cache, the head alone); `encode_ms`: the encoding of each observed frame (feature cache
    only; empty otherwise)."""

    def __init__(self, policy, device: str | torch.device = "cpu"):
        self.policy = policy.to(device).eval()
        self.device = torch.device(device)
        cfg = policy.config
        self.n_obs_steps = int(cfg.n_obs_steps)
        self.n_action_steps = int(cfg.n_action_steps)
        self.caches_features = caches_features(policy)
        self._history: collections.deque = collections.deque(maxlen=self.n_obs_steps)
        self._features: collections.deque = collections.deque(maxlen=self.n_obs_steps)  # (1, 1, step_dim) each
        self._queue = ActionQueue()
        self.inference_ms: list[float] = []
        self.encode_ms: list[float] = []
        self._generator: torch.Generator | None = None

    def reset(self, seed: int | None = None) -> None:
        """Start an episode; `seed` fixes the policy's sampling noise for it (same actions in any process)."""
        self._history.clear()
        self._features.clear()
        self._queue.clear()
        self.policy.reset()
        self._generator = None if seed is None else torch.Generator(self.device).manual_seed(int(seed))

    def observe(self, obs: dict[str, np.ndarray]) -> None:
        """Add the latest observation to the history; with the feature cache, encode it now (timed: encode_ms)."""
        self._history.append(obs)
        if self.caches_features:
            frame = obs_to_torch([obs], self.device)                                  # (1, 1, ...)
            self._features.append(self._timed(functools.partial(self.policy.encode_frames, frame), self.encode_ms))

    def _padded(self, frames: collections.deque) -> list:
        """The last n_obs_steps entries of `frames`, oldest first, the first repeated in front early in an episode."""
        return edge_padded(list(frames), self.n_obs_steps - len(frames))

    def history(self) -> list[dict[str, np.ndarray]]:
        """The last n_obs_steps observations, oldest first; early in an episode the first one is repeated in front,
        as training windows are padded at an episode's start (sampler.edge_padded)."""
        return self._padded(self._history)

    def _timed(self, call: Callable[[], object], into: list[float]) -> object:
        """call() under no_grad, its wall time in ms appended to `into` (CUDA synchronised before the clock read)."""
        t0 = time.perf_counter()
        with torch.no_grad():
            out = call()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        into.append(1000 * (time.perf_counter() - t0))
        return out

    def predict_chunk(self) -> np.ndarray:
        """One network call on the history: the next n_action_steps actions (n_action_steps, d_act), timed; with the
        feature cache the head alone, on the cached features of the last n_obs_steps frames."""
        if self.caches_features:
            features = torch.cat(self._padded(self._features), dim=1)                # (1, To, step_dim)
            call = functools.partial(self.policy.predict_action_from_features, features, generator=self._generator)
        else:
            batch = obs_to_torch(self.history(), self.device)
            call = functools.partial(self.policy.predict_action, batch, generator=self._generator)
        actions = self._timed(call, self.inference_ms)["action"][0]
        return actions.float().cpu().numpy()

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """The next action (d_act,) for the latest observation: from the queue, refilled by one network call."""
        self.observe(obs)
        return self._queue.next(self.predict_chunk)


class ExpertActor:
    """The task's expert behind the same actor interface (reset, observe, predict_chunk, act). It reads privileged
    simulator state: obs["full_state"] when the observation carries it (a simulated robot can publish it for
    tests), else `state_fn()`. It is the ceiling a point-cloud policy is measured against, never a policy."""

    n_action_steps = 1

    def __init__(self, task: str, state_fn=None):
        from mfp.demos.experts import make_expert

        self.expert, self.state_fn = make_expert(task), state_fn
        self.inference_ms: list[float] = []
        self._obs: dict | None = None

    def reset(self, seed: int | None = None) -> None:
        self._obs = None

    def observe(self, obs: dict[str, np.ndarray]) -> None:
        self._obs = obs

    def predict_chunk(self) -> np.ndarray:
        state = self._obs.get("full_state") if self._obs is not None else None
        if state is None:
            if self.state_fn is None:
                raise ValueError("the expert needs the simulator's full state: no 'full_state' in the observation")
            state = self.state_fn()
        return np.asarray(self.expert.act(np.asarray(state)), dtype=np.float32)[None]

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        self.observe(obs)
        return self.predict_chunk()[0]


@dataclass
class EpisodeRecord:
    seed: int
    success: bool
    steps: int
    episode_return: float
    first_success_step: int | None = None
    inference_ms: list[float] = field(default_factory=list)
    video: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["inference_ms_mean"] = float(np.mean(self.inference_ms)) if self.inference_ms else None
        del d["inference_ms"]
        return d


def run_episode(env, runner: PolicyRunner, seed: int, frames: list | None = None) -> EpisodeRecord:
    """One episode from `seed` until the env truncates; `frames` collects RGB renders when given."""
    runner.reset(seed)
    obs, _ = env.reset(seed=seed)
    record = EpisodeRecord(seed=int(seed), success=False, steps=0, episode_return=0.0)
    n_calls = len(runner.inference_ms)
    done = False
    while not done:
        if frames is not None:
            frames.append(env.render())
        obs, reward, terminated, truncated, info = env.step(runner.act(obs))
        record.steps += 1
        record.episode_return += float(reward)
        if info["success"] and not record.success:
            record.success, record.first_success_step = True, record.steps
        done = terminated or truncated
    record.inference_ms = runner.inference_ms[n_calls:]
    return record
