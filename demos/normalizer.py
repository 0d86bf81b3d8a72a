"""Min-max normaliser to [-1, 1], an `nn.Module` whose statistics are buffers saved with the policy.

One normaliser holds one (scale, offset) pair per key ("action", "agent_pos", "point_cloud", ...):
    normalized = x * scale + offset,   x = (normalized - offset) / scale
Statistics are per feature (the last dimension). A feature whose range is below `range_eps` (a constant)
gets scale 1 and offset -value: it maps to 0 and is restored exactly, neither blowing up nor lost.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn


class MinMaxNormalizer(nn.Module):
    def __init__(self, range_eps: float = 1e-4):
        super().__init__()
        self.range_eps = range_eps
        self._keys: list[str] = []

    # -- fitting -----------------------------------------------------------------------------
    def fit(self, data: Mapping[str, np.ndarray | torch.Tensor]) -> "MinMaxNormalizer":
        """Fit one (scale, offset) per key from arrays (..., D): min -> -1, max -> +1 per feature."""
        for key, value in data.items():
            x = torch.as_tensor(np.asarray(value), dtype=torch.float32).reshape(-1, np.shape(value)[-1])
            if x.shape[0] == 0:
                raise ValueError(f"normaliser: no data to fit for key '{key}'")
            if not torch.isfinite(x).all():
                raise ValueError(f"normaliser: key '{key}' holds non-finite values")
            lo, hi = x.min(dim=0).values, x.max(dim=0).values
            self.set_stats(key, lo, hi)
        return self

    def set_stats(self, key: str, lo: torch.Tensor, hi: torch.Tensor) -> None:
        lo = torch.as_tensor(lo, dtype=torch.float32)
        hi = torch.as_tensor(hi, dtype=torch.float32)
        span = hi - lo
        constant = span < self.range_eps
        # Constant features: scale 1 and offset -value, so they map to 0 and back to their value.
        scale = torch.where(constant, torch.ones_like(span), 2.0 / span.clamp_min(self.range_eps))
        offset = torch.where(constant, -lo, -1.0 - lo * scale)
        self._set_buffer(f"{key}__scale", scale)
        self._set_buffer(f"{key}__offset", offset)
        self._set_buffer(f"{key}__min", lo)
        self._set_buffer(f"{key}__max", hi)
        if key not in self._keys:
            self._keys.append(key)

    def _set_buffer(self, name: str, value: torch.Tensor) -> None:
        if hasattr(self, name):
            getattr(self, name).data = value.clone()
        else:
            self.register_buffer(name, value.clone())

    # -- use -----------------------------------------------------------------------------------
    @property
    def keys(self) -> list[str]:
        return list(self._keys)

    def _stats(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        if key not in self._keys:
            raise KeyError(f"normaliser has no statistics for '{key}' (it holds {self._keys})")
        return getattr(self, f"{key}__scale"), getattr(self, f"{key}__offset")

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        scale, offset = self._stats(key)
        return x * scale.to(x.dtype) + offset.to(x.dtype)

    def unnormalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        scale, offset = self._stats(key)
        return (x - offset.to(x.dtype)) / scale.to(x.dtype)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Normalise every key of `batch` that has statistics; others pass through unchanged."""
        return {k: (self.normalize(k, v) if k in self._keys else v) for k, v in batch.items()}

    # -- persistence: keys are rebuilt from the state dict, so an empty normaliser can load one --
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        for name in list(state_dict):
            if not name.startswith(prefix) or not name.endswith("__scale"):
                continue
            key = name[len(prefix): -len("__scale")]
            stats = [state_dict.get(f"{prefix}{key}__{s}") for s in ("scale", "offset", "min", "max")]
            if any(s is None for s in stats):
                error_msgs.append(f"normaliser statistics for '{key}' are incomplete in the checkpoint")
                continue
            for s, v in zip(("scale", "offset", "min", "max"), stats):
                self._set_buffer(f"{key}__{s}", v)
            if key not in self._keys:
                self._keys.append(key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
