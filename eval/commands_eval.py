"""`mfp eval`: roll a checkpoint out in its task on the fixed evaluation seeds and save the results."""

from __future__ import annotations


def eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint in simulation",
                       description="Roll a checkpoint's EMA policy out in its task (read from the checkpoint) on the "
                                   "fixed evaluation seeds (1000000 + offset + i, never a demonstration seed); print "
                                   "the success rate and the inference latency, and save per-episode records as JSON.")
    p.add_argument("--ckpt", required=True, help="checkpoint file or run folder (its last checkpoint)")
    p.add_argument("--task", default=None, help="task to evaluate in (default: the checkpoint's own)")
    p.add_argument("--episodes", type=int, default=20, help="evaluation episodes (default: 20)")
    p.add_argument("--seed-offset", type=int, default=0, help="first evaluation seed is 1000000 + this (default: 0)")
    p.add_argument("--no-ema", action="store_true", help="evaluate the training weights instead of the EMA weights")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--out", default=None, help="results JSON (default: <run folder>/eval-<checkpoint name>.json)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_eval_run)


def _eval_run(args) -> int:
    from pathlib import Path

    from mfp.demos.atomic import atomic_write_json
    from mfp.demos.provenance import provenance
    from mfp.demos.seeds import eval_seeds
    from mfp.policies.training.checkpoint import load_policy, resolve_checkpoint_path

    from .rollout import evaluate

    if args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    ckpt = resolve_checkpoint_path(args.ckpt)
    policy = load_policy(ckpt, use_ema=not args.no_ema, device=args.device)
    result = evaluate(policy, args.task, eval_seeds(args.episodes, args.seed_offset), device=args.device,
                      progress=not args.no_progress)
    result["checkpoint"] = {"path": str(ckpt), "step": policy.checkpoint_info["step"],
                            "weights": policy.checkpoint_info["weights"],
                            "head": policy.checkpoint_info["policy_config"].get("head")}
    result["provenance"] = provenance()
    out = Path(args.out) if args.out else ckpt.parent / f"eval-{ckpt.stem}.json"
    atomic_write_json(out, result)
    print(f"{result['task']}: success {result['success_rate']:.0%} over {result['n_episodes']} episodes "
          f"(seeds {eval_seeds(1, args.seed_offset)[0]}..), inference p50 {result['inference_ms_p50']:.1f} ms, "
          f"p99 {result['inference_ms_p99']:.1f} ms per call; results: {out}")
    return 0
