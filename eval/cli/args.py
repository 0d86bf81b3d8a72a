"""Argument helpers shared by several commands: comma-separated lists, thread counts, the UNet presets, the head
choices (from the head registry), the point-cloud flags and --runtime."""

from __future__ import annotations

import argparse

PRESETS = ("tiny", "small", "paper")      # policies.config.UNET_PRESETS, listed without importing torch


def head_choices() -> tuple[str, ...]:
    """Every registered head (policies/heads.py), for --head / --heads."""
    from mfp.policies.heads import head_names

    return head_names()


def csv_list(text: str, allowed=None) -> tuple[str, ...]:
    """'a, b,,c' -> ('a', 'b', 'c'); with `allowed`, an unknown item is a ValueError that lists the choices."""
    items = tuple(x.strip() for x in text.split(",") if x.strip())
    if allowed is not None:
        bad = [x for x in items if x not in allowed]
        if bad:
            raise ValueError(f"unknown value(s) {bad}; choose from {list(allowed)}")
    return items


def thread_counts(text: str) -> tuple[int, ...]:
    """--threads of the benchmarks: comma-separated counts >= 1, or 'default' (precision.default_threads())."""
    from mfp.policies.training.precision import default_threads

    try:
        counts = tuple(default_threads() if t == "default" else int(t) for t in csv_list(text))
    except ValueError:
        raise ValueError(f"--threads takes comma-separated counts such as 1,2 or 'default', got {text!r}") from None
    if not counts or min(counts) < 1:
        raise ValueError(f"--threads needs counts >= 1, got {text!r}")
    return tuple(dict.fromkeys(counts))


def add_heads_flag(p: argparse.ArgumentParser) -> None:
    """--heads of the speed benchmarks: comma-separated heads, all registered ones by default."""
    heads = ",".join(head_choices())
    p.add_argument("--heads", default=heads, help=f"comma-separated heads (default: {heads})")


def add_point_cloud_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-points", type=int, default=None,
                   help="points per cloud after farthest-point sampling (default: 512; the task's crop box is kept)")
    p.add_argument("--camera-size", type=int, default=None, help="depth image width and height in pixels (default: 128)")


def add_runtime_flag(p: argparse.ArgumentParser) -> None:
    """--runtime of the commands that run a trained policy (mfp.eval.runtime.RUNTIMES, listed without importing it)."""
    p.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                   help="what runs the network: torch (the checkpoint's module), or onnx (ONNX Runtime on the CPU, "
                        "one thread per worker): --ckpt is then an exported .onnx file (mfp export), or a "
                        "checkpoint / run folder that is exported in memory first (about ten seconds, no file written; "
                        "DP3 cannot be exported) (default: torch)")


def check_results_out(args) -> None:
    """A benchmark's --out (a results JSON) is checked before anything runs."""
    from .output_paths import Output, check_outputs

    check_outputs([Output("--out", args.out, what="results JSON")])
