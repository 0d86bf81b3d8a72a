"""`collect`: real expert episodes into a real zarr store; seeds, appends, failures and a kill -9."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mfp.demos.collect import collect
from mfp.demos.dataset import DemoDataset
from mfp.demos.seeds import EVAL_SEED_START, eval_seeds
from mfp.demos.store import DemoStore


def test_collected_dataset_layout_and_metadata(reach_demos):
    store = DemoStore.open(reach_demos)
    assert store.n_episodes == 3
    assert store.keys() == ["action", "full_state", "point_cloud", "state"]
    assert store.episode_ends.tolist() == [200, 400, 600]
    attrs = store.attrs
    assert attrs["task"] == "metaworld/reach"
    assert attrs["episode_seeds"] == [0, 1, 2] and attrs["attempted_seeds"] == [0, 1, 2]
    assert attrs["point_cloud"]["num_points"] == 512 and len(attrs["point_cloud"]["crop_low"]) == 3
    assert np.asarray(attrs["camera"]["K"]).shape == (3, 3)
    assert {"mujoco", "metaworld", "gymnasium", "zarr"} <= set(attrs["provenance"]["versions"])
    actions = store.read("action")
    assert np.abs(actions).max() <= 1.0  # executed (clipped) actions
    assert store.read("point_cloud").shape == (600, 512, 3)


class _NeverSucceeds:
    def act(self, full_state):
        return np.zeros(4, np.float32)


def test_only_successful_episodes_are_kept_and_every_seed_is_recorded(tmp_path):
    path = tmp_path / "fail.zarr"
    with pytest.raises(RuntimeError, match="succeeded in only 0 of 2"):
        collect("metaworld/reach", 1, path, max_attempts=2, progress=False, expert=_NeverSucceeds())
    store = DemoStore.open(path)
    assert store.n_episodes == 0
    assert store.attrs["attempted_seeds"] == [0, 1]
    # The next collection continues after the failed seeds and never reuses one.
    report = collect("metaworld/reach", 1, path, progress=False)
    assert report.seeds_added == [2]
    assert DemoStore.open(path).attrs["episode_seeds"] == [2]


def test_demo_and_evaluation_seeds_never_overlap(tmp_path):
    assert min(eval_seeds(20)) >= EVAL_SEED_START
    with pytest.raises(ValueError, match="evaluation seeds"):
        collect("metaworld/reach", 1, tmp_path / "x.zarr", seed_start=EVAL_SEED_START, progress=False)
    with pytest.raises(ValueError, match="already used"):
        path = tmp_path / "y.zarr"
        collect("metaworld/reach", 1, path, progress=False, seed_start=5)
        collect("metaworld/reach", 1, path, progress=False, seed_start=5)


def test_dataset_windows_over_a_recorded_store(reach_demos):
    ds = DemoDataset(reach_demos, horizon=4, n_obs_steps=2, n_action_steps=3, val_ratio=0.34, seed=0)
    assert ds.train_mask.sum() == 2 and ds.val_mask.sum() == 1
    item = ds[0]
    assert item["obs"]["point_cloud"].shape == (4, 512, 3) and item["obs"]["agent_pos"].shape == (4, 9)
    assert item["action"].shape == (4, 4)
    # First window of an episode: one padded frame before it (n_obs_steps - 1).
    assert np.array_equal(item["obs"]["agent_pos"][0], item["obs"]["agent_pos"][1])
    per_episode = 200 - 4 + 1 + 1 + 2
    assert len(ds) == 2 * per_episode and len(ds.validation_dataset()) == per_episode
    norm = ds.fit_normalizer()
    assert set(norm.keys) == {"action", "agent_pos", "point_cloud"}


def test_kill_during_collection_leaves_a_readable_store_that_resumes(tmp_path):
    path = tmp_path / "killed.zarr"
    env = dict(os.environ, MUJOCO_GL="egl")
    proc = subprocess.Popen([sys.executable, "-m", "mfp.eval.cli", "collect", "--task", "metaworld/reach",
                             "--episodes", "20", "--out", str(path), "--no-progress"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            time.sleep(0.3)
            try:
                if DemoStore.open(path).n_episodes >= 2:
                    break
            except Exception:  # not created yet
                pass
        time.sleep(0.7)  # land somewhere inside the next episode or its write
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    store = DemoStore.open(path)
    n = store.n_episodes
    assert 2 <= n < 20
    for i in range(n):
        ep = store.get_episode(i)
        assert ep["point_cloud"].shape == (200, 512, 3) and np.isfinite(ep["action"]).all()
    seeds_before = store.attrs["episode_seeds"][:n]
    report = collect("metaworld/reach", 1, path, progress=False)
    after = DemoStore.open(path)
    assert after.n_episodes == n + 1
    assert report.seeds_added[0] not in seeds_before
    assert after.attrs["episode_seeds"][:n] == seeds_before
