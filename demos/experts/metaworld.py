"""Meta-World's scripted expert for each of the 50 v3 tasks (they read the privileged 39-D state)."""

from __future__ import annotations

import warnings

import numpy as np


class MetaWorldExpert:
    def __init__(self, task: str):
        from metaworld.policies import ENV_POLICY_MAP

        key = f"{task}-v3"
        if key not in ENV_POLICY_MAP:
            raise ValueError(f"no Meta-World scripted expert for task '{task}'")
        self.policy = ENV_POLICY_MAP[key]()

    def act(self, full_state: np.ndarray) -> np.ndarray:
        """The expert's raw action (it may lie outside [-1, 1]: the environment clips it)."""
        with warnings.catch_warnings():  # metaworld warns that raw outputs exceed [-1, 1]: expected, env clips
            warnings.simplefilter("ignore", UserWarning)
            action = self.policy.get_action(np.asarray(full_state, dtype=np.float64))
        return np.asarray(action, dtype=np.float32)
