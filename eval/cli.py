"""`mfp`: one command-line interface; each subcommand is a thin shell over a function tests call directly.

Subcommands register themselves in `COMMANDS` below; their modules are imported only when run, so
`mfp --help` is fast and a missing optional dependency breaks only the command that needs it.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("MUJOCO_GL", "egl")

from . import commands_bag, commands_check, commands_control, commands_eval, commands_suite, commands_train  # noqa: E402  (parsers only: heavy imports happen in handlers)


class CliError(Exception):
    """A user error: printed as one line, exit status 2, no traceback."""


def _add_pc_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-points", type=int, default=None,
                   help="points per cloud after farthest-point sampling (default: 512; the task's crop box is kept)")
    p.add_argument("--camera-size", type=int, default=None, help="depth image width and height in pixels (default: 128)")


# --- collect ---------------------------------------------------------------------------------------
def _collect_parser(sub) -> None:
    p = sub.add_parser("collect", help="record expert demonstrations into a zarr dataset",
                       description="Record successful expert episodes (executed, clipped actions) with point-cloud "
                                   "observations into a DP3-compatible zarr dataset. An existing dataset is appended to; "
                                   "Ctrl-C keeps every episode already committed.")
    p.add_argument("--task", required=True, help="task name, e.g. metaworld/pick-place or adroit/door (`mfp tasks` lists them)")
    p.add_argument("--episodes", type=int, default=10, help="successful episodes to add (default: 10)")
    p.add_argument("--out", required=True, help="zarr dataset path (created, or appended to when it exists)")
    p.add_argument("--seed-start", type=int, default=None,
                   help="first episode seed (default: after the last seed the dataset used, else 0); "
                        "must lie below the evaluation seeds (1000000)")
    p.add_argument("--max-attempts", type=int, default=None,
                   help="give up after this many episodes, successful or not (default: 3 x episodes + 10)")
    _add_pc_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_collect_run)


def _collect_run(args) -> int:
    from .output_paths import FOLDER, Output, check_outputs

    check_outputs([Output("--out", args.out, FOLDER, "zarr dataset")])
    from mfp.demos.collect import collect

    report = collect(args.task, args.episodes, args.out, seed_start=args.seed_start, max_attempts=args.max_attempts,
                     num_points=args.num_points, camera_size=args.camera_size, progress=not args.no_progress)
    print(report.summary())
    return 130 if report.interrupted else 0


# --- tasks -----------------------------------------------------------------------------------------
def _tasks_parser(sub) -> None:
    p = sub.add_parser("tasks", help="list the valid task names", description="List every valid --task name.")
    p.set_defaults(run=_tasks_run)


def _tasks_run(args) -> int:
    from mfp.envs import task_names

    print("\n".join(task_names()))
    return 0


# --- bench -----------------------------------------------------------------------------------------
def _bench_collect_parser(bench) -> None:
    c = bench.add_parser("collect", help="environment steps/s with point clouds, 1 and several processes",
                         description="Environment steps per second with point-cloud observations: per stage, one "
                                     "process, and several processes at once.")
    c.add_argument("--task", default="metaworld/pick-place", help="task to step (default: metaworld/pick-place)")
    c.add_argument("--steps", type=int, default=400, help="steps per process (default: 400)")
    c.add_argument("--processes", default="1,2", help="comma-separated process counts to try (default: 1,2)")
    c.add_argument("--out", default="runs/bench/collect.json", help="JSON output (default: runs/bench/collect.json)")
    c.set_defaults(run=_bench_collect_run)


def _bench_collect_run(args) -> int:
    from .output_paths import Output, check_outputs

    check_outputs([Output("--out", args.out, what="results JSON")])
    from .bench_collect import bench_collect

    processes = tuple(int(x) for x in args.processes.split(",") if x.strip())
    bench_collect(args.task, args.steps, processes, args.out)
    return 0


# Each entry adds one `mfp bench NAME` parser to the bench subparsers.
BENCH_COMMANDS = [_bench_collect_parser, commands_train.bench_train_parser, commands_train.bench_latency_parser,
                  commands_suite.bench_suite_parser, commands_suite.bench_report_parser,
                  commands_control.bench_control_parser]


def _bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks that print and save their figures as JSON",
                       description="Benchmarks. Each prints its figures and saves them as JSON with their provenance.")
    bench = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for add in BENCH_COMMANDS:
        add(bench)


# Each entry adds one `mfp COMMAND` parser.
COMMANDS = [_collect_parser, _tasks_parser, commands_train.train_parser, commands_eval.eval_parser,
            commands_control.control_parser, commands_control.ros_sim_parser, _bench_parser,
            commands_bag.import_bag_parser, commands_check.check_parser]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mfp",
        description="Record demonstrations, train one-step point-cloud policies, evaluate them in simulation.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("mfp: interrupted", file=sys.stderr)
        return 130
    except (CliError, ValueError, OSError, RuntimeError) as e:  # OSError: disk full, permissions, missing files
        if os.environ.get("MFP_DEBUG"):
            raise
        command = f"bench {args.bench}" if args.command == "bench" else args.command
        print(f"mfp {command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
