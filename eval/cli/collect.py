"""`mfp collect`: record expert demonstrations into a zarr dataset."""

from __future__ import annotations

from mfp.demos.seeds import EVAL_SEED_START

from .args import add_point_cloud_flags


def collect_parser(sub) -> None:
    p = sub.add_parser("collect", help="record expert demonstrations into a zarr dataset",
                       description="Record successful expert episodes (executed, clipped actions) with point-cloud "
                                   "observations into a DP3-compatible zarr dataset. An existing dataset is appended to; "
                                   "Ctrl-C keeps every episode already committed.")
    p.add_argument("--task", required=True, help="task name, e.g. metaworld/pick-place or adroit/door (`mfp tasks` lists them)")
    p.add_argument("--episodes", type=int, default=10, help="successful episodes to add (default: 10)")
    p.add_argument("--out", required=True, help="zarr dataset path (created, or appended to when it exists)")
    p.add_argument("--seed-start", type=int, default=None,
                   help="first episode seed (default: after the last seed the dataset used, else 0); "
                        f"must lie below the evaluation seeds ({EVAL_SEED_START})")
    p.add_argument("--max-attempts", type=int, default=None,
                   help="give up after this many episodes, successful or not (default: 3 x episodes + 10)")
    add_point_cloud_flags(p)
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
