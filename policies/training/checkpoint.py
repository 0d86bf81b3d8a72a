"""Checkpoints: one safetensors file per checkpoint, tensors + JSON metadata, written atomically, no pickle.

Layout of a checkpoint file (format "mfp-checkpoint", FORMAT_VERSION below):
    tensors   model/<name>            the policy's state_dict (network weights and the normaliser's statistics)
              ema/<param name>        EMA weights (when the run keeps an EMA)
              optim/<index>/<key>     AdamW state per parameter (step, exp_avg, exp_avg_sq)
              rng/<rank>/torch, rng/<rank>/cuda/<i>, rng/<rank>/numpy   RNG states of every process
    metadata  "format", "format_version", and "meta": one JSON document with the policy and train configs,
              the step and data position, optimiser param groups, scheduler and EMA counters, python/numpy RNG
              scalars, the data fingerprint and the dataset's point-cloud / camera description, eval history,
              provenance.
Reading never executes code from the file (safetensors + json), so a checkpoint from elsewhere is safe to open.

    policy = load_policy("runs/reach/last.safetensors")          # EMA weights, eval mode
    policy.checkpoint_info["data"]["point_cloud"]                  # how observations must be made
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mfp.demos.atomic import atomic_write_bytes, remove_stale_temp_files

FORMAT = "mfp-checkpoint"
FORMAT_VERSION = 1
LAST_NAME = "last.safetensors"
_CHECKPOINT_NAMES = r"last\.safetensors|step_\d+\.safetensors"   # file names the trainer writes (regex)


class CheckpointError(ValueError):
    """A file that cannot be used as a checkpoint (or not for this run); the message says why and names it."""


def checkpoint_bytes(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> bytes:
    """Serialise tensors + JSON-able metadata into the bytes of one checkpoint file."""
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    header = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "meta": json.dumps(meta, default=_jsonable)}
    return save(tensors, metadata=header)


def write_checkpoint(paths: list[Path], data: bytes) -> None:
    """Write the same checkpoint bytes to each path atomically (readers see the old file or the new, whole).

    last.safetensors is written first, so it is never older than a periodic checkpoint on disk: a process killed
    between the two writes resumes from the newest step it saved (the periodic file of that step is then missing).
    Temporary files of checkpoints left in the folder by an earlier, killed write are removed first (a run
    folder has one writer of checkpoints). A failed write (disk full, file size limit) raises AtomicWriteError,
    an OSError naming the file; the previous checkpoint is then unchanged and no temporary file is left."""
    paths = sorted((Path(p) for p in paths), key=lambda p: p.name != LAST_NAME)
    for folder in dict.fromkeys(p.parent for p in paths):
        remove_stale_temp_files(folder, _CHECKPOINT_NAMES)
    for path in paths:
        atomic_write_bytes(path, data)


def _jsonable(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"checkpoint metadata: not JSON serialisable: {type(value).__name__}")


@dataclass
class Checkpoint:
    """An opened, validated checkpoint file. Tensors are read on demand (`tensors(prefix)`)."""

    path: Path
    meta: dict[str, Any]
    keys: list[str]

    def tensors(self, prefix: str = "", device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """{name without prefix: tensor} for the keys that start with `prefix` (e.g. "model/")."""
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), framework="pt", device=str(device)) as f:
                return {k[len(prefix):]: f.get_tensor(k) for k in self.keys if k.startswith(prefix)}
        except Exception as e:  # the file changed or was damaged since it was opened
            raise CheckpointError(f"{self.path}: cannot read tensors '{prefix}*': {e}") from e

    def has(self, prefix: str) -> bool:
        return any(k.startswith(prefix) for k in self.keys)

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    def _config(self, key: str, cls):
        try:
            return getattr(cls, "from_saved", cls.from_dict)(self.meta[key])
        except (ValueError, TypeError, KeyError) as e:
            raise CheckpointError(f"{self.path}: its {key.replace('_', ' ')} is not valid for this code: {e}") from e

    @property
    def policy_config(self):
        from mfp.policies.config import PolicyConfig

        return self._config("policy_config", PolicyConfig)

    @property
    def train_config(self):
        from .config import TrainConfig

        return self._config("train_config", TrainConfig)


def resolve_checkpoint_path(path) -> Path:
    """A checkpoint file, or a run folder (-> its last.safetensors)."""
    path = Path(path)
    if path.is_dir():
        last = path / LAST_NAME
        if not last.exists():
            raise FileNotFoundError(f"{path}: a folder without a checkpoint ({LAST_NAME}); is it a training run?")
        return last
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    return path


def read_checkpoint(path) -> Checkpoint:
    """Open and validate a checkpoint: a safetensors file, whole, of this format and version."""
    from safetensors import safe_open

    path = resolve_checkpoint_path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            keys = list(f.keys())
    except Exception as e:
        msg = str(e)
        if "not fully covered" in msg or "invalid header length" in msg or "header too small" in msg:
            if path.stat().st_size > 0:
                raise CheckpointError(f"{path}: truncated or damaged checkpoint ({msg}); use an earlier one "
                                      f"(periodic checkpoints sit next to it)") from e
        raise CheckpointError(f"{path}: not an mfp checkpoint (not a safetensors file: {msg})") from e
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mfp checkpoint (a safetensors file without the '{FORMAT}' header; "
                              f"weights exported by another tool?)")
    version = header.get("format_version")
    if version != str(FORMAT_VERSION):
        raise CheckpointError(f"{path}: checkpoint format version {version}, this code reads version {FORMAT_VERSION}; "
                              f"load it with the mfp version that wrote it")
    try:
        meta = json.loads(header["meta"])
    except (KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: damaged checkpoint metadata ({e})") from e
    return Checkpoint(path, meta, keys)


def load_policy(ckpt_path, use_ema: bool = True, device: str | torch.device = "cpu"):
    """A policy ready for evaluation / deployment from a checkpoint file or run folder.

    use_ema: the EMA weights (what MP1 / DP3 evaluate); a run without EMA falls back to its weights with a
    warning. The policy is in eval mode; `policy.checkpoint_info` holds the step, configs and the dataset's
    point-cloud / camera description (so deployment code never copies those constants)."""
    from mfp.policies.factory import build_policy

    ckpt = read_checkpoint(ckpt_path)
    policy = build_policy(ckpt.policy_config)
    state = ckpt.tensors("model/")
    try:
        policy.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())  # torch's message spans lines: one line for the CLI
        raise CheckpointError(f"{ckpt.path}: the weights do not fit the policy its config describes: {detail}") from e
    if use_ema:
        if ckpt.has("ema/"):
            ema = ckpt.tensors("ema/")
            copy_named_parameters(policy, ema, ckpt.path)
        else:
            warnings.warn(f"{ckpt.path}: the run kept no EMA weights; using its training weights", stacklevel=2)
    policy.to(device).eval()
    policy.checkpoint_info = {
        "path": str(ckpt.path), "step": ckpt.step, "weights": "ema" if use_ema and ckpt.has("ema/") else "model",
        "policy_config": ckpt.meta["policy_config"], "train_config": ckpt.meta["train_config"],
        "data": ckpt.meta.get("data", {}),
    }
    return policy


@torch.no_grad()
def copy_named_parameters(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source) -> None:
    """Copy {parameter name: tensor} into module's parameters; every parameter must be present."""
    params = dict(module.named_parameters())
    missing = sorted(set(params) - set(tensors))
    unexpected = sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise CheckpointError(f"{source}: EMA weights do not match the policy (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]})")
    for name, p in params.items():
        if tensors[name].shape != p.shape:
            raise CheckpointError(f"{source}: EMA weight '{name}' has shape {tuple(tensors[name].shape)}, "
                                  f"the policy's is {tuple(p.shape)}")
        p.copy_(tensors[name].to(p.device, p.dtype))
