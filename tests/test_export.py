"""ONNX export: an exported policy acts as its torch source does (same noise -> same actions within 1e-4 over the
frames of an episode, called as PolicyRunner calls a policy), carries its configs and provenance, refuses bad inputs
and unexportable heads with clear errors, and survives pickling (evaluation workers)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from mfp.demos.normalizer import MinMaxNormalizer
from mfp.demos.store import DemoStore
from mfp.policies import PolicyConfig, build_policy
from mfp.policies.base import obs_to_torch
from mfp.policies.export import ExportError, OnnxPolicy, export_onnx
from mfp.policies.training import TrainConfig, load_policy, read_checkpoint, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_POINTS, AGENT_DIM, ACTION_DIM, T = 64, 9, 4, 12
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def exported(tmp_path_factory, synthetic_store):
    """A briefly trained tiny MeanFlow run (the default head and prediction=sample) on the synthetic dataset of
    conftest.py, exported from its folder."""
    root = tmp_path_factory.mktemp("export")
    data = synthetic_store(root / "data.zarr", n_eps=3, T=T, n_points=N_POINTS, agent_dim=AGENT_DIM,
                           action_dim=ACTION_DIM)
    cfg = PolicyConfig(head="meanflow", n_points=N_POINTS, unet={"preset": "tiny"})
    tc = TrainConfig(steps=12, batch_size=8, lr=1e-3, val_every=0, ckpt_every=100, log_every=100, warmup_steps=0,
                     val_ratio=0.34)
    train(data, cfg, tc, root / "run", progress=False)
    path = export_onnx(root / "run", root / "policy.onnx")
    return {"run": root / "run", "data": data, "onnx": path}


def episode_frames(data_path, episode: int = 0) -> list[dict[str, np.ndarray]]:
    ep = DemoStore.open(data_path).get_episode(episode, keys=("point_cloud", "state"))
    return [{"point_cloud": pc, "agent_pos": pos} for pc, pos in zip(ep["point_cloud"], ep["state"])]


def runner_chunks(policy, frames, seed: int) -> list[np.ndarray]:
    """The chunk a PolicyRunner would compute at every frame: the last n_obs_steps frames (the first repeated at
    the start), `predict_action(batch, generator=...)["action"][0]`, one seeded generator for the episode."""
    To = policy.config.n_obs_steps
    generator = torch.Generator().manual_seed(seed)
    chunks = []
    for i in range(len(frames)):
        history = [frames[max(j, 0)] for j in range(i - To + 1, i + 1)]
        out = policy.predict_action(obs_to_torch(history), generator=generator)["action"][0]
        chunks.append(out.float().cpu().numpy())
    return chunks


# --- parity ---------------------------------------------------------------------------------------------------
def test_exported_actions_match_torch_over_an_episode(exported):
    torch_policy = load_policy(exported["run"])
    onnx_policy = OnnxPolicy(exported["onnx"]).to("cpu").eval()
    frames = episode_frames(exported["data"])
    a = np.stack(runner_chunks(torch_policy, frames, seed=7))
    b = np.stack(runner_chunks(onnx_policy, frames, seed=7))
    assert a.shape == b.shape == (T, torch_policy.config.n_action_steps, ACTION_DIM)
    diff = np.abs(a - b).max()
    print(f"max |onnx - torch| over {T} frames: {diff:.2e}")
    assert diff < TOLERANCE
    assert np.abs(a[0] - a[-1]).max() > 10 * TOLERANCE       # the actions do depend on the frame


def test_explicit_noise_batches_and_the_whole_window(exported):
    torch_policy = load_policy(exported["run"])
    onnx_policy = OnnxPolicy(exported["onnx"])
    frames = episode_frames(exported["data"])
    obs = {k: torch.stack([obs_to_torch(frames[i:i + 2])[k][0] for i in (0, 4, 8)]) for k in frames[0]}  # B = 3
    ref = torch_policy.predict_action(obs, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(3, 4, ACTION_DIM, generator=torch.Generator().manual_seed(1))    # the same draw
    out = onnx_policy.predict_action({k: v.numpy() for k, v in obs.items()}, noise=noise.numpy())
    assert isinstance(out["action"], np.ndarray) and out["action_pred"].shape == (3, 4, ACTION_DIM)
    for key in ("action", "action_pred"):
        assert np.abs(out[key] - ref[key].numpy()).max() < TOLERANCE
    other = onnx_policy.predict_action(obs, noise=torch.randn(3, 4, ACTION_DIM))["action_pred"]
    assert isinstance(other, torch.Tensor) and not torch.allclose(other, torch.from_numpy(out["action_pred"]))


def test_pickled_policy_acts_the_same(exported):
    policy = OnnxPolicy(exported["onnx"])
    copy = pickle.loads(pickle.dumps(policy))
    frames = episode_frames(exported["data"])
    np.testing.assert_array_equal(runner_chunks(policy, frames[:3], 5), runner_chunks(copy, frames[:3], 5))


# --- metadata --------------------------------------------------------------------------------------------------
def test_metadata_round_trips(exported):
    import onnx

    policy = OnnxPolicy(exported["onnx"])
    ckpt = read_checkpoint(exported["run"])
    assert policy.config == ckpt.policy_config
    info = load_policy(exported["run"]).checkpoint_info
    for key in ("step", "weights", "train_config", "data", "policy_config"):
        assert policy.checkpoint_info[key] == json.loads(json.dumps(info[key])), key
    assert policy.checkpoint_info["data"]["task"] == "synthetic/line"
    meta = policy.metadata
    assert meta["provenance"]["checkpoint"] == ckpt.meta["provenance"]
    assert set(meta["provenance"]["export"]) >= {"date", "commit", "versions"}
    assert meta["graph"]["sample_steps"] == 1
    assert meta["graph"]["inputs"]["point_cloud"] == ["B", 2, N_POINTS, 3]
    props = {p.key: p.value for p in onnx.load(str(exported["onnx"])).metadata_props}
    assert all(isinstance(json.loads(v), (dict, list, str, int, type(None))) for v in props.values())
    assert [p.name for p in onnx.load(str(exported["onnx"])).graph.input] == ["point_cloud", "agent_pos", "noise"]
    assert not list(exported["onnx"].parent.glob("*.partial"))       # the atomic write left no temporary file


# --- errors ----------------------------------------------------------------------------------------------------
def test_bad_inputs_are_named_with_their_expected_shape(exported):
    policy = OnnxPolicy(exported["onnx"])
    path = str(exported["onnx"])
    good = {"point_cloud": np.zeros((1, 2, N_POINTS, 3), np.float32),
            "agent_pos": np.zeros((1, 2, AGENT_DIM), np.float32)}
    with pytest.raises(ValueError) as e:
        policy.predict_action({**good, "point_cloud": np.zeros((1, 2, 32, 3), np.float32)})
    assert path in str(e.value) and "'point_cloud'" in str(e.value) and f"(B, 2, {N_POINTS}, 3)" in str(e.value)
    with pytest.raises(ValueError, match=r"'agent_pos' must have shape \(B, 2, 9\), got \(1, 9\)"):
        policy.predict_action({**good, "agent_pos": np.zeros((1, AGENT_DIM), np.float32)})
    with pytest.raises(KeyError, match="no 'agent_pos'"):
        policy.predict_action({"point_cloud": good["point_cloud"]})
    with pytest.raises(ValueError, match=r"'noise' must have shape \(B=1, 4, 4\), got \(2, 4, 4\)"):
        policy.predict_action(good, noise=np.zeros((2, 4, ACTION_DIM), np.float32))
    with pytest.raises(ValueError, match="batch"):
        policy.predict_action({**good, "agent_pos": np.zeros((2, 2, AGENT_DIM), np.float32)})


def test_files_that_are_not_exported_policies_are_refused(tmp_path, exported):
    import onnx

    text = tmp_path / "notes.onnx"
    text.write_text("not a model")
    with pytest.raises(ExportError, match="notes.onnx"):
        OnnxPolicy(text)
    bare = onnx.load(str(exported["onnx"]))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(ExportError, match="bare.onnx: not an mfp exported policy"):
        OnnxPolicy(tmp_path / "bare.onnx")
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        OnnxPolicy(tmp_path / "missing.onnx")


def fitted(policy):
    rng = np.random.default_rng(0)
    policy.set_normalizer(MinMaxNormalizer().fit({"action": rng.normal(size=(64, ACTION_DIM)),
                                                  "agent_pos": rng.normal(size=(64, AGENT_DIM)),
                                                  "point_cloud": rng.normal(size=(64, 3))}))
    return policy.eval()


def test_dp3_is_refused_and_an_unfitted_policy_too(tmp_path):
    from mfp.policies.heads import exportable_heads

    assert exportable_heads() == ("meanflow", "flowpolicy", "splitmeanflow")     # HeadSpec.exportable: DP3 not
    dp3 = fitted(build_policy(PolicyConfig(head="dp3", n_points=N_POINTS, unet={"preset": "tiny"})))
    with pytest.raises(ExportError, match="head 'dp3' cannot be exported.*10 DDIM steps"):
        export_onnx(dp3, tmp_path / "dp3.onnx")
    bare = build_policy(PolicyConfig(head="meanflow", n_points=N_POINTS, unet={"preset": "tiny"}))
    with pytest.raises(ExportError, match="normaliser has no statistics"):
        export_onnx(bare, tmp_path / "bare.onnx")
    with pytest.raises(ExportError, match="is a folder"):
        export_onnx(dp3, tmp_path)
    assert not list(tmp_path.iterdir())                               # nothing written


def test_a_multi_step_one_time_head_exports_with_its_steps(tmp_path):
    """FlowPolicy (one time input, velocity prediction) with 2 Euler steps: the loop is part of the graph."""
    cfg = PolicyConfig(head="flowpolicy", head_cfg={"sample_steps": 2}, n_points=N_POINTS, unet={"preset": "tiny"})
    policy = fitted(build_policy(cfg))
    onnx_policy = OnnxPolicy(export_onnx(policy, tmp_path / "fp.onnx"))
    assert onnx_policy.metadata["graph"]["sample_steps"] == 2 and onnx_policy.metadata["checkpoint"] is None
    assert onnx_policy.checkpoint_info["step"] is None and onnx_policy.checkpoint_info["data"] == {}
    obs = {"point_cloud": torch.randn(2, 2, N_POINTS, 3), "agent_pos": torch.randn(2, 2, AGENT_DIM)}
    a = policy.predict_action(obs, generator=torch.Generator().manual_seed(0))["action_pred"]
    b = onnx_policy.predict_action(obs, generator=torch.Generator().manual_seed(0))["action_pred"]
    one_step = policy.head.sample(policy.net, torch.randn(2, 4, ACTION_DIM, generator=torch.Generator().manual_seed(0)),
                                  policy.encode_obs(obs), steps=1)
    assert (a - b).abs().max() < TOLERANCE
    assert (policy.normalizer.unnormalize("action", one_step) - a).abs().max() > 10 * TOLERANCE  # 2 steps != 1
