"""`mfp bench control`: control-loop timing in process and through ROS, e-stop reaction, chunk blending."""

from __future__ import annotations

from .args import check_results_out, csv_list


def bench_control_parser(bench) -> None:
    b = bench.add_parser(
        "control", help="control-loop timing in process and through ROS, e-stop reaction, chunk blending",
        description="Drive the real-time simulated robot with the small-preset MeanFlow policy at each rate: loop "
                    "period error p50/p99, observation -> action latency, dropped actions, overruns, each in-process run with "
                    "the loop's timing settings (ControlConfig's defaults) and without them (untuned); the same "
                    "through ROS 1 "
                    "(a roscore and the simulated-robot node in other processes) and ROS 2 (DDS) with the "
                    "transport delays each adds; e-stop to hold; and, given checkpoints, jerk and success with and "
                    "without blending.")
    b.add_argument("--rates", default="10,30", help="comma-separated loop rates in Hz (default: 10,30)")
    b.add_argument("--steps", type=int, default=150, help="loop steps per timing run (default: 150)")
    b.add_argument("--no-ros", action="store_true", help="skip the runs through ROS 1 and ROS 2")
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
    check_results_out(args)
    from mfp.eval.bench.control import bench_control

    bench_control(rates=tuple(float(r) for r in csv_list(args.rates)), steps=args.steps, ros=not args.no_ros,
                  estop_trials=args.estop_trials, blend_ckpts=csv_list(args.blend_ckpts), blend_rate=args.blend_rate,
                  blend_episodes=args.blend_episodes, threads=args.threads,
                  load_procs=args.load_procs, soak_steps=args.soak_steps, out=args.out)
    return 0
