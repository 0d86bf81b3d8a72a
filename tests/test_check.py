"""`mfp check` and DemoStore checksums: a sound dataset / checkpoint / run passes with a summary, damage is
found (missing chunk files, truncated files, broken JSON), checksums survive crashes at every point of an append."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr

from mfp.demos.store import CHECKSUM_ATTR, DemoStore, DemoStoreError
from mfp.eval.cli import main
from mfp.eval.cli.check import check_path

N_POINTS = 32


def _episode(t: int, seed: int, n: int = N_POINTS) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"point_cloud": rng.normal(size=(t, n, 3)).astype(np.float32),
            "state": rng.normal(size=(t, 9)).astype(np.float32),
            "action": rng.uniform(-1, 1, (t, 4)).astype(np.float32)}


def make_store(path, lengths=(30, 250, 40), n_points: int = N_POINTS):
    """Episodes of several lengths: the 250-step one spans chunk files (200 steps each)."""
    store = DemoStore.create(path, attrs={"task": "synthetic/line", "point_cloud": {"num_points": n_points},
                                          "episode_seeds": list(range(len(lengths))),
                                          "attempted_seeds": list(range(len(lengths)))})
    for i, t in enumerate(lengths):
        store.add_episode(_episode(t, i, n_points))
    return path


def test_checksums_are_recorded_per_episode_and_verify_a_sound_store(tmp_path):
    path = make_store(tmp_path / "d.zarr")
    store = DemoStore.open(path)
    sums = store.recorded_checksums()
    assert set(sums) == {"point_cloud", "state", "action"} and all(len(v) == 3 for v in sums.values())
    assert all(isinstance(h, str) and len(h) == 64 for v in sums.values() for h in v)
    assert store.verify() == []
    scan = store.scan()
    assert scan.arrays["action"].verified_episodes == 3 and scan.arrays["action"].unverified_episodes == 0
    assert -1 <= scan.arrays["action"].min < scan.arrays["action"].max <= 1


def test_a_deleted_chunk_file_is_found_by_its_checksum(tmp_path):
    path = make_store(tmp_path / "d.zarr")
    chunk = path / "data" / "state" / "1.0"        # steps 200..399: episode 1's tail and episode 2
    assert chunk.exists()
    chunk.unlink()
    store = DemoStore.open(path)                     # the structure is intact: opening cannot tell
    assert store.read("state")[200:].max() == 0      # zarr silently reads the fill value
    problems = store.verify()
    assert len(problems) == 2                        # episodes 1 and 2 both lost steps
    assert all(str(chunk) in p and "'data/state'" in p and "checksum" in p for p in problems)
    assert "episode 1 (steps 30..279)" in problems[0] and "episode 2 (steps 280..319)" in problems[1]


def test_a_changed_chunk_file_is_found(tmp_path):
    path = make_store(tmp_path / "d.zarr")
    # Replace episode 0's action chunk with other, well-formed data (what a bad copy or a second writer does).
    root = zarr.open_group(str(path), mode="r+", zarr_format=2)
    root["data/action"][0:5] = np.zeros((5, 4), np.float32)
    problems = DemoStore.open(path).verify()
    assert len(problems) == 1 and "episode 0" in problems[0] and "changed after writing" in problems[0]
    assert str(path / "data" / "action" / "0.0") in problems[0]


def test_mfp_check_dataset_prints_summary_and_exit_status(tmp_path, capsys):
    path = make_store(tmp_path / "d.zarr")
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"dataset {path}: OK")
    assert "episodes: 3, steps: 320" in out and "task: synthetic/line" in out
    assert f"data/point_cloud (320, {N_POINTS}, 3)" in out and "float32" in out
    assert "checksums 3/3 verified" in out and "NaN 0 inf 0" in out and "min " in out and "max " in out

    (path / "data" / "point_cloud" / "0.0.0").unlink()
    assert main(["check", str(path)]) == 1
    out = capsys.readouterr().out
    assert "NOT SOUND (2 problems)" in out
    assert out.count("problem:") == 2 and "data/point_cloud/0.0.0 missing" in out

    assert main(["check", "--json", str(path)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "dataset" and report["ok"] is False and len(report["problems"]) == 2


def test_nan_and_attrs_that_contradict_the_data_are_problems(tmp_path):
    path = tmp_path / "d.zarr"
    store = DemoStore.create(path, attrs={"task": "t", "point_cloud": {"num_points": 512}})
    ep = _episode(20, 0)
    ep["action"][3, 1] = np.nan
    ep["state"][5, 0] = np.inf
    store.add_episode(ep)
    report = check_path(path)
    assert not report.ok
    text = "\n".join(report.problems)
    assert "'data/action' holds 1 NaN and 0 inf" in text and "'data/state' holds 0 NaN and 1 inf" in text
    assert "num_points'] = 512" in text and f"holds {N_POINTS} points" in text


def test_old_stores_without_checksums_are_unverified_not_unsound(tmp_path, capsys):
    path = make_store(tmp_path / "d.zarr")
    root = zarr.open_group(str(path), mode="r+", zarr_format=2)
    root.attrs.__delitem__(CHECKSUM_ATTR)            # as written before checksums existed
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "warning:" in out and "unverified" in out and "checksums 0/3 verified, 3 unrecorded" in out
    # Appending to it: the new episode is verified, the old ones stay unverified.
    store = DemoStore.open(path, "a")
    store.add_episode(_episode(10, 7))
    sums = DemoStore.open(path).recorded_checksums()
    assert sums["action"][:3] == [None, None, None] and isinstance(sums["action"][3], str)
    scan = DemoStore.open(path).scan()
    assert scan.ok and scan.arrays["action"].verified_episodes == 1 and scan.arrays["action"].unverified_episodes == 3


class _Crash(Exception):
    pass


def test_a_crash_at_any_point_of_an_append_leaves_checksums_consistent(tmp_path, monkeypatch):
    """Killed before the checksums are recorded, or between them and the commit: the committed episodes verify,
    the half-written one is invisible, and the next append overwrites its leftovers."""
    for point in ("before_checksums", "before_commit"):
        path = make_store(tmp_path / f"{point}.zarr", lengths=(30, 40))
        store = DemoStore.open(path, "a")
        with monkeypatch.context() as m:
            if point == "before_checksums":
                m.setattr(DemoStore, "_record_checksums", lambda self, sums: (_ for _ in ()).throw(_Crash()))
            else:
                real = DemoStore._record_checksums

                def record_then_crash(self, sums):
                    real(self, sums)
                    raise _Crash()

                m.setattr(DemoStore, "_record_checksums", record_then_crash)
            with pytest.raises(_Crash):
                store.add_episode(_episode(25, 9))
        with pytest.warns(UserWarning, match="uncommitted"):
            again = DemoStore.open(path, "a")
        assert again.n_episodes == 2 and again.verify() == []
        again.add_episode(_episode(15, 10))
        final = DemoStore.open(path)
        assert final.episode_ends.tolist() == [30, 70, 85] and final.verify() == []
        assert all(len(v) == 3 for v in final.recorded_checksums().values())


def test_lost_episode_ends_are_found(tmp_path):
    path = make_store(tmp_path / "d.zarr")
    (path / "meta" / "episode_ends" / "0").unlink()       # every end reads as 0: the store looks empty
    with pytest.warns(UserWarning, match="uncommitted"):
        store = DemoStore.open(path)
    assert store.n_episodes == 0
    problems = store.verify()
    assert any("'meta/episode_ends'" in p and "episode_ends/0 missing" in p for p in problems)
    assert any("checksums were recorded for 3" in p for p in problems)


def test_malformed_checksum_record_is_a_problem(tmp_path):
    path = make_store(tmp_path / "d.zarr")
    zarr.open_group(str(path), mode="r+", zarr_format=2).attrs.update({CHECKSUM_ATTR: {"algorithm": "md5"}})
    problems = DemoStore.open(path).verify()
    assert any("attrs['checksums'] is malformed" in p for p in problems)
    with pytest.raises(DemoStoreError, match="malformed"):
        DemoStore.open(path).recorded_checksums()


# --- checkpoints and run folders ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real (tiny) training run: 2 steps, a periodic and a last checkpoint, EMA, TensorBoard logs."""
    import torch

    from mfp.policies import PolicyConfig
    from mfp.policies.training import TrainConfig, train

    root = tmp_path_factory.mktemp("check")
    data = make_store(root / "d.zarr", lengths=(20, 20, 20))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(data, PolicyConfig(head="meanflow", n_points=N_POINTS, unet={"preset": "tiny"}),
              TrainConfig(steps=2, batch_size=4, val_every=0, ckpt_every=1, keep_checkpoints=1, log_every=1,
                          warmup_steps=0, val_ratio=0.0), root / "run", progress=False)
    finally:
        torch.set_num_threads(threads)
    return root / "run"


