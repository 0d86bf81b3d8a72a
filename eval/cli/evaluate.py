"""`mfp eval`: roll a checkpoint (or the task's expert) out on fixed evaluation seeds and save the results.

Outputs: a results JSON (summary + per-episode records + provenance) and a folder with videos of the first
episodes and a picture of the point cloud the policy sees (point_cloud.png). Where they go (`OUT_RULE`):
--out ending in .json is the results file, and its videos and picture go to a folder beside it named after its
stem (runs/x/eval.json -> runs/x/eval/); any other --out is a folder that receives eval.json, videos/ and
point_cloud.png. By default: <run folder>/eval-<checkpoint name>.json (and folder eval-<checkpoint name>/), or
runs/eval/<task>-expert.json with --expert. Every output path is checked before anything is rolled out.
--runtime onnx runs the network in ONNX Runtime (mfp.eval.runtime): an exported .onnx file, or the checkpoint
exported in memory.
"""

from __future__ import annotations

from mfp.demos.seeds import EVAL_SEED_START, EVAL_SET_STRIDE

from .args import add_runtime_flag

OUT_RULE = ("a path ending in .json is the results file, and its videos and point-cloud picture go to a folder "
            "beside it named after its stem (runs/x/eval.json -> runs/x/eval/); any other path is a folder that "
            "receives eval.json, videos/ and point_cloud.png")


def eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint (or the expert) in simulation",
                       description="Roll a checkpoint's EMA policy out in its task (read from the checkpoint) on "
                                   f"fixed evaluation seed sets (set k: seeds {EVAL_SEED_START} + {EVAL_SET_STRIDE} k "
                                   "+ i, never a "
                                   "demonstration seed), in parallel worker processes; print success (mean +- std "
                                   "over the seed sets) and the inference latency; save per-episode records as "
                                   "JSON, videos of the first episodes and a picture of the observed point cloud.")
    p.add_argument("--ckpt", default=None,
                   help="checkpoint file or run folder (its last checkpoint); with --runtime onnx also an exported "
                        ".onnx file")
    p.add_argument("--expert", action="store_true",
                   help="evaluate the task's scripted/expert policy instead of a checkpoint (needs --task): the "
                        "ceiling, from privileged simulator state")
    p.add_argument("--task", default=None, help="task to evaluate in (default: the checkpoint's own)")
    p.add_argument("--episodes", type=int, default=20, help="episodes per evaluation seed set (default: 20)")
    p.add_argument("--seeds", default="0",
                   help="comma-separated evaluation seed sets, e.g. 0,1,2: success is reported as mean +- std over "
                        "them (default: 0)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes, each with its own environment and policy copy (default: the cores this "
                        "process may use); 1 runs the episodes in this process")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per worker (torch's, or ONNX Runtime's with --runtime onnx), this process "
                        "included when --workers is 1 (default: 1; "
                        "batch-1 inference gains little from more, and loses much on a shared machine)")
    p.add_argument("--videos", type=int, default=2, help="episodes recorded as videos, 0 for none (default: 2)")
    p.add_argument("--video-format", choices=("mp4", "gif"), default="mp4", help="video format (default: mp4)")
    p.add_argument("--no-ema", action="store_true", help="evaluate the training weights instead of the EMA weights")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    add_runtime_flag(p)
    p.add_argument("--out", default=None,
                   help=f"where results go: {OUT_RULE} (default: <run folder>/eval-<checkpoint name>.json, or "
                        f"runs/eval/<task>-expert.json with --expert)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_eval_run)


def parse_seed_sets(text: str) -> list[int]:
    try:
        sets = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--seeds takes comma-separated seed-set numbers such as 0,1,2, got {text!r}") from None
    if not sets or len(set(sets)) != len(sets) or min(sets) < 0:
        raise ValueError(f"--seeds needs distinct seed-set numbers >= 0, got {text!r}")
    return sets


def eval_output_paths(out, ckpt=None, task: str | None = None):
    """(results JSON, folder of the videos and point-cloud picture) for `--out` (see OUT_RULE), or by default
    beside the checkpoint `ckpt`, or under runs/eval for the expert of `task`."""
    from pathlib import Path

    if out:
        if str(out).lower().endswith(".json"):  # the text as given: "x.json/" names a folder
            stem = Path(out).name[:-len(".json")]
            if not stem:
                raise ValueError(f"--out {out}: a results file needs a name before .json (its folder is named "
                                 f"after it)")
            return Path(out), Path(out).with_name(stem)
        return Path(out) / "eval.json", Path(out)
    if ckpt is not None:
        results = Path(ckpt).parent / f"eval-{Path(ckpt).stem}.json"
    else:
        results = Path("runs/eval") / f"{task.replace('/', '_')}-expert.json"
    return results, results.with_suffix("")


def check_eval_outputs(results, side, videos: int) -> None:
    """Refuse unwritable output paths before anything is loaded or rolled out."""
    from .output_paths import FILE, FOLDER, Output, check_outputs

    if results.parent == side:  # --out is the folder: say first what is wrong with it
        outputs = [Output("--out", side, FOLDER, "output folder: eval.json, videos, point-cloud picture"),
                   Output("--out", results, FILE, "results JSON")]
    else:
        outputs = [Output("--out", results, FILE, "results JSON"),
                   Output("--out", side, FOLDER, "folder of the videos and point-cloud picture")]
    outputs.append(Output("--out", side / "point_cloud.png", FILE, "point-cloud picture"))
    if videos > 0:
        outputs.append(Output("--out", side / "videos", FOLDER, "videos"))
    check_outputs(outputs)


def _eval_run(args) -> int:
    from mfp.demos.atomic import atomic_write_json
    from mfp.demos.provenance import provenance
    from mfp.demos.seeds import eval_seed_set
    from mfp.eval.runtime import load_for_runtime
    from mfp.eval.sim.evaluator import evaluate, resolve_task, save_observation_picture
    from mfp.policies.training.checkpoint import resolve_checkpoint_path
    from mfp.policies.training.precision import INFERENCE_THREADS, available_cores

    if args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    if args.expert == (args.ckpt is not None):
        raise ValueError("give either --ckpt (a trained policy) or --expert with --task")
    if args.expert and not args.task:
        raise ValueError("--expert needs --task, e.g. --task metaworld/drawer-open")
    if args.expert and args.runtime != "torch":
        raise ValueError("--runtime applies to a trained policy (--ckpt), not to the expert")
    seed_sets = parse_seed_sets(args.seeds)
    workers = args.workers or available_cores()
    policy, ckpt = None, None
    if args.ckpt is not None:
        ckpt = resolve_checkpoint_path(args.ckpt)
    out, out_dir = eval_output_paths(args.out, ckpt, args.task)
    check_eval_outputs(out, out_dir, args.videos)
    if ckpt is not None:
        policy = load_for_runtime(ckpt, args.runtime, use_ema=not args.no_ema, device=args.device,
                                  threads=args.threads or INFERENCE_THREADS, echo=print)
    task, point_cloud = resolve_task(policy, args.task, None)
    result = evaluate(policy, task, {k: eval_seed_set(k, args.episodes) for k in seed_sets}, device=args.device,
                      progress=not args.no_progress, point_cloud=point_cloud, workers=workers,
                      video_dir=out_dir / "videos", n_videos=args.videos, video_format=args.video_format,
                      threads=args.threads)
    first_seed = result["episodes"][0]["seed"]
    result["point_cloud_picture"] = str(save_observation_picture(task, point_cloud, first_seed,
                                                                 out_dir / "point_cloud.png"))
    if policy is not None:
        info = policy.checkpoint_info
        result["checkpoint"] = {"path": str(ckpt), "step": info["step"], "weights": info["weights"],
                                "head": info["policy_config"].get("head"), "runtime": args.runtime}
    result["provenance"] = provenance()
    atomic_write_json(out, result)
    latency = ("" if result["inference_ms_p50"] is None else
               f", inference p50 {result['inference_ms_p50']:.1f} ms, p99 {result['inference_ms_p99']:.1f} ms per call")
    spread = f" +- {result['success_std']:.0%} over {len(seed_sets)} seed sets" if len(seed_sets) > 1 else ""
    print(f"{task} ({result['actor']}): success {result['success_rate']:.0%}{spread} "
          f"({result['n_episodes']} episodes){latency}")
    print(f"results: {out}; videos: {', '.join(result.get('videos', [])) or 'none'}; "
          f"point cloud: {result['point_cloud_picture']}")
    return 0
