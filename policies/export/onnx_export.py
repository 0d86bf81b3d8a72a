"""`export_onnx`: a trained policy (object, checkpoint file or run folder) -> one self-contained .onnx file.

    export_onnx("runs/drawer-mf", "runs/drawer-mf/policy.onnx")     # the run's EMA weights, as `mfp eval` uses
    OnnxPolicy("runs/drawer-mf/policy.onnx").predict_action(obs)   # onnx_policy.py

The graph (graph.OneStepGraph) holds the normaliser, the encoder and the head's fixed-step sampler, and takes the
sampling noise as an input, so an exported policy and its torch source give the same actions for the same noise.
Inputs: point_cloud (B, To, N, 3), agent_pos (B, To, d), noise (B, H, A), float32; outputs: action
(B, n_action_steps, A) (the executed window) and action_pred (B, H, A), in environment units. The batch is dynamic.
The configs and provenance go into the file's metadata (metadata.py). The file is written atomically;
`onnx_bytes` gives the same contents without a file (`mfp eval --runtime onnx` on a checkpoint).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import torch

from mfp.demos.atomic import atomic_write_bytes
from mfp.demos.provenance import provenance

from . import metadata
from .graph import ExportError, OneStepGraph, check_exportable

OPSET = 18                # the lowest opset with Mish and GroupNormalization's final form; ONNX Runtime >= 1.14


def export_onnx(policy_or_checkpoint, out_path, sample_steps: int | None = None, use_ema: bool = True,
                opset: int = OPSET) -> Path:
    """Write the policy as ONNX to `out_path` (atomically) and return the path.

    policy_or_checkpoint: a PointCloudPolicy (with its normaliser set), or a checkpoint file / run folder (its EMA
    weights unless use_ema=False). sample_steps: network evaluations per call, default the head's own.
    Raises ExportError for a head that cannot be exported (DP3) or a policy without normaliser statistics."""
    out_path = Path(out_path)
    if out_path.is_dir():
        raise ExportError(f"export_onnx: {out_path} is a folder; give the path of the .onnx file to write")
    return atomic_write_bytes(out_path, onnx_bytes(policy_or_checkpoint, sample_steps, use_ema, opset))


def onnx_bytes(policy_or_checkpoint, sample_steps: int | None = None, use_ema: bool = True,
               opset: int = OPSET) -> bytes:
    """The exported policy file's contents, as export_onnx writes them (OnnxPolicy.from_bytes runs them without a
    file)."""
    policy, info, ckpt_provenance = _resolve(policy_or_checkpoint, use_ema)
    graph = OneStepGraph(policy, sample_steps)
    model = _trace(graph, policy.config, opset)
    props = metadata.encode({
        "format": metadata.FORMAT, "format_version": metadata.FORMAT_VERSION,
        "policy_config": policy.config.to_dict(),
        "train_config": info.get("train_config"), "data": info.get("data", {}),
        "checkpoint": {k: info[k] for k in ("path", "step", "weights")} if "path" in info else None,
        "provenance": {"checkpoint": ckpt_provenance, "export": provenance()},
        "graph": {"sample_steps": graph.steps, "opset": opset, **metadata.io_shapes(policy.config)},
    })
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()


def _resolve(policy_or_checkpoint, use_ema: bool):
    """-> (policy, checkpoint_info dict, training provenance or None)."""
    if isinstance(policy_or_checkpoint, torch.nn.Module):
        policy = policy_or_checkpoint
        if not hasattr(policy, "config") or not hasattr(policy, "encode_obs"):
            raise ExportError(f"export_onnx: a {type(policy).__name__} is not a point-cloud policy "
                              f"(no config / encode_obs)")
        return policy, dict(getattr(policy, "checkpoint_info", {}) or {}), None
    from mfp.policies.training.checkpoint import load_policy, read_checkpoint

    ckpt = read_checkpoint(policy_or_checkpoint)           # refuses a bad file before any weights are built
    check_exportable(ckpt.policy_config)
    policy = load_policy(ckpt.path, use_ema=use_ema)
    return policy, policy.checkpoint_info, ckpt.meta.get("provenance")


def _trace(graph: OneStepGraph, config, opset: int):
    """torch.export-based ONNX export with a dynamic batch; returns the onnx ModelProto."""
    import onnx

    B, H, A, To = 2, config.horizon, config.action_dim, config.n_obs_steps
    example = (torch.zeros(B, To, config.n_points, 3), torch.zeros(B, To, config.agent_dim), torch.zeros(B, H, A))
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings(), _quiet_logger("torch.onnx"), torch.no_grad():
        warnings.simplefilter("ignore")                    # the exporter's progress and deprecation chatter
        program = torch.onnx.export(
            graph, example, input_names=["point_cloud", "agent_pos", "noise"], output_names=["action", "action_pred"],
            dynamic_shapes={"point_cloud": {0: batch}, "agent_pos": {0: batch}, "noise": {0: batch}},
            opset_version=opset, dynamo=True, external_data=False, verbose=False)
    model = program.model_proto                            # weights held inside the model (no external data)
    onnx.checker.check_model(model)
    return model


@contextlib.contextmanager
def _quiet_logger(name: str):
    """Only errors from logger `name` while inside (the exporter logs every optional op it skips)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
