"""The scripted experts reach success in our environments (Meta-World; Adroit is in test_adroit.py)."""

import numpy as np
import pytest

from mfp.demos.collect import run_expert_episode
from mfp.demos.experts import make_expert
from mfp.envs import make_env


@pytest.mark.parametrize("task", ["metaworld/reach", "metaworld/drawer-open", "metaworld/pick-place",
                                  "metaworld/button-press"])
def test_metaworld_expert_reaches_success(task):
    env = make_env(task)
    expert = make_expert(task)
    try:
        successes = 0
        for seed in (0, 1):
            episode, success = run_expert_episode(env, expert, seed)
            successes += success
            assert episode["action"].shape == (200, 4)
            assert np.abs(episode["action"]).max() <= 1.0  # executed actions, clipped
        assert successes == 2
    finally:
        env.close()


def test_expert_for_unknown_task_is_refused():
    with pytest.raises(ValueError, match="valid tasks"):
        make_expert("metaworld/does-not-exist")
