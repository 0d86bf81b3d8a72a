"""Safety outside the policy: limits on what is sent, a watchdog on what arrives, an emergency stop.

Every intervention is a SafetyEvent (time, kind, detail) that the control loop logs and records with the run.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np

from mfp.envs import EPISODE_STEPS
from mfp.policies.config_checks import check_fields

log = logging.getLogger("mfp.safety")


@dataclass
class SafetyConfig:
    action_low: float | tuple = -1.0      # per-dimension lower limits (a scalar applies to all dims)
    action_high: float | tuple = 1.0
    max_delta: float | tuple | None = None  # largest change per step of each action dim (None: unlimited)
    max_obs_age_s: float = 0.25           # an observation older than this is stale: hold
    stale_stop_s: float = 2.0             # no fresh observation for this long: end the episode (robot holding)
    max_steps: int = EPISODE_STEPS        # policy steps per episode
    max_time_s: float = 60.0              # wall time per episode

    def __post_init__(self) -> None:
        check_fields(self)
        if self.max_obs_age_s <= 0 or self.stale_stop_s <= 0 or self.max_steps < 1 or self.max_time_s <= 0:
            raise ValueError(f"SafetyConfig: max_obs_age_s, max_steps and max_time_s must be > 0, got {self}")
        lo, hi = np.asarray(self.action_low, float), np.asarray(self.action_high, float)
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()) or np.any(lo >= hi):
            raise ValueError(f"SafetyConfig: action_low must be finite and below action_high, got {self.action_low}, "
                             f"{self.action_high}")
        if self.max_delta is not None and np.any(np.asarray(self.max_delta, float) <= 0):
            raise ValueError(f"SafetyConfig: max_delta must be > 0, got {self.max_delta}")

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


@dataclass
class SafetyEvent:
    t: float
    kind: str        # stale_observation, observations_lost, non_finite_observation, non_finite_action, policy_error, clipped,
                     # rate_limited, late_actions_dropped, e_stop, step_limit, time_limit, no_observation
    detail: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class ActionFilter:
    """Clips each action to the limits and its change per step to max_delta; reports what it changed."""

    def __init__(self, cfg: SafetyConfig, action_dim: int):
        self.low = np.broadcast_to(np.asarray(cfg.action_low, np.float64), (action_dim,))
        self.high = np.broadcast_to(np.asarray(cfg.action_high, np.float64), (action_dim,))
        self.max_delta = None if cfg.max_delta is None else np.broadcast_to(
            np.asarray(cfg.max_delta, np.float64), (action_dim,))
        self.previous: np.ndarray | None = None

    def reset(self, previous: np.ndarray | None = None) -> None:
        self.previous = None if previous is None else np.asarray(previous, np.float64)

    def __call__(self, action: np.ndarray) -> tuple[np.ndarray, list[str]]:
        notes = []
        a = np.clip(np.asarray(action, np.float64), self.low, self.high)
        if np.any(a != action):
            notes.append(f"clipped {int(np.sum(a != action))} dims to the limits")
        if self.max_delta is not None and self.previous is not None:
            limited = np.clip(a, self.previous - self.max_delta, self.previous + self.max_delta)
            if np.any(limited != a):
                notes.append(f"rate-limited {int(np.sum(limited != a))} dims (max change {self.max_delta.max():g})")
            a = limited
        self.previous = a
        return a.astype(np.float32), notes


class EStop:
    """An emergency stop anyone can trigger: a call (`trigger`), Ctrl-C (`install_sigint`), a ROS topic (the ROS
    adapter calls `trigger`). Once set it stays set for the run. `t` is the trigger time on `clock` (the control
    loop's clock)."""

    def __init__(self, clock=time.time):
        self._event = threading.Event()
        self.clock = clock
        self.reason = ""
        self.t: float | None = None

    def trigger(self, reason: str = "e-stop") -> None:
        if not self._event.is_set():
            self.reason, self.t = reason, self.clock()
            self._event.set()
            log.warning("EMERGENCY STOP: %s", reason)

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)

    def install_sigint(self):
        """Ctrl-C triggers the stop (the loop then holds and shuts down cleanly); returns the previous handler."""
        return signal.signal(signal.SIGINT, lambda signum, frame: self.trigger("Ctrl-C"))
