"""The evaluator: expert success reproduced, the Adroit rule counted, evaluation seeds only, serial == parallel,
videos that play back."""

import numpy as np
import pytest

from mfp.demos.collect import run_expert_episode
from mfp.demos.experts import make_expert
from mfp.demos.seeds import EVAL_SEED_START, EVAL_SET_STRIDE, eval_seed_set, eval_seeds
from mfp.demos.store import DemoStore
from mfp.envs import make_env
from mfp.eval.sim.evaluator import evaluate
from mfp.policies import PolicyConfig, build_policy

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("task,seeds", [("metaworld/drawer-open", [0, 1]), ("adroit/pen", [0, 1])])
def test_evaluator_reproduces_expert_success(task, seeds):
    # Ground truth: the collection loop's own record of the expert on these seeds (pen's expert fails seed 1).
    env, expert = make_env(task), make_expert(task)
    try:
        truth = [run_expert_episode(env, expert, s)[1] for s in seeds]
    finally:
        env.close()
    result = evaluate(None, task, seeds, progress=False)
    assert [e["success"] for e in result["episodes"]] == truth
    assert result["success_rate"] == pytest.approx(np.mean(truth))
    assert result["actor"] == "expert" and result["inference_ms_p50"] is None


def test_adroit_rule_25_goal_steps_fail_26_succeed():
    task, seed = "adroit/door", 0
    env, expert = make_env(task), make_expert(task)
    try:
        _, info = env.reset(seed=seed)
        step_of = {}
        for t in range(1, 201):
            _, _, _, _, info = env.step(expert.act(info["full_state"]))
            step_of.setdefault(info["goal_steps"], t)
            if info["goal_steps"] >= 26:
                break
    finally:
        env.close()
    assert step_of[26] == step_of[25] + 1  # the door stays open: one more goal step per env step
    # Episodes cut exactly where the goal has held on 25 steps, then on 26: fail, then succeed.
    short = evaluate(None, task, [seed], progress=False, max_episode_steps=step_of[25])
    long = evaluate(None, task, [seed], progress=False, max_episode_steps=step_of[26])
    assert short["episodes"][0]["success"] is False and short["episodes"][0]["steps"] == step_of[25]
    assert long["episodes"][0]["success"] is True and long["episodes"][0]["first_success_step"] == step_of[26]


def _tiny_reach_policy(reach_demos):
    store = DemoStore.open(reach_demos)
    data = {"action": store.root["data"]["action"][:], "agent_pos": store.root["data"]["state"][:],
            "point_cloud": store.root["data"]["point_cloud"][:].reshape(-1, 3)}
    cfg = PolicyConfig(head="meanflow", n_points=data["point_cloud"].shape[0] // len(data["action"]),
                       agent_dim=data["agent_pos"].shape[1], action_dim=4, unet={"preset": "tiny"})
    policy = build_policy(cfg)
    policy.normalizer.fit(data)
    policy.checkpoint_info = {"data": {"task": "metaworld/reach", "point_cloud": store.attrs["point_cloud"]}}
    return policy


def test_evaluation_seeds_never_overlap_demonstrations(reach_demos):
    demo_seeds = set(DemoStore.open(reach_demos).attrs["attempted_seeds"])
    sets = [set(eval_seed_set(k, 50)) for k in range(3)]
    assert all(min(s) >= EVAL_SEED_START for s in sets) and not demo_seeds & set.union(*sets)
    assert not sets[0] & sets[1] and not sets[1] & sets[2]
    assert eval_seed_set(0, 5) == eval_seeds(5) and eval_seed_set(2, 1) == [EVAL_SEED_START + 2 * EVAL_SET_STRIDE]
    with pytest.raises(ValueError, match="demonstration seeds"):
        evaluate(_tiny_reach_policy(reach_demos), None, [min(demo_seeds)], progress=False)


@pytest.mark.slow
def test_serial_and_parallel_runs_give_the_same_records(reach_demos, tmp_path):
    policy = _tiny_reach_policy(reach_demos)
    seeds = eval_seeds(3)
    serial = evaluate(policy, None, seeds, progress=False)
    parallel = evaluate(policy, None, seeds, progress=False, workers=2, video_dir=tmp_path / "videos", n_videos=1)
    assert parallel["workers"] == 2
    for a, b in zip(serial["episodes"], parallel["episodes"]):
        assert (a["seed"], a["success"], a["steps"], a["first_success_step"]) == \
               (b["seed"], b["success"], b["steps"], b["first_success_step"])
        assert a["episode_return"] == pytest.approx(b["episode_return"], rel=1e-6)
    # each seed is its own episode: the sampling noise and the placement differ between seeds
    assert len({round(e["episode_return"], 6) for e in serial["episodes"]}) == len(seeds)
    # the recorded video plays back: one frame per step, the camera's size
    import imageio.v2 as imageio

    (video,) = parallel["videos"]
    frames = imageio.mimread(video, memtest=False)
    assert len(frames) == 200 and frames[0].shape == (128, 128, 3) and np.ptp(frames[0]) > 0
