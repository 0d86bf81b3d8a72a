"""`mfp check PATH`: validate a dataset, a checkpoint or a training run folder and print what it holds.

Exit status 0 when it is sound, 1 when it has problems (each printed as one `problem:` line that names the
file, the key and what is wrong), 2 for a usage error (no such path). Warnings never change the status.
"""

from __future__ import annotations

from pathlib import Path


def check_parser(sub) -> None:
    p = sub.add_parser(
        "check", help="validate a dataset, checkpoint or run folder and print what it holds",
        description="Validate a zarr dataset (structure, every episode read back against the checksums recorded "
                    "when it was written, value ranges, NaN/inf, attributes), a checkpoint (.safetensors: format, "
                    "configs, weights that fit them, finite values; pickle files are refused unread) or a training "
                    "run folder (every checkpoint, its JSON files, TensorBoard logs). Exit status 0 only when it is "
                    "sound, 1 when it has problems.")
    p.add_argument("path", help="a dataset (.zarr folder), a checkpoint file, or a training run folder")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of text")
    p.add_argument("--diagnose", action="store_true",
                   help="for a checkpoint or run: also print its chunk error and noise spread (normalised action "
                        "units: how far its EMA policy's chunks are from demonstrated ones, and how much the sampling "
                        "noise alone moves them) on --data's windows")
    p.add_argument("--data", default=None,
                   help="with --diagnose: a dataset of the policy's task, ideally episodes it was not trained on "
                        "(default: the run's own dataset, its validation episodes if it kept some, else all of it)")
    p.add_argument("--windows", type=int, default=128, help="with --diagnose: windows evaluated (default: 128)")
    p.add_argument("--draws", type=int, default=4, help="with --diagnose: noise draws per window (default: 4)")
    p.set_defaults(run=_check_run)


def check_path(path):
    """The report for a dataset, checkpoint file or run folder (chosen from what `path` is)."""
    from mfp.demos.check_dataset import check_dataset, looks_like_dataset
    from mfp.policies.training.check_checkpoint import check_checkpoint, check_run, looks_like_run

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if looks_like_dataset(path):
        return check_dataset(path)
    if path.is_dir():
        if looks_like_run(path):
            return check_run(path)
        if (path / "meta").is_dir() or (path / "data").is_dir():
            return check_dataset(path)
        raise ValueError(f"{path}: neither a dataset (zarr folder) nor a training run folder (no .safetensors, no "
                         f"config.json)")
    return check_checkpoint(path)


def diagnose(ckpt_path, data=None, n_windows: int = 128, n_draws: int = 4) -> dict:
    """Chunk error and noise spread (policies/diagnostics.py) of a checkpoint's EMA policy, with where the windows
    came from."""
    from mfp.policies.diagnostics import chunk_diagnostics, demo_windows
    from mfp.policies.training.checkpoint import load_policy

    policy = load_policy(ckpt_path, use_ema=True)
    info, train = policy.checkpoint_info, policy.checkpoint_info["train_config"]
    val_ratio, source = 0.0, "the given dataset"
    if data is None:
        data = info["data"].get("path")
        if not data or not Path(data).exists():
            raise FileNotFoundError(f"{ckpt_path}: its dataset {data!r} is not here; pass --data")
        if info["data"].get("val_episodes"):
            val_ratio, source = train["val_ratio"], "the run's validation episodes"
        else:
            source = "the run's own training episodes (it kept none out)"
    windows = demo_windows(data, policy.config, n_windows, val_ratio=val_ratio, seed=train.get("seed", 0))
    return {"checkpoint": info["path"], "head": policy.config.head, "data": str(data), "windows_from": source,
            **chunk_diagnostics(policy, windows, n_draws=n_draws)}


def _check_run(args) -> int:
    import json

    report = check_path(args.path)
    result = report.to_dict() if args.json else None
    if not args.json:
        print("\n".join(report.lines()))
    if args.diagnose and report.ok:
        from mfp.policies.training.checkpoint import resolve_checkpoint_path

        d = diagnose(resolve_checkpoint_path(args.path), args.data, args.windows, args.draws)
        if args.json:
            result["diagnostics"] = d
        else:
            print(f"diagnostics ({d['head']}, {d['windows']} windows from {d['windows_from']}, {d['draws']} noise "
                  f"draws each): chunk error {d['chunk_error']:.4f}, noise spread {d['noise_spread']:.4f} "
                  f"(normalised action units)")
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    return 0 if report.ok else 1
