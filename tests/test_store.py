"""The zarr demonstration store: round trip, appends, crash recovery and clear errors on bad input."""

import numpy as np
import pytest
import zarr

from mfp.demos.store import DemoStore, DemoStoreError


def _episode(t, n=16, d=9, a=4, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "point_cloud": rng.normal(size=(t, n, 3)).astype(np.float32),
        "state": rng.normal(size=(t, d)).astype(np.float32),
        "action": rng.uniform(-1, 1, (t, a)).astype(np.float32),
        "full_state": rng.normal(size=(t, 39)).astype(np.float32),
    }


def test_round_trip_and_dp3_layout(tmp_path):
    path = tmp_path / "d.zarr"
    store = DemoStore.create(path, attrs={"task": "x"})
    eps = [_episode(t, seed=i) for i, t in enumerate((7, 250, 3))]
    for ep in eps:
        store.add_episode(ep)
    back = DemoStore.open(path)
    assert back.n_episodes == 3 and back.episode_ends.tolist() == [7, 257, 260]
    for i, ep in enumerate(eps):
        got = back.get_episode(i)
        for k in ep:
            np.testing.assert_array_equal(got[k], ep[k])
    # Readable as a plain zarr v2 group with DP3's keys, no project code needed.
    raw = zarr.open_group(str(path), mode="r", zarr_format=2)
    assert raw["data/point_cloud"].shape == (260, 16, 3)
    assert raw["meta/episode_ends"].dtype == np.int64
    assert back.attrs["task"] == "x"


def test_append_rejects_mismatched_episodes(tmp_path):
    store = DemoStore.create(tmp_path / "d.zarr")
    store.add_episode(_episode(5))
    with pytest.raises(DemoStoreError, match="per-step shape"):
        store.add_episode(_episode(5, n=32))
    with pytest.raises(DemoStoreError, match="share one non-zero length"):
        bad = _episode(5)
        bad["action"] = bad["action"][:4]
        store.add_episode(bad)
    with pytest.raises(DemoStoreError, match="missing keys"):
        store.add_episode({"state": np.zeros((3, 9), np.float32)})
    assert DemoStore.open(tmp_path / "d.zarr").n_episodes == 1
    with pytest.raises(FileExistsError):
        DemoStore.create(tmp_path / "d.zarr")


def test_interrupted_append_leaves_committed_episodes_readable(tmp_path):
    path = tmp_path / "d.zarr"
    store = DemoStore.create(path)
    first = _episode(10, seed=1)
    store.add_episode(first)
    # Simulate a process killed after writing the next episode's data, before its commit.
    root = zarr.open_group(str(path), mode="r+", zarr_format=2)
    for k, v in _episode(6, seed=2).items():
        root[f"data/{k}"].resize((16,) + v.shape[1:])
        root[f"data/{k}"][10:] = v
    with pytest.warns(UserWarning, match="uncommitted"):
        back = DemoStore.open(path)
    assert back.n_episodes == 1
    np.testing.assert_array_equal(back.read("action"), first["action"])
    # ... and killed between resizing episode_ends and writing its entry (fill value 0).
    root["meta/episode_ends"].resize((2,))
    with pytest.warns(UserWarning):
        again = DemoStore.open(path, mode="a")
    assert again.n_episodes == 1
    second = _episode(4, seed=3)
    again.add_episode(second)  # the uncommitted tail is overwritten, not appended after
    final = DemoStore.open(path)
    assert final.episode_ends.tolist() == [10, 14]
    np.testing.assert_array_equal(final.get_episode(1)["action"], second["action"])


def _write_raw(path, ends, arrays):
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.create_group("data")
    for k, v in arrays.items():
        root["data"].create_array(k, shape=v.shape, dtype=v.dtype)[...] = v
    root.create_group("meta").create_array("episode_ends", shape=(len(ends),), dtype="int64")[...] = np.asarray(ends)
    return path


def test_bad_datasets_give_clear_errors(tmp_path):
    good = {"point_cloud": np.zeros((10, 8, 3), np.float32), "state": np.zeros((10, 9), np.float32),
            "action": np.zeros((10, 4), np.float32)}

    missing = dict(good)
    del missing["action"]
    with pytest.raises(DemoStoreError, match=r"missing key 'data/action'"):
        DemoStore.open(_write_raw(tmp_path / "a.zarr", [10], missing))

    wrong_pc = dict(good, point_cloud=np.zeros((10, 8, 4), np.float32))
    with pytest.raises(DemoStoreError, match=r"data/point_cloud.*\(T, N, 3 or 6\).*\(10, 8, 4\)"):
        DemoStore.open(_write_raw(tmp_path / "b.zarr", [10], wrong_pc))

    wrong_state = dict(good, state=np.zeros((10,), np.float32))
    with pytest.raises(DemoStoreError, match=r"data/state.*\(T, D\)"):
        DemoStore.open(_write_raw(tmp_path / "c.zarr", [10], wrong_state))

    with pytest.raises(DemoStoreError, match=r"data/point_cloud' has 10 steps but 'meta/episode_ends' ends at 12"):
        DemoStore.open(_write_raw(tmp_path / "d.zarr", [4, 12], good))

    with pytest.raises(DemoStoreError, match="strictly increasing"):
        DemoStore.open(_write_raw(tmp_path / "e.zarr", [6, 4, 10], good))

    with pytest.raises(DemoStoreError, match="no such dataset"):
        DemoStore.open(tmp_path / "nothing.zarr")

    (tmp_path / "notzarr").mkdir()
    with pytest.raises(DemoStoreError, match="not a zarr dataset|missing key"):
        DemoStore.open(tmp_path / "notzarr")
