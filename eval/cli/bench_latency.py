"""`mfp bench latency`: observation -> action latency at batch 1 per head."""

from __future__ import annotations

from .args import PRESETS, add_heads_flag, check_results_out, csv_list, head_choices, thread_counts


def bench_latency_parser(bench) -> None:
    b = bench.add_parser(
        "latency", help="observation -> action latency at batch 1 per head, with point-cloud preprocessing",
        description="Observation -> action latency at batch 1 (p50 / p99 over many calls after warm-up) per head, "
                    "UNet preset and runtime, including the point-cloud preprocessing of a rendered 128x128 depth "
                    "image (also timed alone); on CPU (torch eager, ONNX Runtime, torch.compile on request), and on "
                    "CUDA when available (eager, torch.compile, CUDA graphs). Reports MeanFlow's speed-up over "
                    "DP3-DDIM10 per runtime, measured in the same run.")
    add_heads_flag(b)
    b.add_argument("--presets", default="small", help="comma-separated UNet presets (default: small)")
    b.add_argument("--paper", action="store_true", help="also time the paper preset (slow on CPU)")
    b.add_argument("--calls", type=int, default=200, help="timed calls per configuration (default: 200)")
    b.add_argument("--warmup", type=int, default=20, help="untimed calls first (default: 20)")
    b.add_argument("--task", default="metaworld/reach",
                   help="task whose camera renders the depth image (default: metaworld/reach)")
    b.add_argument("--devices", default="auto",
                   help="comma-separated: cpu, cuda; auto = cpu and cuda when available (default: auto)")
    b.add_argument("--no-compile", action="store_true",
                   help="on CUDA, time eager only (no torch.compile / CUDA graphs)")
    b.add_argument("--cpu-compile", action="store_true",
                   help="on CPU, also time torch.compile (about a minute of compilation per head here)")
    b.add_argument("--no-onnx", action="store_true",
                   help="on CPU, do not time ONNX Runtime (by default each exportable head is exported in memory "
                        "and timed with as many ONNX Runtime threads as torch threads)")
    b.add_argument("--threads", default="1",
                   help="comma-separated torch CPU thread counts to time, e.g. 1,2; 'default' = the cores this "
                        "process may use (default: 1, as each evaluation worker runs; batch-1 inference is "
                        "per-operation overhead bound)")
    b.add_argument("--out", default="runs/bench/latency.json", help="JSON output (default: runs/bench/latency.json)")
    b.set_defaults(run=_bench_latency_run)


def _bench_latency_run(args) -> int:
    check_results_out(args)
    from mfp.eval.bench.latency import bench_latency

    presets = csv_list(args.presets, PRESETS)
    if args.paper and "paper" not in presets:
        presets += ("paper",)
    devices = None if args.devices == "auto" else csv_list(args.devices, ("cpu", "cuda"))
    bench_latency(heads=csv_list(args.heads, head_choices()), presets=presets, calls=args.calls, warmup=args.warmup,
                  task=args.task, devices=devices, compile_cuda=not args.no_compile, compile_cpu=args.cpu_compile,
                  threads=thread_counts(args.threads), out=args.out, onnx=not args.no_onnx)
    return 0
