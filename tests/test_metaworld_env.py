"""Meta-World point-cloud environments: spaces, seeding, episode rules, privileged state kept out, the success flag
against the simulator's own state."""

import numpy as np
import pytest

from mfp.demos.experts import make_expert
from mfp.envs import make_env, task_names
from mfp.eval.sim.evaluator import evaluate

# One task from each difficulty group, plus peg-insert-side (its expert class has an odd name).
SAMPLE = ["metaworld/reach", "metaworld/drawer-open", "metaworld/hammer", "metaworld/pick-place",
          "metaworld/stick-pull", "metaworld/peg-insert-side"]


def test_all_fifty_metaworld_tasks_and_four_adroit_tasks_are_named():
    names = task_names()
    assert sum(n.startswith("metaworld/") for n in names) == 50
    assert [n for n in names if n.startswith("adroit/")] == ["adroit/door", "adroit/hammer", "adroit/pen", "adroit/relocate"]


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError) as e:
        make_env("metaworld/pick-plce")
    assert "metaworld/pick-place" in str(e.value) and "adroit/door" in str(e.value)


@pytest.mark.parametrize("task", SAMPLE)
def test_observation_space_and_dtypes(task):
    env = make_env(task)
    try:
        obs, info = env.reset(seed=0)
        assert set(obs) == {"point_cloud", "agent_pos"}
        assert obs["point_cloud"].shape == (512, 3) and obs["point_cloud"].dtype == np.float32
        assert obs["agent_pos"].shape == (9,) and obs["agent_pos"].dtype == np.float32
        assert env.observation_space.contains(obs)
        assert info["full_state"].shape == (39,)
        cfg = env.pc_config
        assert np.all(obs["point_cloud"] >= np.array(cfg.crop_low) - 1e-6)
        assert np.all(obs["point_cloud"] <= np.array(cfg.crop_high) + 1e-6)
        assert np.ptp(obs["point_cloud"], axis=0).min() > 0.1  # a real scene, not a collapsed cloud
        obs2, *_ = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs2)
    finally:
        env.close()


def test_agent_pos_is_robot_state_not_object_state():
    env = make_env("metaworld/pick-place")
    try:
        obs, info = env.reset(seed=5)
        full = info["full_state"]
        np.testing.assert_allclose(obs["agent_pos"][:3], full[:3], atol=1e-5)  # end-effector = full_state[0:3]
        obj, goal = full[4:7], full[36:39]
        for part in obs["agent_pos"].reshape(3, 3):  # end-effector, right pad, left pad: none is the object/goal
            assert np.linalg.norm(part - obj) > 1e-3 and np.linalg.norm(part - goal) > 1e-3
        # Moving the object by re-seeding leaves agent_pos at the same start pose.
        obs_b, info_b = env.reset(seed=6)
        assert not np.allclose(info_b["full_state"][4:7], obj)
        np.testing.assert_allclose(obs_b["agent_pos"], obs["agent_pos"], atol=1e-3)
    finally:
        env.close()


def test_seeded_resets_rerandomise_and_reproduce():
    env = make_env("metaworld/pick-place")
    try:
        rng = np.random.default_rng(0)
        actions = rng.uniform(-1, 1, (5, 4)).astype(np.float32)

        def rollout(seed):
            obs, info = env.reset(seed=seed)
            states, clouds = [info["full_state"]], [obs["point_cloud"]]
            for a in actions:
                obs, _, _, _, info = env.step(a)
                states.append(info["full_state"])
                clouds.append(obs["point_cloud"])
            return np.stack(states), np.stack(clouds)

        s1, c1 = rollout(11)
        s2, c2 = rollout(12)
        s1b, c1b = rollout(11)
        np.testing.assert_array_equal(s1, s1b)
        np.testing.assert_array_equal(c1, c1b)
        assert not np.allclose(s1[0, 4:7], s2[0, 4:7])  # object placement differs
        assert not np.allclose(s1[0, 36:39], s2[0, 36:39])  # goal differs
        assert not np.allclose(c1[0], c2[0])
    finally:
        env.close()


