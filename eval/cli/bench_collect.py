"""`mfp bench collect`: environment steps per second with point-cloud observations."""

from __future__ import annotations

from .args import check_results_out, csv_list


def bench_collect_parser(bench) -> None:
    c = bench.add_parser("collect", help="environment steps/s with point clouds, 1 and several processes",
                         description="Environment steps per second with point-cloud observations: per stage, one "
                                     "process, and several processes at once.")
    c.add_argument("--task", default="metaworld/pick-place", help="task to step (default: metaworld/pick-place)")
    c.add_argument("--steps", type=int, default=400, help="steps per process (default: 400)")
    c.add_argument("--processes", default="1,2", help="comma-separated process counts to try (default: 1,2)")
    c.add_argument("--out", default="runs/bench/collect.json", help="JSON output (default: runs/bench/collect.json)")
    c.set_defaults(run=_bench_collect_run)


def _bench_collect_run(args) -> int:
    check_results_out(args)
    from mfp.eval.bench.collect import bench_collect

    bench_collect(args.task, args.steps, tuple(int(x) for x in csv_list(args.processes)), args.out)
    return 0
