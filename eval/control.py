"""`mfp control` as a function: run a checkpoint (or, in simulation, the scripted expert) on a robot through the
control loop, with safety, recording and a picture of the first point cloud.

The point-cloud preprocessing (crop box, point count) and the normaliser come from the checkpoint: nothing is
copied by hand to the robot side.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .control_loop import ControlConfig, ControlLoop
from .safety import EStop, SafetyConfig

log = logging.getLogger("mfp.control")


def make_actor(ckpt=None, expert_task: str | None = None, device: str = "cpu"):
    """(actor, task, point-cloud settings dict or None, agent_dim or None) from a checkpoint or an expert task."""
    from .rollout import ExpertActor, PolicyRunner

    if (ckpt is None) == (expert_task is None):
        raise ValueError("give either a checkpoint or an expert task")
    if ckpt is not None:
        from mfp.policies.training.checkpoint import load_policy

        policy = load_policy(ckpt, use_ema=True, device=device)
        data = policy.checkpoint_info.get("data", {})
        return PolicyRunner(policy, device), data.get("task"), data.get("point_cloud"), policy.config.agent_dim
    return ExpertActor(expert_task), expert_task, None, None


def make_robot(kind: str, task: str | None, rate_hz: float, seed: int, point_cloud: dict | None, expert: bool,
               topics=None, agent_dim: int | None = None, action_dim: int | None = None, estop=None):
    if kind == "sim":
        from .sim_robot import SimRobot

        if task is None:
            raise ValueError("--robot sim needs a task (the checkpoint's, or --task)")
        return SimRobot(task, rate_hz=rate_hz, seed=seed, point_cloud=point_cloud, publish_full_state=expert)
    if kind == "ros":
        from mfp.envs import PointCloudConfig, default_pc_config

        from .ros_robot import RosRobot
        from .ros_topics import RosTopics

        pc = PointCloudConfig.from_dict(point_cloud) if point_cloud else default_pc_config(task)
        return RosRobot(topics or RosTopics(), pc, agent_dim=agent_dim, action_dim=action_dim, estop=estop)
    raise ValueError(f"unknown robot {kind!r}: choose sim or ros")


def control(ckpt=None, expert_task: str | None = None, task: str | None = None, robot: str = "sim",
            episodes: int = 1, seed: int = 1_000_000, control_cfg: ControlConfig | None = None,
            safety: SafetyConfig | None = None, record=None, picture=None, topics=None, device: str = "cpu",
            action_dim: int | None = None, agent_dim: int | None = None, estop: EStop | None = None) -> list[dict]:
    """Run `episodes` episodes; returns each one's report summary. Ctrl-C is an emergency stop."""
    from mfp.envs import make_env

    from .run_recorder import RunRecorder

    control_cfg, safety = control_cfg or ControlConfig(), safety or SafetyConfig()
    actor, ckpt_task, point_cloud, ckpt_agent_dim = make_actor(ckpt, expert_task, device)
    if task and ckpt_task and task != ckpt_task:
        raise ValueError(f"the checkpoint was trained on {ckpt_task}, not {task}")
    task = task or ckpt_task
    if action_dim is None or agent_dim is None:
        if task is None:
            raise ValueError("cannot tell the action and state sizes: give a task")
        probe = make_env(task)
        action_dim = action_dim or int(probe.action_space.shape[0])
        agent_dim = agent_dim or ckpt_agent_dim or int(probe.observation_space["agent_pos"].shape[0])
        probe.close()
    estop = estop or EStop()
    previous_handler = estop.install_sigint()
    summaries = []
    try:
        for i in range(episodes):
            if estop.is_set():
                break
            bot = make_robot(robot, task, control_cfg.rate_hz, seed + i, point_cloud, expert_task is not None,
                             topics=topics, agent_dim=agent_dim, action_dim=action_dim, estop=estop)
            try:
                recorder = None
                if record:
                    recorder = RunRecorder(record, {"task": task, **bot.describe(), "checkpoint": str(ckpt),
                                                    "point_cloud": point_cloud, "control": vars(control_cfg),
                                                    "safety": safety.to_dict()})
                if picture and i == 0:
                    _save_first_cloud(bot, picture, task, control_cfg.first_obs_timeout_s)
                loop = ControlLoop(actor, bot, control_cfg, safety, estop=estop, recorder=recorder)
                report = loop.run(seed=seed + i)
                summaries.append({"episode": i, "seed": seed + i, **report.summary()})
            finally:
                bot.close()
    finally:
        import signal

        signal.signal(signal.SIGINT, previous_handler)
    return summaries


def _save_first_cloud(robot, path, task, timeout_s: float) -> None:
    """A picture of the cropped cloud the policy will see, before the run starts."""
    import time

    from .plots import save_point_cloud_png

    deadline = time.time() + timeout_s
    obs = robot.observe()
    while obs is None and time.time() < deadline:
        time.sleep(0.01)
        obs = robot.observe()
    if obs is not None:
        save_point_cloud_png(obs.point_cloud, path, title=f"{task}: the cropped cloud the policy sees")
        log.info("point-cloud picture: %s", path)
