"""`mfp control` as a function: run a checkpoint (or, in simulation, the scripted expert) on a robot through the
control loop, with safety, recording and a picture of the first point cloud.

The point-cloud preprocessing (crop box, point count) and the normaliser come from the checkpoint: nothing is
copied by hand to the robot side.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mfp.demos.seeds import EVAL_SEED_START
from mfp.eval.control.loop import ControlConfig, ControlLoop
from mfp.eval.control.safety import EStop, SafetyConfig
from mfp.eval.robots import RobotRequest, make_robot
from mfp.eval.task_check import policy_observation_settings, task_to_run

log = logging.getLogger("mfp.control")


def make_actor(ckpt=None, expert_task: str | None = None, device: str = "cpu", runtime: str = "torch",
               threads: int | None = 1):
    """(actor, task, point-cloud settings dict or None, agent_dim or None) from a checkpoint (or exported policy,
    run by `runtime`: mfp.eval.runtime) or an expert task. `threads`: the network's CPU threads (torch intra-op or
    ONNX Runtime; None: torch's default, one per core). One by default: a loop thread at real-time priority that
    waits on intra-op threads at normal priority waits as long as the other processes keep them off the cores
    (measured: inference p50 33 ms with 2 threads, 8 ms with 1, on the loaded 2-core machine)."""
    from mfp.eval.sim.rollout import ExpertActor, PolicyRunner

    if (ckpt is None) == (expert_task is None):
        raise ValueError("give either a checkpoint or an expert task")
    if ckpt is not None:
        from mfp.eval.runtime import load_for_runtime

        if threads is not None and runtime == "torch":
            import torch

            torch.set_num_threads(threads)
        policy = load_for_runtime(ckpt, runtime, use_ema=True, device=device, threads=threads or 1, echo=log.info)
        trained = policy_observation_settings(policy)
        return PolicyRunner(policy, device), trained["task"], trained["point_cloud"], policy.config.agent_dim
    return ExpertActor(expert_task), expert_task, None, None


def control(ckpt=None, expert_task: str | None = None, task: str | None = None, robot: str = "sim",
            episodes: int = 1, seed: int = EVAL_SEED_START, control_cfg: ControlConfig | None = None,
            safety: SafetyConfig | None = None, record=None, picture=None, topics=None, device: str = "cpu",
            action_dim: int | None = None, agent_dim: int | None = None, estop: EStop | None = None,
            runtime: str = "torch", threads: int | None = 1) -> list[dict]:
    """Run `episodes` episodes; returns each one's report summary. Ctrl-C is an emergency stop. `runtime`: what
    runs the network (torch, or onnx: an exported .onnx file or the checkpoint exported in memory); `threads`: its
    CPU threads (make_actor)."""
    from mfp.envs import make_env
    from mfp.eval.control.recorder import RunRecorder

    control_cfg, safety = control_cfg or ControlConfig(), safety or SafetyConfig()
    actor, ckpt_task, point_cloud, ckpt_agent_dim = make_actor(ckpt, expert_task, device, runtime, threads)
    task = task_to_run(task, ckpt_task)
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
            bot = make_robot(robot, RobotRequest(task, control_cfg.rate_hz, seed + i, point_cloud,
                                                 expert=expert_task is not None, topics=topics, agent_dim=agent_dim,
                                                 action_dim=action_dim, estop=estop, record=record))
            try:
                recorder = None
                if record:
                    recorder = RunRecorder(record, {"task": task, **bot.describe(), "checkpoint": str(ckpt),
                                                    "runtime": runtime, "point_cloud": point_cloud,
                                                    "control": vars(control_cfg),
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

    from mfp.eval.sim.plots import save_point_cloud_png

    deadline = time.time() + timeout_s
    obs = robot.observe()
    while obs is None and time.time() < deadline:
        time.sleep(0.01)
        obs = robot.observe()
    if obs is not None:
        save_point_cloud_png(obs.point_cloud, path, title=f"{task}: the cropped cloud the policy sees")
        log.info("point-cloud picture: %s", path)
