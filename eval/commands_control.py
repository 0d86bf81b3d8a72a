"""`mfp control` (a policy on a robot through the rate-controlled loop) and `mfp ros-sim` (a simulated robot
served over ROS topics)."""

from __future__ import annotations


def _safety_flags(p) -> None:
    s = p.add_argument_group("safety (outside the policy)")
    s.add_argument("--action-low", type=float, default=-1.0, help="lower limit of every action dim (default: -1)")
    s.add_argument("--action-high", type=float, default=1.0, help="upper limit of every action dim (default: 1)")
    s.add_argument("--max-delta", type=float, default=None,
                   help="largest change of any action dim per step (default: unlimited)")
    s.add_argument("--max-obs-age", type=float, default=0.25,
                   help="seconds after which an observation is stale and the robot holds (default: 0.25)")
    s.add_argument("--stale-stop", type=float, default=2.0,
                   help="seconds without a fresh observation after which the episode ends, robot holding (default: 2)")
    s.add_argument("--max-steps", type=int, default=200, help="actions per episode (default: 200)")
    s.add_argument("--max-time", type=float, default=60.0, help="seconds per episode (default: 60)")


def control_parser(sub) -> None:
    p = sub.add_parser(
        "control", help="run a policy on a robot (simulated or through ROS) at a fixed rate, with safety",
        description="Run a checkpoint's EMA policy on a robot through the rate-controlled loop: observations are "
                    "aligned and checked for staleness, action chunks are scheduled at absolute times (late ones "
                    "dropped and counted), every action is clipped and rate-limited, a watchdog holds the robot on "
                    "stale data, and Ctrl-C / the e-stop topic stop it. The point-cloud settings come from the "
                    "checkpoint. Every run can be recorded in the demonstration zarr layout.")
    p.add_argument("--ckpt", default=None, help="checkpoint file or run folder")
    p.add_argument("--expert", action="store_true",
                   help="drive with the task's scripted expert instead (simulated robots only: it reads the "
                        "simulator's privileged state, over ROS from the full_state topic)")
    p.add_argument("--task", default=None, help="task (default: the checkpoint's)")
    p.add_argument("--robot", choices=("sim", "ros"), default="sim",
                   help="sim: a MuJoCo task stepping in real time in this process; ros: topics (see --ros-config)")
    p.add_argument("--rate", type=float, default=10.0, help="policy loop rate in Hz, 10-30 typical (default: 10)")
    p.add_argument("--episodes", type=int, default=1, help="episodes to run (default: 1)")
    p.add_argument("--seed", type=int, default=1_000_000,
                   help="simulated episode seed of the first episode (default: 1000000, an evaluation seed)")
    p.add_argument("--blend", choices=("none", "ensemble"), default="none",
                   help="chunk boundaries: none, or temporal ensembling (network every tick) (default: none)")
    p.add_argument("--warmup", type=int, default=5, help="network calls before the clock starts (default: 5)")
    p.add_argument("--record", default=None, help="zarr dataset to record every run into (created or appended)")
    p.add_argument("--picture", default=None, help="PNG of the first cropped cloud, saved before the run")
    p.add_argument("--ros-config", default=None, help="YAML of topic names and calibration (see eval/ros_topics.py)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--out", default=None, help="JSON file for the run reports")
    _safety_flags(p)
    p.set_defaults(run=_control_run)


def _control_run(args) -> int:
    import dataclasses
    import json

    from mfp.demos.atomic import atomic_write_json

    from .control import control
    from .control_loop import ControlConfig
    from .safety import SafetyConfig

    if args.expert == (args.ckpt is not None):
        raise ValueError("give either --ckpt or --expert (with --task)")
    if args.expert and not args.task:
        raise ValueError("--expert needs --task")
    if args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    from .output_paths import FILE, FOLDER, Output, check_outputs

    check_outputs([Output("--out", args.out, FILE, "run reports JSON"),
                   Output("--record", args.record, FOLDER, "zarr dataset"),
                   Output("--picture", args.picture, FILE, "point-cloud picture")])
    topics = None
    if args.robot == "ros":
        from .ros_topics import RosTopics

        topics = RosTopics.from_yaml(args.ros_config) if args.ros_config else RosTopics()
        if args.expert and topics.full_state is None:  # the expert reads the simulator's privileged state
            topics = dataclasses.replace(topics, full_state="/mfp/sim/full_state")
    cfg = ControlConfig(rate_hz=args.rate, blend=args.blend, warmup_calls=args.warmup)
    safety = SafetyConfig(action_low=args.action_low, action_high=args.action_high, max_delta=args.max_delta,
                          max_obs_age_s=args.max_obs_age, stale_stop_s=args.stale_stop, max_steps=args.max_steps,
                          max_time_s=args.max_time)
    reports = control(ckpt=args.ckpt, expert_task=args.task if args.expert else None, task=args.task,
                      robot=args.robot, episodes=args.episodes, seed=args.seed, control_cfg=cfg, safety=safety,
                      record=args.record, picture=args.picture, topics=topics, device=args.device)
    for r in reports:
        print(f"episode {r['episode']} (seed {r['seed']}): {r['stop_reason']}, success {r['success']}, "
              f"{r['steps']} actions, {r['holds']} holds, {r['dropped_actions']} dropped, "
              f"latency p50 {r['latency_ms_p50'] or float('nan'):.1f} ms, {len(r['events'])} safety events")
    if args.out:
        atomic_write_json(args.out, reports)
    elif not args.record:
        print(json.dumps([{k: v for k, v in r.items() if k != "events"} for r in reports], indent=1))
    ok = ("episode_end", "step_limit", "time_limit", "observations_lost")
    return 0 if all(r["stop_reason"] in ok for r in reports) else 1