def test_episode_is_200_steps_and_actions_are_clipped():
    env = make_env("metaworld/reach")
    try:
        env.reset(seed=0)
        for step in range(200):
            _, _, terminated, truncated, info = env.step(np.array([5.0, -5.0, 0.2, 3.0], np.float32))
            assert not terminated
            assert truncated == (step == 199)
        np.testing.assert_array_equal(info["executed_action"], np.array([1.0, -1.0, 0.2, 1.0], np.float32))
        with pytest.raises(ValueError, match="shape"):
            env.step(np.zeros(3, np.float32))
        with pytest.raises(ValueError, match="non-finite"):
            env.step(np.array([np.nan, 0, 0, 0], np.float32))
    finally:
        env.close()


# Meta-World v3's success rules, transcribed from metaworld 3.1.1's source
# (.venv/lib/python3.11/site-packages/metaworld/):
#   drawer-open  envs/sawyer_drawer_open_v3.py, evaluate_state: success = handle_error <= 0.03, handle_error =
#                ||handle - target||; the handle is the drawer_link body's position + (0, -0.16, 0)
#                (_get_pos_objects); the target is the "goal" site, placed 0.2 m (maxDist) out (reset_model).
#   reach        envs/sawyer_reach_v3.py, evaluate_state: success = reach_dist <= 0.05, reach_dist =
#                ||tcp_center - target|| (compute_reward); tcp_center is the midpoint of the rightEndEffector and
#                leftEndEffector sites (sawyer_xyz_env.py); the target is the "goal" site.
# The oracle reads positions from the MuJoCo data (bodies and sites), never the env's flag or its _target_pos.
SUCCESS_RULES = {
    "metaworld/drawer-open": (lambda d: d.body("drawer_link").xpos + np.array([0.0, -0.16, 0.0]), 0.03),
    "metaworld/reach": (lambda d: (d.site("rightEndEffector").xpos + d.site("leftEndEffector").xpos) / 2, 0.05),
}


def _distance_to_goal(env, task: str) -> float:
    point_of, _ = SUCCESS_RULES[task]
    data = env.sim.data
    return float(np.linalg.norm(point_of(data) - data.site("goal").xpos))


@pytest.mark.parametrize("task", list(SUCCESS_RULES))
def test_success_flag_agrees_with_the_simulator_state(task):
    """Along the expert's episode (fails, then succeeds) and an arm that never moves (fails throughout), the env's
    info["success"] is the published rule applied to the simulator's positions at every step; the evaluator's
    record of the expert on that seed starts succeeding at the step the oracle does."""
    _, radius = SUCCESS_RULES[task]
    env, expert, seed = make_env(task), make_expert(task), 0
    try:
        runs = {}
        for actor in ("expert", "still"):
            _, info = env.reset(seed=seed)
            dists = []
            for step in range(1, env.max_episode_steps + 1):
                action = expert.act(info["full_state"]) if actor == "expert" else np.zeros(4, np.float32)
                _, _, _, truncated, info = env.step(action)
                dists.append(_distance_to_goal(env, task))
                assert info["success"] == (dists[-1] <= radius), (actor, step, dists[-1])
                # the goal the observation carries is where the simulator has it
                np.testing.assert_allclose(info["full_state"][36:39], env.sim.data.site("goal").xpos, atol=1e-5)
            assert truncated
            runs[actor] = np.array(dists)
    finally:
        env.close()
    expert_d, still_d = runs["expert"], runs["still"]
    assert expert_d[0] > radius and expert_d.min() <= radius        # both outcomes of the rule were compared
    assert ((expert_d > radius) & (expert_d <= 2 * radius)).any()   # ... and distances just outside the radius
    assert still_d.min() > radius                                   # the still arm never succeeds
    first = int(np.argmax(expert_d <= radius)) + 1
    (record,) = evaluate(None, task, [seed], progress=False)["episodes"]
    assert record["success"] is True and record["first_success_step"] == first
