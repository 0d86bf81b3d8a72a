"""`TrainConfig`: every setting of a training run, validated at construction, saved in each checkpoint.

Defaults follow the MP1 / DP3 recipe (ALGORITHMS.md "Training recipe") where it fits a CPU (except lr: 3e-4, not
1e-4, which the one-step probes and the suite preferred at CPU budgets of hundreds of steps): AdamW,
betas (0.95, 0.999), weight decay 1e-6, cosine schedule with 500 warm-up steps, EMA (power 0.75, max 0.9999).
The batch default is 64 (MP1 128, DP3 256) to keep CPU steps short; `batch_size` is per process under DDP.

    cfg = TrainConfig(steps=3000, batch_size=128, amp="auto")   # auto: bf16 where native (precision.py)
    TrainConfig.from_dict(cfg.to_dict()) == cfg
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any
from ..config_checks import check_fields

AMP_MODES = ("none", "bf16", "auto")   # "auto" is resolved when training starts (precision.resolve_amp)
DEVICES = ("auto", "cpu", "cuda")

# Fields that change the training trajectory: a resumed run must keep them (others, like how often to log,
# may change between the interrupted run and its resumption).
TRAJECTORY_FIELDS = ("steps", "batch_size", "lr", "betas", "weight_decay", "adam_eps", "warmup_steps", "grad_clip",
                     "ema", "ema_power", "ema_max_decay", "ema_min_decay", "ema_inv_gamma", "ema_update_after_step",
                     "seed", "val_ratio", "amp")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


@dataclass
class TrainConfig:
    steps: int = 1000                     # optimiser steps in the whole run (the cosine schedule spans them)
    batch_size: int = 64                  # per process; MP1 128, DP3 256
    lr: float = 3e-4                      # MP1 / DP3: 1e-4; 3e-4 for short CPU budgets (2026-12-01 suite)
    betas: tuple[float, float] = (0.95, 0.999)
    weight_decay: float = 1e-6
    adam_eps: float = 1e-8
    warmup_steps: int = 500               # linear warm-up; clamped to steps // 10 for short runs
    grad_clip: float = 1.0                # max global gradient norm; 0 turns clipping off
    ema: bool = True                      # keep an EMA of the weights (used for evaluation)
    ema_power: float = 0.75               # decay = 1 - (1 + step / inv_gamma) ** -power, within [min, max]
    ema_max_decay: float = 0.9999
    ema_min_decay: float = 0.0
    ema_inv_gamma: float = 1.0
    ema_update_after_step: int = 0
    seed: int = 0                         # torch / numpy / python RNGs, data order, validation split
    val_ratio: float = 0.1                # held-out episodes (at least one when > 0)
    val_every: int = 500                  # steps between validation losses (0: never)
    ckpt_every: int = 1000                # steps between periodic checkpoints (the last step always saves)
    keep_checkpoints: int = 0             # periodic checkpoints kept besides `last` (0: all)
    log_every: int = 10                   # steps between TensorBoard scalars
    amp: str = "none"                     # "bf16": bfloat16 autocast (the MeanFlow JVP stays float32); "auto":
                                          # bf16 where the device runs it natively, else "none"; saved resolved
    amp_reason: str = ""                  # why `amp` was chosen (filled when training starts; saved with the run)
    num_workers: int = 0                  # DataLoader worker processes
    max_nonfinite_steps: int = 10         # consecutive non-finite losses / gradients before training stops
    device: str = "auto"                  # "auto": cuda when available, else cpu
    reuse_cpu_memory: bool = True         # CPU: reuse freed activations from the heap (cpu_memory.py; same maths)

    def __post_init__(self) -> None:
        check_fields(self)
        self.betas = tuple(float(b) for b in self.betas)
        for name in ("steps", "batch_size"):
            _check(isinstance(getattr(self, name), int) and getattr(self, name) >= 1,
                   f"TrainConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("warmup_steps", "val_every", "ckpt_every", "keep_checkpoints", "log_every", "num_workers",
                     "ema_update_after_step", "max_nonfinite_steps"):
            _check(isinstance(getattr(self, name), int) and getattr(self, name) >= 0,
                   f"TrainConfig.{name} must be a non-negative integer, got {getattr(self, name)!r}")
        _check(self.lr > 0, f"TrainConfig.lr must be > 0, got {self.lr}")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
               f"TrainConfig.betas must be two values in [0, 1), got {self.betas}")
        _check(self.weight_decay >= 0, f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.adam_eps > 0, f"TrainConfig.adam_eps must be > 0, got {self.adam_eps}")
        _check(self.grad_clip >= 0, f"TrainConfig.grad_clip must be >= 0 (0: off), got {self.grad_clip}")
        _check(0 <= self.ema_min_decay <= self.ema_max_decay < 1,
               f"TrainConfig EMA decays must satisfy 0 <= ema_min_decay ({self.ema_min_decay}) <= ema_max_decay "
               f"({self.ema_max_decay}) < 1")
        _check(self.ema_power > 0 and self.ema_inv_gamma > 0,
               f"TrainConfig.ema_power and ema_inv_gamma must be > 0, got {self.ema_power}, {self.ema_inv_gamma}")
        _check(0 <= self.val_ratio < 1, f"TrainConfig.val_ratio must lie in [0, 1), got {self.val_ratio}")
        _check(self.amp in AMP_MODES, f"TrainConfig.amp must be one of {AMP_MODES}, got {self.amp!r}")
        _check(self.device in DEVICES, f"TrainConfig.device must be one of {DEVICES}, got {self.device!r}")
        _check(self.max_nonfinite_steps >= 1,
               f"TrainConfig.max_nonfinite_steps must be >= 1, got {self.max_nonfinite_steps}")

    @property
    def effective_warmup_steps(self) -> int:
        """Warm-up actually used: `warmup_steps`, at most a tenth of the run (a 200-step run warms up for 20)."""
        return min(self.warmup_steps, self.steps // 10)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        if not isinstance(data, dict):
            raise ValueError(f"TrainConfig: expected a dict, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        _check(not unknown, f"TrainConfig: unknown field(s) {sorted(unknown)}; known: {sorted(names)}")
        return cls(**data)

    def trajectory_differences(self, other: "TrainConfig") -> dict[str, tuple]:
        """{field: (self's, other's)} for the fields that would change the training trajectory."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in TRAJECTORY_FIELDS if a[k] != b[k]}
