"""Rollouts: the policy side (observation history, action chunks), evaluation during and after training."""

import json

import numpy as np
import pytest
import torch

from mfp.demos.seeds import eval_seed_set
from mfp.demos.store import DemoStore
from mfp.eval.cli import main
from mfp.eval.rollout import PolicyRunner
from mfp.policies import PolicyConfig, build_policy

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class CountingPolicy(torch.nn.Module):
    """A real tiny policy that records every observation batch it is asked to act on."""

    def __init__(self):
        super().__init__()
        cfg = PolicyConfig(head="meanflow", n_points=8, agent_dim=2, action_dim=3, horizon=4, n_obs_steps=2,
                           n_action_steps=3, unet={"preset": "tiny"})
        self.inner = build_policy(cfg)
        self.inner.normalizer.fit({"action": np.array([[-1.0] * 3, [1.0] * 3]),
                                   "agent_pos": np.array([[-1.0] * 2, [1.0] * 2]),
                                   "point_cloud": np.array([[-1.0] * 3, [1.0] * 3])})
        self.config = cfg
        self.calls = []

    def reset(self):
        pass

    def predict_action(self, obs, generator=None):
        self.calls.append({k: v.clone() for k, v in obs.items()})
        return self.inner.predict_action(obs, generator=generator)


def _obs(i):
    return {"point_cloud": np.full((8, 3), i, np.float32), "agent_pos": np.full(2, i, np.float32)}


def test_runner_pads_history_and_calls_the_network_once_per_chunk():
    policy = CountingPolicy()
    runner = PolicyRunner(policy)
    actions = [runner.act(_obs(i)) for i in range(7)]
    assert all(a.shape == (3,) for a in actions)
    assert len(policy.calls) == 3  # steps 0, 3, 6: n_action_steps = 3 actions per call
    first, second = policy.calls[0]["agent_pos"][0, :, 0], policy.calls[1]["agent_pos"][0, :, 0]
    assert first.tolist() == [0.0, 0.0]  # the first observation repeated, as training windows are padded
    assert second.tolist() == [2.0, 3.0]  # the two latest observations, oldest first
    assert len(runner.inference_ms) == 3
    runner.reset()
    runner.act(_obs(9))
    assert policy.calls[-1]["agent_pos"][0, :, 0].tolist() == [9.0, 9.0]  # a new episode forgets the old one


def test_train_with_simulation_eval_then_mfp_eval(reach_demos, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--data", str(reach_demos), "--out", str(run), "--preset", "tiny", "--steps", "4",
                 "--batch-size", "8", "--val-every", "0", "--eval-every", "2", "--eval-episodes", "1",
                 "--no-progress"]) == 0
    history = json.loads((run / "eval.json").read_text())
    assert [h["step"] for h in history] == [2, 4]
    assert all(h["task"] == "metaworld/reach" and h["n_episodes"] == 1 and 0.0 <= h["success_rate"] <= 1.0
               for h in history)

    out = tmp_path / "results.json"
    assert main(["eval", "--ckpt", str(run), "--episodes", "2", "--seeds", "1", "--workers", "1", "--videos", "1",
                 "--out", str(out), "--no-progress"]) == 0
    result = json.loads(out.read_text())
    demo_seeds = set(DemoStore.open(reach_demos).attrs["attempted_seeds"])
    seeds = [e["seed"] for e in result["episodes"]]
    assert seeds == eval_seed_set(1, 2) and not demo_seeds & set(seeds)
    assert all(e["steps"] == 200 and e["inference_ms_mean"] > 0 for e in result["episodes"])
    assert result["checkpoint"]["step"] == 4 and result["checkpoint"]["weights"] == "ema"
    assert "versions" in result["provenance"]
    assert result["success_by_seed_set"] == {"1": result["success_rate"]}
    (video,) = result["videos"]
    assert video.endswith("seed%d.mp4" % seeds[0]) and (tmp_path / "results" / "videos").is_dir()
    assert (tmp_path / "results" / "point_cloud.png").stat().st_size > 1000


def test_mfp_eval_refuses_bad_requests(capsys):
    assert main(["eval", "--expert"]) == 2
    assert "--expert needs --task" in capsys.readouterr().err
    assert main(["eval", "--expert", "--task", "metaworld/reach", "--seeds", "0,0"]) == 2
    assert "distinct" in capsys.readouterr().err
