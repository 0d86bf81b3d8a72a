"""`OnnxPolicy`: an exported policy file (export_onnx) run by ONNX Runtime behind the torch policy's interface.

    policy = OnnxPolicy("runs/drawer-mf/policy.onnx")             # 1 intra-op thread (batch-1 control)
    out = policy.predict_action({"point_cloud": pc, "agent_pos": pos}, generator=g)   # or noise=...
    out["action"]        (B, n_action_steps, A)   the actions to execute now, environment units
    out["action_pred"]   (B, H, A)                the whole predicted window

What PolicyRunner (eval/sim/rollout.py) uses of a policy is here with the same meaning: `config` (a PolicyConfig),
`to(device)` and `eval()` (return the policy; CPU only), `reset()`, `predict_action(obs_dict, generator=...)`, and
`checkpoint_info` (task and point-cloud settings, as load_policy sets them). The sampling noise is drawn exactly as
PointCloudPolicy.predict_action draws it (torch.randn(B, H, A) from `generator`, float32), so for the same
generator state the two give the same actions. Torch tensors in give torch tensors out, numpy in gives numpy out.
An OnnxPolicy pickles (for evaluation worker processes) with its model bytes; each process opens its own session.
`OnnxPolicy.from_bytes(onnx_bytes(ckpt), ckpt)` runs a policy exported in memory, never written to a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import metadata
from .graph import ExportError

INPUTS = ("point_cloud", "agent_pos")


class OnnxPolicy:
    def __init__(self, path, threads: int = 1):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such exported policy (.onnx) file")
        self._setup(path, threads, path.read_bytes(), from_file=True)

    @classmethod
    def from_bytes(cls, model_bytes: bytes, source, threads: int = 1) -> "OnnxPolicy":
        """A policy from an exported file's contents (onnx_export.onnx_bytes); `source` (e.g. the checkpoint it was
        exported from) names it in messages, and checkpoint_info["onnx"] is None (no file)."""
        policy = cls.__new__(cls)
        policy._setup(Path(source), threads, bytes(model_bytes), from_file=False)
        return policy

    def _setup(self, path: Path, threads: int, model_bytes: bytes, from_file: bool) -> None:
        self.path, self.from_file = path, from_file
        self.threads = int(threads)
        if self.threads < 1:
            raise ValueError(f"OnnxPolicy threads must be >= 1, got {threads}")
        self._model_bytes = model_bytes
        self._open()

    # --- the session and what the file says about itself ---------------------------------------------------
    def _open(self) -> None:
        import onnxruntime as ort

        from mfp.policies.config import PolicyConfig

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3                       # errors only
        try:
            self._session = ort.InferenceSession(self._model_bytes, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ExportError(f"{self.path}: ONNX Runtime cannot load it as a model: {e}") from e
        try:
            self.metadata: dict[str, Any] = metadata.decode(self._session.get_modelmeta().custom_metadata_map,
                                                            str(self.path))
            self.config = PolicyConfig.from_dict(self.metadata["policy_config"])
        except ValueError as e:
            raise ExportError(str(e)) from e
        self.shapes = metadata.io_shapes(self.config)
        ckpt = {"path": None, "step": None, "weights": None, **(self.metadata["checkpoint"] or {})}
        self.checkpoint_info = {**ckpt, "policy_config": self.metadata["policy_config"],
                                "train_config": self.metadata["train_config"], "data": self.metadata["data"],
                                "onnx": str(self.path) if self.from_file else None}

    def __getstate__(self) -> dict:
        return {"path": self.path, "from_file": self.from_file, "threads": self.threads,
                "_model_bytes": self._model_bytes}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open()

    # --- the parts of the torch module interface that runners use -----------------------------------------
    def to(self, device) -> "OnnxPolicy":
        if torch.device(device).type != "cpu":
            raise ValueError(f"{self.path}: the ONNX runtime runs on the CPU here, not on {device}")
        return self

    def eval(self) -> "OnnxPolicy":
        return self

    def reset(self) -> None:
        """Nothing is queued inside the policy (PolicyRunner keeps the action queue)."""

    # --- inference ----------------------------------------------------------------------------------------------
    def predict_action(self, obs_dict: dict, generator: torch.Generator | None = None,
                       noise: torch.Tensor | np.ndarray | None = None) -> dict:
        """obs_dict {point_cloud (B, To, N, 3), agent_pos (B, To, d)} raw -> {"action", "action_pred"}.
        `noise` (B, H, A) is the sampling noise itself; without it, it is drawn from `generator` as the torch
        policy draws it."""
        as_torch = any(isinstance(obs_dict.get(k), torch.Tensor) for k in INPUTS)
        feeds = {k: self._input(obs_dict, k) for k in INPUTS}
        B = feeds["point_cloud"].shape[0]
        if feeds["agent_pos"].shape[0] != B:
            raise ValueError(f"{self.path}: point_cloud has batch {B} but agent_pos has {feeds['agent_pos'].shape[0]}")
        cfg = self.config
        if noise is None:
            device = "cpu" if generator is None else generator.device
            noise = torch.randn(B, cfg.horizon, cfg.action_dim, generator=generator, dtype=torch.float32,
                                device=device)
        feeds["noise"] = self._input({"noise": noise}, "noise", batch=B)
        action, action_pred = self._session.run(["action", "action_pred"], feeds)
        out = {"action": action, "action_pred": action_pred}
        return {k: torch.from_numpy(v) for k, v in out.items()} if as_torch else out

    def _input(self, values: dict, key: str, batch: int | None = None) -> np.ndarray:
        """values[key] as a float32 C-contiguous array of the graph's shape for `key`, or a clear error."""
        expected = self.shapes["inputs"][key]
        words = "(" + ", ".join(str(d) for d in expected) + ")"
        if key not in values or values[key] is None:
            raise KeyError(f"{self.path}: the observation has no '{key}' (expected {words})")
        value = values[key]
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        value = np.ascontiguousarray(value, dtype=np.float32)
        shape = value.shape
        fits = len(shape) == len(expected) and all(e == "B" or e == s for e, s in zip(expected, shape))
        if not fits or (batch is not None and shape[0] != batch):
            b = "B" if batch is None else f"B={batch}"
            raise ValueError(f"{self.path}: '{key}' must have shape {words.replace('B', b, 1)}, got {tuple(shape)}")
        return value
