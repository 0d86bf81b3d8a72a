"""`mfp`: one command-line interface; each subcommand is a thin shell over a function tests call directly.

One module per command, its parser beside its handler (train.py is `mfp train`, bench_suite.py is
`mfp bench suite`, ...); COMMANDS and BENCH_COMMANDS below list them. Handlers import their heavy modules only
when run, so `mfp --help` is fast and a missing optional dependency breaks only the command that needs it.
Shared flag helpers live in args.py, the output-path checks every command runs first in output_paths.py.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("MUJOCO_GL", "egl")

from . import (bench_collect, bench_control, bench_latency, bench_report, bench_suite, bench_train,  # noqa: E402
               check, collect, control, evaluate, export, import_bag, ros_sim, tasks, train)  # (parsers only)

# Each entry adds one `mfp bench NAME` parser to the bench subparsers.
BENCH_COMMANDS = [bench_collect.bench_collect_parser, bench_train.bench_train_parser,
                  bench_latency.bench_latency_parser, bench_suite.bench_suite_parser,
                  bench_report.bench_report_parser, bench_control.bench_control_parser]


def _bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks that print and save their figures as JSON",
                       description="Benchmarks. Each prints its figures and saves them as JSON with their provenance.")
    bench = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for add in BENCH_COMMANDS:
        add(bench)


# Each entry adds one `mfp COMMAND` parser.
COMMANDS = [collect.collect_parser, tasks.tasks_parser, train.train_parser, evaluate.eval_parser,
            export.export_parser, control.control_parser, ros_sim.ros_sim_parser, _bench_parser,
            import_bag.import_bag_parser, check.check_parser]


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
    except (ValueError, OSError, RuntimeError) as e:  # a user error: one line, status 2 (OSError: disk full, ...)
        if os.environ.get("MFP_DEBUG"):
            raise
        command = f"bench {args.bench}" if args.command == "bench" else args.command
        print(f"mfp {command}: error: {e}", file=sys.stderr)
        return 2
