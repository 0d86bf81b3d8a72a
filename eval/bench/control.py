"""`mfp bench control`: the control loop's timing in process and through ROS, the e-stop reaction, and the effect
of chunk blending (jerk of the commanded actions, task success).

- Loop timing: the small-preset MeanFlow policy (random weights: the compute of a trained one) drives the
  real-time simulated robot at each rate; period error |tick start - target| p50/p99, observation -> action
  latency (observation read at the tick -> action sent: preprocessing, network, scheduling, sending) p50/p99,
  the observation's age at the tick (the simulated robot publishes right after each step, so up to a period),
  dropped actions, holds.
- ROS: the same policy behind the ROS adapter against the simulated-robot node (a second process, a real
  roscore); what ROS adds is the transport delay of the observation (cloud stamp -> arrival at the policy node)
  plus that of the action (publish -> arrival at the robot node), p50/p99.
- ROS 2: the same through the ROS 2 adapter and `mfp ros-sim --ros 2` over DDS, in a domain of its own.
  Each run through ROS ends with an e-stop after its last tick: trigger -> the robot node has it and holds.
- E-stop: trigger at a random moment mid-episode; time until the robot is told to hold (in process).
- Timing settings (issue 15): each in-process run twice in the same benchmark, with the loop's timing settings
  (real-time priority, fine wait, frozen collector, short switch interval: ControlConfig's defaults) and
  without them (`UNTUNED`, the loop before them): mode `in-process` vs `in-process untuned`. Overruns (ticks a
  whole period late), garbage collections during the ticks and the scheduling the loop thread got are reported.
- Load: the in-process run again with the CPU saturated by busy processes (one per core): deadlines kept, or
  holds and drops reported.
- Soak: thousands of loop steps in one episode; resident memory at the start and the end.
- Blending: given checkpoints, episodes with blend none vs ensemble at one rate: jerk (mean |third difference|
  of the commanded actions) and success.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from mfp.demos.seeds import EVAL_SEED_START
from mfp.envs import EPISODE_STEPS
from mfp.eval.bench.save import save_and_print
from mfp.eval.control.loop import UNTUNED, ControlConfig, ControlLoop
from mfp.eval.control.safety import EStop, SafetyConfig
from mfp.eval.stats import percentile

TASK = "metaworld/reach"


def _policy_runner(task: str = TASK):
    from mfp.envs import make_env
    from mfp.eval.bench.untrained import untrained_policy
    from mfp.eval.sim.rollout import PolicyRunner

    env = make_env(task)
    obs, _ = env.reset(seed=0)
    env.close()
    policy = untrained_policy("meanflow", "small", len(obs["point_cloud"]), len(obs["agent_pos"]),
                              obs["point_cloud"], "cpu")
    return PolicyRunner(policy)


def _loop_figures(report) -> dict:
    s = report.summary()
    return {k: s[k] for k in ("steps", "holds", "dropped_actions", "period_error_ms_p50", "period_error_ms_p99",
                              "latency_ms_p50", "latency_ms_p99", "obs_age_ms_p50", "obs_age_ms_p99",
                              "inference_ms_p50", "inference_ms_p99", "encode_ms_p50", "overruns", "gc_collections",
                              "gc_pause_ms_max", "realtime")}


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def in_process(rate: float, steps: int, load_procs: int = 0, rss_every: int = 0, untuned: bool = False) -> dict:
    """The loop on the simulated robot; `load_procs` busy processes run meanwhile; RSS sampled every
    `rss_every` steps (0: start and end only); `untuned`: without the loop's timing settings (UNTUNED)."""
    from mfp.eval.robots.sim import SimRobot

    runner = _policy_runner()
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(load_procs)]
    robot = SimRobot(TASK, rate_hz=rate, seed=EVAL_SEED_START, stop_on_success=False, max_episode_steps=steps + 50)
    rss = [_rss_mb()]
    try:
        cfg = ControlConfig(rate_hz=rate, **(UNTUNED if untuned else {}))
        loop = ControlLoop(runner, robot, cfg, SafetyConfig(max_steps=steps, max_time_s=steps / rate + 30))
        if rss_every:
            sampler_stop = threading.Event()

            def sample():
                while not sampler_stop.wait(rss_every / rate):
                    rss.append(_rss_mb())
            threading.Thread(target=sample, daemon=True).start()
        report = loop.run()
        if rss_every:
            sampler_stop.set()
    finally:
        robot.close()
        for h in hogs:
            h.kill()
            h.wait()
    rss.append(_rss_mb())
    out = _loop_figures(report)
    out["stop_reason"] = report.stop_reason
    if rss_every:
        out.update(rss_mb_start=rss[0], rss_mb_after_warmup=rss[1] if len(rss) > 2 else rss[0],
                   rss_mb_end=rss[-1], rss_mb_max=max(rss))
    return out


