"""Adroit environments (envs/adroit_env.py) and the DAPG expert policies (demos/experts/adroit.py)."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest

from mfp.demos.experts.adroit import AdroitExpert
from mfp.envs.adroit_env import AdroitEnv
from mfp.envs.pointcloud import PointCloudConfig
from mfp.envs.registry import make_env

TASKS = ("door", "hammer", "pen", "relocate")
ACT_DIM = {"door": 28, "hammer": 26, "pen": 24, "relocate": 30}
OBS_DIM = {"door": 39, "hammer": 46, "pen": 45, "relocate": 39}
MIN_GOAL_STEPS = {"door": 25, "hammer": 25, "pen": 20, "relocate": 25}
# What the camera must see at reset: (kind, MuJoCo name, max distance from the nearest cloud point, m).
VISIBLE = {
    "door": [("site", "S_handle", 0.04), ("site", "S_grasp", 0.08)],
    "hammer": [("body", "Object", 0.04), ("body", "nail_board", 0.05), ("site", "S_grasp", 0.08)],
    "pen": [("body", "Object", 0.03), ("body", "target", 0.03), ("site", "S_grasp", 0.08)],
    "relocate": [("body", "Object", 0.05), ("site", "target", 0.04), ("site", "S_grasp", 0.08)],
}


@pytest.fixture(scope="module")
def envs():
    made: dict[str, AdroitEnv] = {}

    def get(task: str) -> AdroitEnv:
        if task not in made:
            made[task] = AdroitEnv(task)
        return made[task]

    yield get
    for env in made.values():
        env.close()


def _position(env: AdroitEnv, kind: str, name: str) -> np.ndarray:
    m, d = env.sim.model, env.sim.data
    return (d.site_xpos[m.site(name).id] if kind == "site" else d.xpos[m.body(name).id]).copy()


@pytest.mark.parametrize("task", TASKS)
def test_spaces_shapes_dtypes(envs, task):
    env = envs(task)
    obs, info = env.reset(seed=0)
    assert set(obs) == {"point_cloud", "agent_pos"}
    assert obs["point_cloud"].shape == (512, 3) and obs["point_cloud"].dtype == np.float32
    nu = env.sim.model.nu
    assert nu == ACT_DIM[task] == env.action_space.shape[0]
    assert obs["agent_pos"].shape == (nu,) and obs["agent_pos"].dtype == np.float32
    assert env.observation_space.contains(obs)
    assert np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)
    assert info["full_state"].shape == (OBS_DIM[task],)
    obs, _, terminated, truncated, info = env.step(np.zeros(nu, dtype=np.float32))
    assert env.observation_space.contains(obs) and not terminated and not truncated
    assert info["full_state"].shape == (OBS_DIM[task],)
    assert env.describe()["success_min_steps"] == MIN_GOAL_STEPS[task]


@pytest.mark.parametrize("task", TASKS)
def test_agent_pos_is_actuated_joint_positions_only(envs, task):
    env = envs(task)
    m, d = env.sim.model, env.sim.data
    qpos_idx = m.jnt_qposadr[m.actuator_trnid[:, 0]]
    obs_a, info_a = env.reset(seed=1)
    np.testing.assert_array_equal(obs_a["agent_pos"], d.qpos[qpos_idx].astype(np.float32))
    # The hand starts in the same pose whatever the object placement: agent_pos must not carry the
    # object/goal coordinates that full_state holds.
    obs_b, info_b = env.reset(seed=2)
    assert not np.allclose(info_a["full_state"], info_b["full_state"], atol=1e-3)
    np.testing.assert_array_equal(obs_a["agent_pos"], obs_b["agent_pos"])
    # It follows the joints as they move.
    rng = np.random.default_rng(0)
    for _ in range(3):
        obs, *_ = env.step(rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))
    np.testing.assert_array_equal(obs["agent_pos"], d.qpos[qpos_idx].astype(np.float32))
    assert np.abs(obs["agent_pos"] - obs_b["agent_pos"]).max() > 1e-3


@pytest.mark.parametrize("task", TASKS)
def test_point_cloud_in_crop_box_and_sees_hand_and_object(envs, task):
    env = envs(task)
    obs, _ = env.reset(seed=3)
    pc = obs["point_cloud"]
    lo, hi = np.array(env.pc_config.crop_low), np.array(env.pc_config.crop_high)
    assert np.all(pc >= lo - 1e-6) and np.all(pc <= hi + 1e-6)
    assert lo[2] > 0.0  # the table top (z = 0) and the floor lie below the box
    assert np.all(pc.std(axis=0) > 0.02), pc.std(axis=0)
    assert len(np.unique(pc, axis=0)) == 512  # enough pixels in the box: no padding by repetition
    for kind, name, max_dist in VISIBLE[task]:
        dist = np.linalg.norm(pc - _position(env, kind, name), axis=1).min()
        assert dist < max_dist, f"{task}: nearest cloud point is {dist:.3f} m from {name}"


@pytest.mark.parametrize("task", TASKS)
def test_seeded_resets_reproduce_and_rerandomise(envs, task):
    env = envs(task)
    actions = np.random.default_rng(0).uniform(-1, 1, (4, env.action_space.shape[0])).astype(np.float32)

    def rollout(seed):
        obs, info = env.reset(seed=seed)
        first = (obs["point_cloud"].copy(), obs["agent_pos"].copy(), info["full_state"].copy())
        for a in actions:
            obs, _, _, _, info = env.step(a)
        return first, (obs["point_cloud"], obs["agent_pos"], info["full_state"], env.sim.data.qpos.copy())

    first_a, last_a = rollout(11)
    first_b, _ = rollout(12)
    first_a2, last_a2 = rollout(11)
    for x, y in zip(first_a + last_a, first_a2 + last_a2):
        np.testing.assert_array_equal(x, y)
    # Another seed: another object/goal placement, seen in the state and in the cloud.
    assert np.abs(first_a[2] - first_b[2]).max() > 1e-3
    assert not np.array_equal(first_a[0], first_b[0])


def _goal_test(env: AdroitEnv, task: str) -> bool:
    """The task's goal test, recomputed from the simulator (gymnasium-robotics' definitions)."""
    m, d = env.sim.model, env.sim.data
    site = lambda name: d.site_xpos[m.site(name).id]  # noqa: E731
    if task == "door":
        return bool(d.qpos[m.jnt_qposadr[m.joint("door_hinge").id]] >= 1.35)
    if task == "hammer":
        return bool(np.linalg.norm(site("S_target") - site("nail_goal")) < 0.01)
    if task == "pen":
        pen_axis, goal_axis = site("object_top") - site("object_bottom"), site("target_top") - site("target_bottom")
        cos = pen_axis @ goal_axis / (np.linalg.norm(pen_axis) * np.linalg.norm(goal_axis))
        return bool(np.linalg.norm(d.xpos[m.body("Object").id] - site("eps_ball")) < 0.075 and cos > 0.95)
    return bool(np.linalg.norm(d.xpos[m.body("Object").id] - site("target")) < 0.1)


def _run_expert(env: AdroitEnv, expert: AdroitExpert, seed: int) -> dict:
    task = env.task.split("/")[1]
    _, info = env.reset(seed=seed)
    raw_max, first_goal_success = 0.0, None
    for t in range(env.max_episode_steps):
        action = expert.act(info["full_state"])
        raw_max = max(raw_max, float(np.abs(action).max()))
        _, _, _, truncated, info = env.step(action)
        assert np.all(np.abs(info["executed_action"]) <= 1.0)
        assert info["goal_achieved"] == _goal_test(env, task), f"{task} step {t}"
        if info["goal_achieved"] and first_goal_success is None:
            first_goal_success = info["success"]
        if info["success"] or truncated:
            break
    return dict(success=info["success"], goal_steps=info["goal_steps"], raw_max=raw_max,
                first_goal_success=first_goal_success)


@pytest.mark.parametrize("task,seed", [("door", 0), ("door", 1), ("hammer", 0), ("hammer", 1), ("relocate", 0)])
def test_expert_succeeds_under_strict_rule(envs, task, seed):
    env = envs(task)
    result = _run_expert(env, AdroitExpert(task), seed)
    assert result["success"], result
    # Strict rule: success only once the goal held on more than MIN_GOAL_STEPS steps.
    assert result["goal_steps"] == MIN_GOAL_STEPS[task] + 1
    assert result["first_goal_success"] is False
    assert result["raw_max"] > 1.0  # the expert's output is not clipped; the env clips it


def test_pen_expert_succeeds_on_some_seed(envs):
    env, expert = envs("pen"), AdroitExpert("pen")
    results = []
    for seed in (0, 2, 3):
        results.append(_run_expert(env, expert, seed))
        if results[-1]["success"]:
            break
    assert results[-1]["success"], results
    assert results[-1]["goal_steps"] == MIN_GOAL_STEPS["pen"] + 1


@pytest.mark.parametrize("task", TASKS)
def test_expert_weights_load(task):
    expert = AdroitExpert(task)
    action = expert.act(np.zeros(OBS_DIM[task], dtype=np.float32))
    assert action.shape == (ACT_DIM[task],) and action.dtype == np.float32 and np.all(np.isfinite(action))
    with pytest.raises(ValueError, match="full_state must have shape"):
        expert.act(np.zeros(OBS_DIM[task] + 1))


def _random_weights(obs_dim: int, act_dim: int, hidden: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = {"W0": (hidden, obs_dim), "b0": (hidden,), "W1": (hidden, hidden), "b1": (hidden,),
              "W2": (act_dim, hidden), "b2": (act_dim,), "in_shift": (obs_dim,), "in_scale": (obs_dim,),
              "out_shift": (act_dim,), "out_scale": (act_dim,), "log_std": (act_dim,)}
    w = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    w["in_scale"] = np.abs(w["in_scale"]) + 0.5
    return w


def test_expert_computes_the_dapg_formula(tmp_path):
    w = _random_weights(39, 28, 8)
    path = tmp_path / "door.npz"
    np.savez(path, **w)
    expert = AdroitExpert("door", path=path)
    o = np.random.default_rng(1).normal(size=39)
    x = (o - w["in_shift"]) / (w["in_scale"] + 1e-8)
    x = np.tanh(w["W0"] @ x + w["b0"])
    x = np.tanh(w["W1"] @ x + w["b1"])
    expected = (w["W2"] @ x + w["b2"]) * w["out_scale"] + w["out_shift"]
    np.testing.assert_allclose(expert.act(o), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(expert.act(o), expert.act(o))  # deterministic: no noise


def test_expert_loader_rejects_misshaped_weights(tmp_path):
    w = _random_weights(46, 26, 32)
    w["W1"] = w["W1"][:, :31]
    path = tmp_path / "bad_hammer.npz"
    np.savez(path, **w)
    with pytest.raises(ValueError, match=r"bad_hammer\.npz.*'W1'"):
        AdroitExpert("hammer", path=path)
    # Weights for another task (door's obs_dim 39 for hammer's 46).
    path = tmp_path / "door_as_hammer.npz"
    np.savez(path, **_random_weights(39, 26, 32))
    with pytest.raises(ValueError, match=r"door_as_hammer\.npz.*'W0'"):
        AdroitExpert("hammer", path=path)


def test_expert_loader_rejects_missing_key_and_corrupt_file(tmp_path):
    w = _random_weights(45, 24, 64)
    del w["out_scale"]
    path = tmp_path / "pen_missing.npz"
    np.savez(path, **w)
    with pytest.raises(ValueError, match=r"pen_missing\.npz.*out_scale"):
        AdroitExpert("pen", path=path)
    path = tmp_path / "pen_corrupt.npz"
    good = (AdroitExpert("pen").path).read_bytes()
    path.write_bytes(good[: len(good) // 2])  # truncated archive
    with pytest.raises(ValueError, match=r"pen_corrupt\.npz"):
        AdroitExpert("pen", path=path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        AdroitExpert("pen", path=tmp_path / "nowhere.npz")


def test_make_env_passes_config_and_camera_size():
    config = PointCloudConfig(num_points=128, crop_low=(-0.5, -0.5, 0.005), crop_high=(0.5, 0.5, 0.6))
    env = make_env("adroit/pen", pc_config=config, camera_size=64, render_rgb=True)
    try:
        assert isinstance(env, AdroitEnv) and env.pc_config == config
        obs, _ = env.reset(seed=0)
        assert obs["point_cloud"].shape == (128, 3)
        assert obs["image"].shape == (64, 64, 3) and obs["image"].dtype == np.uint8
    finally:
        env.close()


def test_num_points_override_keeps_the_task_crop_box():
    from mfp.envs import default_pc_config, make_env

    env = make_env("adroit/pen", num_points=128)
    try:
        assert env.pc_config.num_points == 128
        assert env.pc_config.crop_low == default_pc_config("adroit/pen").crop_low
        obs, _ = env.reset(seed=0)
        assert obs["point_cloud"].shape == (128, 3)
    finally:
        env.close()