def ros_sim_parser(sub) -> None:
    p = sub.add_parser(
        "ros-sim", help="serve a simulated robot over ROS topics (for `mfp control --robot ros`)",
        description="A ROS node that runs a MuJoCo task in real time: publishes its point cloud (PointCloud2, base "
                    "frame) and state (JointState), executes actions received as JointState at their header "
                    "stamps, holds on /hold or when actions stop coming, stops on the e-stop topic. Writes a JSON "
                    "summary when the episode ends. Needs a running roscore (ROS_MASTER_URI).")
    p.add_argument("--task", required=True, help="task, e.g. metaworld/reach")
    p.add_argument("--rate", type=float, default=10.0, help="robot step rate in Hz (default: 10)")
    p.add_argument("--seed", type=int, default=1_000_000, help="episode seed (default: 1000000)")
    p.add_argument("--ros-config", default=None, help="YAML of topic names (see eval/ros_topics.py)")
    p.add_argument("--publish-full-state", action="store_true",
                   help="also publish the privileged simulator state (for scripted experts in tests)")
    p.add_argument("--max-steps", type=int, default=200, help="simulator steps in the episode (default: 200)")
    p.add_argument("--result", default=None, help="JSON summary written when the episode ends")
    p.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds (default: 120)")
    p.set_defaults(run=_ros_sim_run)


def _ros_sim_run(args) -> int:
    import dataclasses

    from .output_paths import Output, check_outputs

    check_outputs([Output("--result", args.result, what="episode summary JSON")])
    from .ros_sim_node import serve_sim
    from .ros_topics import RosTopics

    topics = RosTopics.from_yaml(args.ros_config) if args.ros_config else RosTopics()
    if args.publish_full_state and topics.full_state is None:
        topics = dataclasses.replace(topics, full_state="/mfp/sim/full_state")
    summary = serve_sim(args.task, topics, rate_hz=args.rate, seed=args.seed, result_path=args.result,
                        timeout_s=args.timeout, max_steps=args.max_steps)
    print(summary)
    return 0 if not summary["timed_out"] else 1


def bench_control_parser(bench) -> None:
    b = bench.add_parser(
        "control", help="control-loop timing in process and through ROS, e-stop reaction, chunk blending",
        description="Drive the real-time simulated robot with the small-preset MeanFlow policy at each rate: loop "
                    "period error p50/p99, observation -> action latency, dropped actions; the same through ROS "
                    "(a roscore and the simulated-robot node in other processes) with the transport delays ROS "
                    "adds; e-stop to hold; and, given checkpoints, jerk and success with and without blending.")
    b.add_argument("--rates", default="10,30", help="comma-separated loop rates in Hz (default: 10,30)")
    b.add_argument("--steps", type=int, default=150, help="loop steps per timing run (default: 150)")
    b.add_argument("--no-ros", action="store_true", help="skip the runs through ROS")
    b.add_argument("--estop-trials", type=int, default=5, help="e-stop trials, 0 for none (default: 5)")
    b.add_argument("--blend-ckpts", default="",
                   help="comma-separated checkpoints for the blending comparison (default: none)")
    b.add_argument("--blend-rate", type=float, default=20.0, help="loop rate of the blending episodes (default: 20)")
    b.add_argument("--blend-episodes", type=int, default=10, help="episodes per checkpoint and mode (default: 10)")
    b.add_argument("--load-procs", type=int, default=None,
                   help="busy processes for the run under load, 0 for none (default: one per core)")
    b.add_argument("--soak-steps", type=int, default=0,
                   help="also run one long episode of this many steps and report memory (default: 0, off)")
    b.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    b.add_argument("--out", default="runs/bench/control.json", help="JSON output (default: runs/bench/control.json)")
    b.set_defaults(run=_bench_control_run)


def _bench_control_run(args) -> int:
    from .output_paths import Output, check_outputs

    check_outputs([Output("--out", args.out, what="results JSON")])
    from .bench_control import bench_control
    from .commands_train import _csv

    bench_control(rates=tuple(float(r) for r in _csv(args.rates)), steps=args.steps, ros=not args.no_ros,
                  estop_trials=args.estop_trials, blend_ckpts=_csv(args.blend_ckpts), blend_rate=args.blend_rate,
                  blend_episodes=args.blend_episodes, threads=args.threads,
                  load_procs=args.load_procs, soak_steps=args.soak_steps, out=args.out)
    return 0
