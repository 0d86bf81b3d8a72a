"""`mfp control`: a policy (or, in simulation, the scripted expert) on a robot through the rate-controlled loop."""

from __future__ import annotations

from mfp.demos.seeds import EVAL_SEED_START
from mfp.envs import EPISODE_STEPS
from mfp.eval.robots import robot_names

from .args import add_runtime_flag


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
    s.add_argument("--max-steps", type=int, default=EPISODE_STEPS,
                   help=f"actions per episode (default: {EPISODE_STEPS})")
    s.add_argument("--max-time", type=float, default=60.0, help="seconds per episode (default: 60)")


def _timing_flags(p) -> None:
    t = p.add_argument_group("loop timing (docs/control.md, eval/control/timing.py)")
    t.add_argument("--rt-priority", type=int, default=10,
                   help="SCHED_FIFO priority (1-99) of the loop thread during the ticks, 0 for the normal scheduler; "
                        "needs root or CAP_SYS_NICE, else a warning and normal priority (default: 10)")
    t.add_argument("--fine-wait-ms", type=float, default=1.0,
                   help="wait the last this many ms before each tick in 0.1 ms slices, 0 for one wait (default: 1)")
    t.add_argument("--gc", dest="gc_mode", choices=("normal", "freeze", "off"), default="freeze",
                   help="garbage collector during the ticks: normal; freeze (what exists before the loop is never "
                        "walked: collections stay short); off (disabled, one collection after) (default: freeze)")
    t.add_argument("--switch-interval-ms", type=float, default=0.5,
                   help="Python's thread switch interval during the ticks, 0 to leave it (5 ms) (default: 0.5)")


def control_parser(sub) -> None:
    p = sub.add_parser(
        "control", help="run a policy on a robot (simulated or through ROS) at a fixed rate, with safety",
        description="Run a checkpoint's EMA policy on a robot through the rate-controlled loop: observations are "
                    "aligned and checked for staleness, action chunks are scheduled at absolute times (late ones "
                    "dropped and counted), every action is clipped and rate-limited, a watchdog holds the robot on "
                    "stale data, and Ctrl-C / the e-stop topic stop it. The point-cloud settings come from the "
                    "checkpoint. Every run can be recorded in the demonstration zarr layout.")
    p.add_argument("--ckpt", default=None,
                   help="checkpoint file or run folder; with --runtime onnx also an exported .onnx file")
    p.add_argument("--expert", action="store_true",
                   help="drive with the task's scripted expert instead (simulated robots only: it reads the "
                        "simulator's privileged state, over ROS from the full_state topic)")
    p.add_argument("--task", default=None, help="task (default: the checkpoint's)")
    p.add_argument("--robot", choices=robot_names(), default="sim",
                   help="sim: a MuJoCo task stepping in real time in this process; ros / ros2: ROS 1 / ROS 2 "
                        "topics (see --ros-config)")
    p.add_argument("--rate", type=float, default=10.0, help="policy loop rate in Hz, 10-30 typical (default: 10)")
    p.add_argument("--episodes", type=int, default=1, help="episodes to run (default: 1)")
    p.add_argument("--seed", type=int, default=EVAL_SEED_START,
                   help=f"simulated episode seed of the first episode (default: {EVAL_SEED_START}, an evaluation seed)")
    p.add_argument("--blend", choices=("none", "ensemble"), default="none",
                   help="chunk boundaries: none, or temporal ensembling (network every tick) (default: none)")
    p.add_argument("--warmup", type=int, default=5, help="network calls before the clock starts (default: 5)")
    p.add_argument("--record", default=None, help="zarr dataset to record every run into (created or appended)")
    p.add_argument("--picture", default=None, help="PNG of the first cropped cloud, saved before the run")
    p.add_argument("--ros-config", default=None, help="YAML of topic names and calibration (see eval/robots/ros_topics.py)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads of the network (torch intra-op or ONNX Runtime); more than 1 makes the "
                        "real-time loop thread wait on threads at normal priority (docs/control.md) (default: 1)")
    add_runtime_flag(p)
    p.add_argument("--out", default=None, help="JSON file for the run reports")
    _safety_flags(p)
    _timing_flags(p)
    p.set_defaults(run=_control_run)


def _control_run(args) -> int:
    import json

    from mfp.demos.atomic import atomic_write_json
    from mfp.eval.control.loop import ControlConfig
    from mfp.eval.control.safety import SafetyConfig
    from mfp.eval.control.session import control

    if args.expert == (args.ckpt is not None):
        raise ValueError("give either --ckpt or --expert (with --task)")
    if args.expert and not args.task:
        raise ValueError("--expert needs --task")
    if args.expert and args.runtime != "torch":
        raise ValueError("--runtime applies to a trained policy (--ckpt), not to the expert")
    if args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    from .output_paths import FILE, FOLDER, Output, check_outputs

    check_outputs([Output("--out", args.out, FILE, "run reports JSON"),
                   Output("--record", args.record, FOLDER, "zarr dataset"),
                   Output("--picture", args.picture, FILE, "point-cloud picture")])
    topics = None
    if args.robot in ("ros", "ros2"):
        from mfp.eval.robots.ros_topics import RosTopics

        topics = RosTopics.from_yaml(args.ros_config) if args.ros_config else RosTopics()
        if args.expert:  # the expert reads the simulator's privileged state
            topics = topics.with_full_state()
    cfg = ControlConfig(rate_hz=args.rate, blend=args.blend, warmup_calls=args.warmup, gc_mode=args.gc_mode,
                        fine_wait_ms=args.fine_wait_ms, switch_interval_ms=args.switch_interval_ms,
                        rt_priority=args.rt_priority)
    safety = SafetyConfig(action_low=args.action_low, action_high=args.action_high, max_delta=args.max_delta,
                          max_obs_age_s=args.max_obs_age, stale_stop_s=args.stale_stop, max_steps=args.max_steps,
                          max_time_s=args.max_time)
    reports = control(ckpt=args.ckpt, expert_task=args.task if args.expert else None, task=args.task,
                      robot=args.robot, episodes=args.episodes, seed=args.seed, control_cfg=cfg, safety=safety,
                      record=args.record, picture=args.picture, topics=topics, device=args.device,
                      runtime=args.runtime, threads=args.threads)
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
