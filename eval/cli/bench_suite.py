"""`mfp bench suite`: the benchmark suite (collect, train each head, evaluate, append to a results file, render the
report)."""

from __future__ import annotations

from .args import PRESETS, csv_list, head_choices
from .bench_report import render_report

# Adroit door/hammer/pen and Meta-World tasks from every difficulty group: 2 easy, 2 medium, 1 hard, 1 very hard
DEFAULT_TASKS = ("adroit/door,adroit/hammer,adroit/pen,metaworld/button-press,metaworld/door-open,"
                 "metaworld/hammer,metaworld/coffee-pull,metaworld/assembly,metaworld/stick-pull")


def bench_suite_parser(bench) -> None:
    b = bench.add_parser(
        "suite", help="collect, train each head with one budget, evaluate, and tabulate, resumably",
        description="For each task x head x seed: collect demonstrations once per task (into --data-dir), train "
                    "the head for --steps optimiser steps, evaluate the final EMA checkpoint on the fixed "
                    "evaluation episodes, and append the result to --results (JSON lines). Jobs already in the "
                    "results file are skipped and interrupted training resumes, so a suite can be built up run by "
                    "run. The expert is evaluated on the same episodes once per task (the ceiling). Afterwards the "
                    "report (Markdown table + plot, published numbers beside ours) is written next to --results.")
    b.add_argument("--tasks", default=DEFAULT_TASKS, help=f"comma-separated tasks (default: {DEFAULT_TASKS})")
    b.add_argument("--heads", default="meanflow,flowpolicy,dp3",
                   help=f"comma-separated heads from {','.join(head_choices())}, or labels of --variant "
                        f"(default: meanflow,flowpolicy,dp3)")
    b.add_argument("--variant", action="append", default=[], metavar="LABEL=HEAD:KEY=VALUE,...",
                   help="a head with some settings changed, run under LABEL (name it in --heads); keys: the head's "
                        "config fields (e.g. prediction=velocity, adaptive_p=1, ratio_r_eq_t=0.75), UNet "
                        "time_combine/second_time/time_scale, training lr/warmup_steps/weight_decay/grad_clip, "
                        "dispersive_weight. Repeat for several, e.g. --variant mf-lr3=meanflow:lr=3e-4")
    b.add_argument("--seeds", default="0,1", help="comma-separated training seeds (default: 0,1)")
    b.add_argument("--budget", "--steps", dest="steps", type=int, default=400,
                   help="training budget: optimiser steps per run, the same for every head (default: 400)")
    b.add_argument("--batch-size", type=int, default=64, help="samples per training step (default: 64)")
    b.add_argument("--preset", choices=PRESETS, default="small", help="UNet preset (default: small)")
    b.add_argument("--amp", choices=("auto", "none", "bf16"), default="auto",
                   help="training precision: auto = bfloat16 autocast where the device runs it natively (CUDA with "
                        "bf16, a CPU with AVX-512 BF16 or AMX), float32 otherwise; results record the resolved "
                        "precision (default: auto)")
    b.add_argument("--demos", type=int, default=10, help="demonstrations per task (default: 10)")
    b.add_argument("--eval-episodes", type=int, default=20, help="evaluation episodes per run (default: 20)")
    b.add_argument("--eval-workers", type=int, default=1, help="evaluation worker processes (default: 1)")
    b.add_argument("--videos", type=int, default=1, help="episodes recorded as video per run (default: 1)")
    b.add_argument("--no-expert", action="store_true",
                   help="skip the expert's evaluation (e.g. in a second process sharing the results file)")
    b.add_argument("--top5-every", type=int, default=0,
                   help="also evaluate every this many training steps, for the papers' top-5 figure (labelled as "
                        "such, never the headline; default: 0, off)")
    b.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads for training (default: the cores this process may use, lowered by the "
                        "load of other processes at start; evaluation workers take 1 each; give 1 per suite "
                        "process when several share the machine)")
    b.add_argument("--data-dir", default="data/demos", help="where task datasets live (default: data/demos)")
    b.add_argument("--runs-dir", default="runs/suite", help="where training runs go (default: runs/suite)")
    b.add_argument("--results", default="runs/suite/results.jsonl",
                   help="results file, appended to (default: runs/suite/results.jsonl)")
    b.add_argument("--no-report", action="store_true", help="do not render the report afterwards")
    b.add_argument("--no-progress", action="store_true", help="no progress bars")
    b.set_defaults(run=_bench_suite_run)


def suite_outputs(cfg, report: bool) -> list:
    """Every path a suite writes: the task datasets (and their locks), each job's run folder and videos, the
    results file (appended to) and, unless `report` is False, the report beside it."""
    from mfp.eval.suite.report import report_paths
    from mfp.eval.suite.runner import dataset_path, run_dir, suite_jobs

    from .output_paths import FILE, FOLDER, Output, run_folder_outputs

    outputs = [Output("--data-dir", cfg.data_dir, FOLDER, "task datasets"),
               Output("--runs-dir", cfg.runs_dir, FOLDER, "training runs"),
               Output("--results", cfg.results, FILE, "results file, appended to", append=True)]
    for task in cfg.tasks:
        data = dataset_path(cfg, task)
        outputs += [Output("--data-dir", data, FOLDER, "zarr dataset"),
                    Output("--data-dir", data.with_name(data.name + ".lock"), FILE, "dataset lock", append=True)]
    for task, head, seed in suite_jobs(cfg):
        if head is not None:
            run = run_dir(cfg, task, head, seed)
            outputs += run_folder_outputs("--runs-dir", run, eval_history=bool(cfg.top5_every))
            if cfg.videos:
                outputs.append(Output("--runs-dir", run / "videos", FOLDER, "videos"))
    if report:
        md, png = report_paths([cfg.results])
        outputs += [Output("--results", md, FILE, "report beside the results file"),
                    Output("--results", png, FILE, "report plot beside the results file")]
    return outputs


def _bench_suite_run(args) -> int:
    from mfp.eval.suite.runner import SuiteConfig, run_suite

    from .output_paths import check_outputs

    try:
        seeds = tuple(int(s) for s in csv_list(args.seeds))
    except ValueError:
        raise ValueError(f"--seeds takes comma-separated integers, got {args.seeds!r}") from None
    cfg = SuiteConfig(tasks=csv_list(args.tasks), heads=csv_list(args.heads), variants=tuple(args.variant),
                      seeds=seeds, steps=args.steps, batch_size=args.batch_size, preset=args.preset, amp=args.amp,
                      demos=args.demos, eval_episodes=args.eval_episodes, eval_workers=args.eval_workers,
                      videos=args.videos, expert=not args.no_expert, top5_every=args.top5_every, threads=args.threads,
                      data_dir=args.data_dir, runs_dir=args.runs_dir, results=args.results)
    check_outputs(suite_outputs(cfg, report=not args.no_report))
    report = run_suite(cfg, progress=not args.no_progress)
    print(f"suite: {len(report.done)} jobs run, {len(report.skipped)} already in {cfg.results}")
    if not args.no_report:
        render_report(cfg.results, None, "Benchmark suite")
    return 0
