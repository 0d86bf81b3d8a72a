"""`mfp export --ckpt RUN --format onnx`: a trained policy as one self-contained file for another runtime.

The file (mfp.policies.export) holds the normaliser, the encoder and the head's fixed-step sampler, with the
checkpoint's configs and provenance in its metadata; `mfp eval` / `mfp control --runtime onnx --ckpt FILE` run it.
By default it goes beside the checkpoint, named after it (RUN/last.safetensors -> RUN/last.onnx). The output path is
checked before anything is loaded. After writing, the exported policy and the checkpoint's torch policy act on the
same batch of observations (drawn inside the normaliser's ranges) with the same noise, and the largest difference
of their actions is printed.
"""

from __future__ import annotations

from pathlib import Path

FORMATS = ("onnx",)


def export_parser(sub) -> None:
    p = sub.add_parser(
        "export", help="export a trained policy as one ONNX file (run it with --runtime onnx)",
        description="Export a checkpoint's policy (its EMA weights by default) as one self-contained ONNX file: "
                    "observation normaliser, point-cloud encoder and the head's fixed-step sampler, with the sampling "
                    "noise as an input and the checkpoint's configs and provenance in the file's metadata. "
                    "`mfp eval` and `mfp control` run it with --runtime onnx. Heads whose sampler steps a "
                    "diffusion scheduler (dp3) cannot be exported. Prints where it wrote and the largest action "
                    "difference from the torch policy on the same observations and noise.")
    p.add_argument("--ckpt", required=True, help="checkpoint file or run folder (its last checkpoint)")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="file format (default: onnx, the only one)")
    p.add_argument("--out", default=None,
                   help="the file to write (default: beside the checkpoint, named after it: "
                        "RUN/last.safetensors -> RUN/last.onnx)")
    p.add_argument("--sample-steps", type=int, default=None,
                   help="network evaluations per action chunk, fixed in the graph (default: the head's own "
                        "sample_steps, 1 for the one-step heads)")
    p.add_argument("--no-ema", action="store_true", help="export the training weights instead of the EMA weights")
    p.set_defaults(run=_export_run)


def default_out(ckpt: Path, fmt: str = "onnx") -> Path:
    """Beside the checkpoint file, named after it."""
    return ckpt.with_suffix(f".{fmt}")


def _export_run(args) -> int:
    import time

    from mfp.policies.training.checkpoint import resolve_checkpoint_path

    from .output_paths import FILE, Output, check_outputs

    if args.sample_steps is not None and args.sample_steps < 1:
        raise ValueError(f"--sample-steps must be >= 1, got {args.sample_steps}")
    ckpt = resolve_checkpoint_path(args.ckpt)
    out = Path(args.out) if args.out else default_out(ckpt, args.format)
    check_outputs([Output("--out", out, FILE, "exported policy")])
    from mfp.policies.export import OnnxPolicy, export_onnx, max_action_difference
    from mfp.policies.training.checkpoint import load_policy

    t0 = time.perf_counter()
    export_onnx(ckpt, out, sample_steps=args.sample_steps, use_ema=not args.no_ema)
    seconds = time.perf_counter() - t0
    exported = OnnxPolicy(out)
    weights, steps = exported.checkpoint_info["weights"], exported.metadata["graph"]["sample_steps"]
    print(f"exported {ckpt} ({exported.config.head}, {weights} weights, {steps} network evaluation"
          f"{'s' if steps != 1 else ''} per chunk) -> {out} ({out.stat().st_size / 1e6:.1f} MB, {seconds:.1f} s)")
    policy = load_policy(ckpt, use_ema=not args.no_ema)
    if steps != getattr(policy.config.head_cfg, "sample_steps", None):
        print(f"parity: not measured (the torch policy samples with its own {policy.config.head_cfg.sample_steps} "
              f"steps, the export with {steps})")
        return 0
    diff = max_action_difference(policy, exported)
    print(f"parity: max |onnx - torch| action difference {diff:.1e} (same observations and noise, environment units)")
    return 0
