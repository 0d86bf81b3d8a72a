"""`mfp bench train`: training step time per head, fp32 and bf16."""

from __future__ import annotations

from .args import PRESETS, add_heads_flag, check_results_out, csv_list, head_choices, thread_counts


def bench_train_parser(bench) -> None:
    b = bench.add_parser(
        "train", help="training step time per head, fp32 and bf16, JVP cost, encoder share, two runs at once",
        description="Training step time (forward + backward + optimiser) and samples/s per head on synthetic "
                    "batches, fp32 and bf16 autocast; MeanFlow's step relative to FlowPolicy and SplitMeanFlow "
                    "(paired, in one process); the observation encoder's share of the step.")
    add_heads_flag(b)
    b.add_argument("--preset", choices=PRESETS, default="small", help="UNet preset (default: small)")
    b.add_argument("--batch-size", type=int, default=64, help="samples per step (default: 64)")
    b.add_argument("--n-points", type=int, default=512, help="points per cloud (default: 512)")
    b.add_argument("--steps", type=int, default=5, help="timed steps per head and precision (default: 5)")
    b.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    b.add_argument("--amp", default="none,bf16",
                   help="comma-separated precisions: none, bf16, auto (bf16 where native, else none); all are timed "
                        "in the same interleaved rounds (default: none,bf16)")
    b.add_argument("--dispersive-weight", type=float, default=0.0, help="dispersive loss weight (default: 0)")
    b.add_argument("--threads", default=None,
                   help="torch CPU threads, or comma-separated counts timed in the same interleaved rounds, e.g. "
                        "1,2; 'default' = the cores this process may use, lowered by the load of other processes "
                        "at start (default: 'default')")
    b.add_argument("--concurrent", action="store_true",
                   help="also time the first head's step (first precision) in one process alone and in two "
                        "processes at once, with 1 thread and with the default thread count each, and report the "
                        "slowdown (what two runs at once cost each other)")
    b.add_argument("--concurrent-rounds", type=int, default=2,
                   help="interleaved rounds (alone, two at once) of --concurrent (default: 2)")
    b.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device (default: cpu)")
    b.add_argument("--out", default="runs/bench/train.json", help="JSON output (default: runs/bench/train.json)")
    b.set_defaults(run=_bench_train_run)


def _bench_train_run(args) -> int:
    check_results_out(args)
    from mfp.eval.bench.train import bench_train

    bench_train(heads=csv_list(args.heads, head_choices()), preset=args.preset, batch_size=args.batch_size,
                n_points=args.n_points, steps=args.steps, warmup=args.warmup,
                amps=csv_list(args.amp, ("none", "bf16", "auto")), dispersive_weight=args.dispersive_weight,
                threads=thread_counts(args.threads) if args.threads else None, device=args.device, out=args.out,
                concurrent=args.concurrent, concurrent_rounds=args.concurrent_rounds)
    return 0