def test_mfp_check_run_and_checkpoint(run_dir, tmp_path, capsys):
    assert main(["check", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"run {run_dir}: OK")
    assert "last.safetensors (step 2)" in out and "step_00000002.safetensors (step 2)" in out
    assert "head: meanflow, UNet tiny [32, 64]" in out and "train: step 2 of 2" in out
    assert "EMA weights: yes" in out and "data: task synthetic/line, fingerprint " in out
    params = int(out.split("parameters: ")[1].split(";")[0])
    assert params > 10_000

    # A truncated copy of the checkpoint and a run whose JSON was cut short.
    bad = tmp_path / "run"
    shutil.copytree(run_dir, bad)
    data = (bad / "last.safetensors").read_bytes()
    (bad / "last.safetensors").write_bytes(data[: len(data) // 2])
    (bad / "config.json").write_text('{"policy_config": {')
    shutil.rmtree(bad / "tb")
    assert main(["check", str(bad)]) == 1
    out = capsys.readouterr().out
    assert (f"{bad / 'last.safetensors'}: truncated: its tensors need {len(data)} bytes, "
            f"the file has {len(data) // 2}") in out
    assert f"{bad / 'config.json'}: not valid JSON" in out
    assert "warning:" in out and "no TensorBoard logs" in out
    assert "step_00000002.safetensors: OK" in out          # the sound periodic checkpoint is still reported sound
    assert main(["check", str(bad / "step_00000002.safetensors")]) == 0
    capsys.readouterr()


def test_mfp_check_usage_errors_are_one_line_exit_2(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mfp check: error:") and "no such file or folder" in err and err.count("\n") == 1
    (tmp_path / "empty").mkdir()
    assert main(["check", str(tmp_path / "empty")]) == 2
    assert "neither a dataset" in capsys.readouterr().err
