"""Which runtime runs a trained policy: torch (the checkpoint's module) or ONNX Runtime (an exported policy).
One rule for `mfp eval` and `mfp control` (--runtime).

    policy = load_for_runtime("runs/x", "torch")              # load_policy: the checkpoint's EMA weights
    policy = load_for_runtime("runs/x/last.onnx", "onnx")     # an `mfp export` file, run by ONNX Runtime
    policy = load_for_runtime("runs/x", "onnx")               # the checkpoint exported in memory first

Both give what PolicyRunner uses (config, predict_action, checkpoint_info with the task and point-cloud settings,
so task_check.py's rules hold for either). With onnx, a checkpoint or run folder is exported in memory (about
ten seconds; no file is written; a head that cannot be exported, DP3, is refused with the reason) and an .onnx file
is used as it is: its weights are those it was exported with, so use_ema=False is refused for it. An .onnx file
with the torch runtime is refused with the flag to add. ONNX Runtime runs on the CPU, with `threads` intra-op
threads (1 by default, as every evaluation worker runs).
"""

from __future__ import annotations

import time
from pathlib import Path

RUNTIMES = ("torch", "onnx")
ONNX_SUFFIX = ".onnx"


def is_exported_policy(path) -> bool:
    """Whether `path` names an exported (.onnx) policy rather than a checkpoint or run folder."""
    return Path(path).suffix.lower() == ONNX_SUFFIX


def load_for_runtime(ckpt, runtime: str = "torch", use_ema: bool = True, device: str = "cpu", threads: int = 1,
                     echo=None):
    """The policy at `ckpt` (checkpoint file, run folder, or .onnx file) ready to act with `runtime`; see the
    module docstring. `echo` (e.g. print) is told when a checkpoint is exported in memory and how long it took."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    path = Path(ckpt)
    if runtime == "torch":
        if is_exported_policy(path):
            raise ValueError(f"{path} is an exported ONNX policy: run it with --runtime onnx")
        from mfp.policies.training.checkpoint import load_policy

        return load_policy(path, use_ema=use_ema, device=device)
    from mfp.policies.export import OnnxPolicy

    if str(device) != "cpu":
        raise ValueError(f"the onnx runtime runs on the CPU here, not on {device}; use --runtime torch for {device}")
    if is_exported_policy(path):
        if not use_ema:
            raise ValueError(f"{path}: an exported policy holds the weights it was exported with; to run the "
                             f"training weights, export them (mfp export --no-ema)")
        return OnnxPolicy(path, threads=threads)
    from mfp.policies.export import onnx_bytes
    from mfp.policies.training.checkpoint import resolve_checkpoint_path

    path = resolve_checkpoint_path(path)
    t0 = time.perf_counter()
    policy = OnnxPolicy.from_bytes(onnx_bytes(path, use_ema=use_ema), path, threads=threads)
    if echo is not None:
        echo(f"onnx: exported {path} in memory in {time.perf_counter() - t0:.1f} s (mfp export --ckpt {ckpt} "
             f"saves it as a file)")
    return policy