def estop_reaction(rate: float, trials: int) -> dict:
    from mfp.eval.robots.sim import SimRobot

    runner, delays = _policy_runner(), []
    for i in range(trials):
        estop = EStop()
        robot = SimRobot(TASK, rate_hz=rate, seed=EVAL_SEED_START + i, stop_on_success=False)
        stopped_at = {}
        original_stop = robot.stop

        def stop_and_time(robot=robot, original_stop=original_stop, stopped_at=stopped_at):
            stopped_at.setdefault("t", time.time())
            original_stop()

        robot.stop = stop_and_time
        threading.Timer(0.5 + random.random() * 1.0, estop.trigger, args=("bench",)).start()
        try:
            ControlLoop(runner, robot, ControlConfig(rate_hz=rate, warmup_calls=1), estop=estop).run()
        finally:
            robot.close()
        delays.append(1000 * (stopped_at["t"] - estop.t))
    return {"trials": trials, "estop_to_hold_ms_p50": percentile(delays, 50), "estop_to_hold_ms_max": float(max(delays)),
            "period_ms": 1000 / rate}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RosMaster:
    """A roscore on a free port for this process and its children (rospy binds a process to one master, so one
    master serves every ROS run of a benchmark)."""

    def __enter__(self):
        port = _free_port()
        self.home = tempfile.mkdtemp(prefix="mfp-ros-")
        self.env = {**os.environ, "ROS_MASTER_URI": f"http://127.0.0.1:{port}", "ROS_HOSTNAME": "127.0.0.1",
                    "ROS_HOME": self.home}
        os.environ.update({k: self.env[k] for k in ("ROS_MASTER_URI", "ROS_HOSTNAME", "ROS_HOME")})
        self.core = subprocess.Popen(["roscore", "-p", str(port)], env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while subprocess.run(["rosnode", "list"], env=self.env, capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError("roscore did not come up")
            time.sleep(0.3)
        return self

    def __exit__(self, *exc):
        os.killpg(self.core.pid, 2)
        self.core.wait(timeout=20)
        shutil.rmtree(self.home, ignore_errors=True)


class Ros2Domain:
    """A DDS domain of its own (ROS_DOMAIN_ID, from this process's id) for the ROS 2 runs, and a folder."""

    def __enter__(self):
        self.home = tempfile.mkdtemp(prefix="mfp-ros2-")
        self.domain = 1 + os.getpid() % 100
        self.env = {**os.environ, "ROS_DOMAIN_ID": str(self.domain)}
        return self

    def __exit__(self, *exc):
        shutil.rmtree(self.home, ignore_errors=True)


def _ros_robot(version: int, side):
    from mfp.envs import default_pc_config
    from mfp.eval.robots.ros_topics import RosTopics

    if version == 2:
        from mfp.eval.robots.ros2 import Ros2Robot

        return Ros2Robot(RosTopics(domain_id=side.domain), default_pc_config(TASK), agent_dim=9, action_dim=4,
                         node_name="mfp_bench")
    from mfp.eval.robots.ros import RosRobot

    return RosRobot(RosTopics(), default_pc_config(TASK), agent_dim=9, action_dim=4, node_name="mfp_bench")


class _EStopAfter:
    """A robot whose e-stop is triggered right after the loop's n-th tick (each tick sends or holds once): the
    end of a timing run through ROS."""

    def __init__(self, robot, n: int, estop: EStop):
        self.robot, self.n, self.estop, self.ticks = robot, n, estop, 0

    def __getattr__(self, name):
        return getattr(self.robot, name)

    def _tick(self) -> None:
        self.ticks += 1
        if self.ticks == self.n:
            self.estop.trigger("bench: end of the timing run")

    def send(self, action, t_exec: float) -> None:
        self.robot.send(action, t_exec)
        self._tick()

    def hold(self) -> None:
        self.robot.hold()
        self._tick()


def through_ros(side, rate: float, steps: int, version: int = 1) -> dict:
    """The same loop with the robot behind ROS topics (the sim node in another process): ROS 1 (`side` a
    RosMaster) or ROS 2 over DDS (`side` a Ros2Domain). The run ends with an e-stop after `steps` ticks: its
    trigger -> the robot node receiving it (and holding) is `estop_to_robot_ms`, one trial per run."""
    result = Path(side.home) / f"sim-ros{version}-{rate:g}.json"
    sim = subprocess.Popen([sys.executable, "-m", "mfp.eval.cli", "ros-sim", "--ros", str(version), "--task", TASK,
                            "--rate", str(rate), "--max-steps", str(steps + 50), "--result", str(result),
                            "--timeout", str(steps / rate + 60)], env=side.env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        runner = _policy_runner()
        estop = EStop()
        robot = _ros_robot(version, side)
        try:
            report = ControlLoop(runner, _EStopAfter(robot, steps, estop),
                                 ControlConfig(rate_hz=rate, first_obs_timeout_s=60),
                                 SafetyConfig(max_steps=steps + 1, max_time_s=steps / rate + 30), estop=estop).run()
            transport = list(robot.transport_ms)
        finally:
            robot.close()
        sim.wait(timeout=steps / rate + 90)
        sim_summary = json.loads(result.read_text())
        out = _loop_figures(report)
        out.update(cloud_transport_ms_p50=percentile(transport, 50), cloud_transport_ms_p99=percentile(transport, 99),
                   action_transport_ms_p50=sim_summary.get("action_transport_ms_p50"),
                   action_transport_ms_p99=sim_summary.get("action_transport_ms_p99"))
        if out["cloud_transport_ms_p50"] is not None and out["action_transport_ms_p50"] is not None:
            out["ros_added_ms_p50"] = out["cloud_transport_ms_p50"] + out["action_transport_ms_p50"]
        received = sim_summary.get("estop_received_t")
        out["estop_to_robot_ms"] = None if received is None or estop.t is None else 1000 * (received - estop.t)
        return out
    finally:
        if sim.poll() is None:
            sim.kill()


def jerk(actions: np.ndarray) -> float:
    """Mean absolute third difference of a (T, d) action sequence."""
    return float(np.abs(np.diff(actions, n=3, axis=0)).mean()) if len(actions) > 3 else float("nan")


def blending(ckpts: list[str], rate: float, episodes: int) -> list[dict]:
    from mfp.eval.control.session import make_actor
    from mfp.eval.robots.sim import SimRobot

    rows = []
    for ckpt in ckpts:
        actor, task, point_cloud, _ = make_actor(ckpt)
        for blend in ("none", "ensemble"):
            jerks, successes = [], []
            for i in range(episodes):
                seed = EVAL_SEED_START + i
                robot = SimRobot(task, rate_hz=rate, seed=seed, point_cloud=point_cloud)
                try:
                    ControlLoop(actor, robot, ControlConfig(rate_hz=rate, blend=blend, warmup_calls=2),
                                SafetyConfig(max_time_s=EPISODE_STEPS / rate + 30)).run(seed=seed)
                    robot.wait_done(5)
                finally:
                    robot.close()
                commanded = [a for a in robot.applied]
                jerks.append(jerk(np.asarray(commanded)))
                successes.append(bool(robot.success))
            rows.append({"checkpoint": ckpt, "task": task, "blend": blend, "episodes": episodes, "rate_hz": rate,
                         "jerk_mean": float(np.nanmean(jerks)), "success_rate": float(np.mean(successes))})
    return rows


def format_table(result: dict) -> str:
    lines = ["mode                  rate  period err p50/p99 ms  obs->action p50/p99 ms  inference p50 ms  "
             "encode p50 ms  dropped  holds  overruns  ROS added p50 ms  e-stop->robot ms  loop thread"]
    for r in result["loop"]:
        def f(v):
            return "  n/a" if v is None else f"{v:5.2f}"
        lines.append(f"{r['mode']:<20} {r['rate_hz']:5.0f}  {f(r.get('period_error_ms_p50'))} / "
                     f"{f(r.get('period_error_ms_p99'))}        {f(r.get('latency_ms_p50'))} / "
                     f"{f(r.get('latency_ms_p99'))}          {f(r.get('inference_ms_p50'))}          "
                     f"{f(r.get('encode_ms_p50'))}     "
                     f"{r.get('dropped_actions', 'n/a'):>5}  {r.get('holds', 'n/a'):>5}  {r.get('overruns', 'n/a'):>8}  "
                     f"{f(r.get('ros_added_ms_p50'))}             {f(r.get('estop_to_robot_ms'))}             "
                     f"{r.get('realtime', '')}{'  ' + r['skipped'] if 'skipped' in r else ''}")
    gc_runs = [r for r in result["loop"] if r.get("gc_collections")]
    if gc_runs:
        lines.append("garbage collections during the ticks: " + ", ".join(
            f"{r['mode']} {r['rate_hz']:.0f} Hz {r['gc_collections']} (max {r['gc_pause_ms_max']:.2f} ms)"
            for r in gc_runs))
    for r in result["loop"]:
        if "rss_mb_end" in r:
            lines.append(f"soak {r['steps']} steps at {r['rate_hz']:.0f} Hz: RSS {r['rss_mb_start']:.1f} MB at start, "
                         f"{r['rss_mb_after_warmup']:.1f} after warm-up, {r['rss_mb_end']:.1f} at the end "
                         f"(max {r['rss_mb_max']:.1f})")
    load = result.get("load_average_1min")
    if load:
        lines.append(f"load average (1 min) {load['start']} at the start, {load['end']} at the end; nice "
                     f"{result.get('nice')}; tuned = {result.get('timing')}")
    e = result.get("estop")
    if e:
        lines.append(f"e-stop -> hold: p50 {e['estop_to_hold_ms_p50']:.2f} ms, max {e['estop_to_hold_ms_max']:.2f} ms "
                     f"(period {e['period_ms']:.1f} ms, {e['trials']} trials)")
    for b in result.get("blending", []):
        lines.append(f"blend {b['blend']:<8} {b['task']:<24} jerk {b['jerk_mean']:.4f}  success "
                     f"{b['success_rate']:.0%} ({b['episodes']} episodes at {b['rate_hz']:.0f} Hz)")
    return "\n".join(lines)


def _timing_defaults() -> dict:
    """The loop's timing settings the tuned runs use (ControlConfig's defaults)."""
    cfg = ControlConfig()
    return {k: getattr(cfg, k) for k in UNTUNED}


def bench_control(rates=(10.0, 30.0), steps: int = 150, ros: bool = True, estop_trials: int = 5,
                  blend_ckpts=(), blend_rate: float = 20.0, blend_episodes: int = 10, threads: int | None = 1,
                  load_procs: int | None = None, soak_steps: int = 0, out=None) -> dict:
    import torch

    from mfp.demos.provenance import provenance

    if threads:
        torch.set_num_threads(threads)
    load_start = round(os.getloadavg()[0], 2)
    loop = []
    ros1 = ros and shutil.which("roscore") is not None
    with (RosMaster() if ros1 else contextlib.nullcontext()) as master, \
            (Ros2Domain() if ros else contextlib.nullcontext()) as dds:
        for rate in rates:
            loop.append({"mode": "in-process untuned", "rate_hz": rate, **in_process(rate, steps, untuned=True)})
            loop.append({"mode": "in-process", "rate_hz": rate, **in_process(rate, steps)})
            if ros1:
                loop.append({"mode": "ROS", "rate_hz": rate, **through_ros(master, rate, steps)})
            if ros:
                loop.append({"mode": "ROS 2", "rate_hz": rate, **through_ros(dds, rate, steps, version=2)})
    n_load = (os.cpu_count() or 1) if load_procs is None else load_procs
    if n_load:
        loop.append({"mode": f"loaded x{n_load} untuned", "rate_hz": max(rates),
                     **in_process(max(rates), steps, n_load, untuned=True)})
        loop.append({"mode": f"loaded x{n_load}", "rate_hz": max(rates), **in_process(max(rates), steps, n_load)})
    if soak_steps:
        loop.append({"mode": "soak", "rate_hz": max(rates),
                     **in_process(max(rates), soak_steps, rss_every=max(1, soak_steps // 20))})
    result = {"loop": loop, "estop": estop_reaction(max(rates), estop_trials) if estop_trials else None,
              "blending": blending(list(blend_ckpts), blend_rate, blend_episodes) if blend_ckpts else [],
              "steps_per_run": steps, "policy": "meanflow small preset (random weights), batch 1, CPU",
              "torch_threads": threads, "untuned": UNTUNED, "timing": _timing_defaults(), "nice": os.nice(0),
              "load_average_1min": {"start": load_start, "end": round(os.getloadavg()[0], 2)},  # other jobs
              "provenance": provenance()}
    return save_and_print(result, out, format_table(result))
