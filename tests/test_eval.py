"""Rollouts: the policy side (observation history, action chunks), evaluation during and after training."""

import json

import numpy as np
import pytest
import torch

from mfp.demos.seeds import eval_seed_set, eval_seeds
from mfp.demos.store import DemoStore
from mfp.demos.sampler import SequenceSampler
from mfp.eval.cli import main
from mfp.eval.sim.evaluator import evaluate
from mfp.eval.sim.rollout import PolicyRunner
from mfp.eval.sim.training_eval import simulation_eval_fn
from mfp.policies import PolicyConfig, build_policy
from mfp.policies.training import load_policy

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


def test_rollout_history_matches_the_training_windows():
    """At every step k of an episode the policy sees, at rollout, the observation frames of the training window
    whose executed actions start at step k (DemoDataset pads windows with pad_before = n_obs_steps - 1): the first
    steps of both repeat the episode's first frame."""
    cfg = CountingPolicy().config
    n_steps = 7
    states = np.arange(n_steps, dtype=np.float32)[:, None].repeat(cfg.agent_dim, axis=1)
    sampler = SequenceSampler({"agent_pos": states}, np.array([n_steps]), cfg.horizon,
                              pad_before=cfg.n_obs_steps - 1, pad_after=cfg.n_action_steps - 1)
    runner = PolicyRunner(CountingPolicy())
    for k in range(n_steps):
        runner.observe({"point_cloud": np.zeros((cfg.n_points, 3), np.float32), "agent_pos": states[k]})
        training = sampler.sample_sequence(k)["agent_pos"][:cfg.n_obs_steps]     # window k starts at step k - To + 1
        rollout = np.stack([obs["agent_pos"] for obs in runner.history()])
        np.testing.assert_array_equal(rollout, training)


def test_train_with_simulation_eval_then_mfp_eval(reach_demos, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--data", str(reach_demos), "--out", str(run), "--preset", "tiny", "--steps", "4",
                 "--batch-size", "8", "--val-every", "0", "--eval-every", "2", "--eval-episodes", "1",
                 "--no-progress"]) == 0
    history = json.loads((run / "eval.json").read_text())
    assert [h["step"] for h in history] == [2, 4]
    assert all(h["task"] == "metaworld/reach" and h["n_episodes"] == 1 for h in history)
    # The hook rolled out the run's final EMA policy on the first evaluation seed: evaluating that checkpoint
    # again on the same seed gives the outcome the hook recorded.
    again = evaluate(load_policy(run), None, eval_seeds(1), progress=False)
    assert history[-1]["success_rate"] == float(again["episodes"][0]["success"])

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
    assert result["success_rate"] == np.mean([e["success"] for e in result["episodes"]])
    (video,) = result["videos"]
    assert video.endswith("seed%d.mp4" % seeds[0]) and (tmp_path / "results" / "videos").is_dir()
    assert (tmp_path / "results" / "point_cloud.png").stat().st_size > 1000


class ZeroActionPolicy(torch.nn.Module):
    """A real tiny policy for the reach dataset whose actions are replaced by zeros: the arm never moves."""

    def __init__(self, store_path):
        super().__init__()
        data = DemoStore.open(store_path).root["data"]
        arrays = {"action": data["action"][:], "agent_pos": data["state"][:], "point_cloud": data["point_cloud"][:]}
        self.config = PolicyConfig(head="meanflow", n_points=arrays["point_cloud"].shape[1],
                                   agent_dim=arrays["agent_pos"].shape[1], action_dim=arrays["action"].shape[1],
                                   unet={"preset": "tiny"})
        self.inner = build_policy(self.config)
        self.inner.normalizer.fit({**arrays, "point_cloud": arrays["point_cloud"].reshape(-1, 3)})
        self.calls = 0

    def reset(self):
        pass

    def predict_action(self, obs, generator=None):
        self.calls += 1
        out = self.inner.predict_action(obs, generator=generator)
        return {k: torch.zeros_like(v) for k, v in out.items()}


def test_training_eval_hook_scores_the_expert_and_a_still_arm(reach_demos):
    """The hook training calls (the dataset's task, the evaluation seeds) gives the success it should: the
    expert solves reach on every seed, an arm that never moves solves none (reach's goal is drawn at least
    0.2 m from where the hand starts: goal y in [0.8, 0.9], hand y 0.6 in metaworld's sawyer_reach_v3.py), and the
    rate is the fraction of successful episodes."""
    eval_fn = simulation_eval_fn(reach_demos, 2)
    expert = eval_fn(None, 0)                      # None: the task's expert through the same path
    assert expert["task"] == "metaworld/reach" and expert["n_episodes"] == 2
    assert expert["success_rate"] == 1.0
    still = ZeroActionPolicy(reach_demos)
    zero = eval_fn(still, 0)
    assert zero["success_rate"] == 0.0
    assert still.calls == 2 * -(-200 // still.config.n_action_steps)   # it really acted in both episodes


def test_mfp_eval_refuses_bad_requests(capsys):
    assert main(["eval", "--expert"]) == 2
    assert "--expert needs --task" in capsys.readouterr().err
    assert main(["eval", "--expert", "--task", "metaworld/reach", "--seeds", "0,0"]) == 2
    assert "distinct" in capsys.readouterr().err
