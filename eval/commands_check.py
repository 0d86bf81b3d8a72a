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


def _check_run(args) -> int:
    import json

    report = check_path(args.path)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        print("\n".join(report.lines()))
    return 0 if report.ok else 1
