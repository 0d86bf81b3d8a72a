"""Adroit experts: the DAPG project's MLP policies (hand_dapg, Apache-2.0), stored as plain NumPy archives.

`weights/{task}.npz` holds float32 arrays (see `weights/README.md` for the source and licence):
    W0 (h, obs_dim), b0 (h,), W1 (h, h), b1 (h,), W2 (act_dim, h), b2 (act_dim,),
    in_shift, in_scale (obs_dim,), out_shift, out_scale, log_std (act_dim,)

The deterministic action for the env's own 1-D observation `o` (`AdroitEnv.full_state()`):
    x = (o - in_shift) / (in_scale + 1e-8)
    x = tanh(W0 @ x + b0); x = tanh(W1 @ x + b1)
    a = (W2 @ x + b2) * out_scale + out_shift
No exploration noise (log_std is unused) and no clipping: the env clips to [-1, 1] and records the
executed action.
"""

from __future__ import annotations

import pathlib
import zipfile

import numpy as np

WEIGHTS_DIR = pathlib.Path(__file__).parent / "weights"

# (obs_dim, act_dim) of gymnasium-robotics 1.4.2's AdroitHand*-v1.
ADROIT_DIMS = {"door": (39, 28), "hammer": (46, 26), "pen": (45, 24), "relocate": (39, 30)}

_KEYS = ("W0", "b0", "W1", "b1", "W2", "b2", "in_shift", "in_scale", "out_shift", "out_scale", "log_std")


class AdroitExpert:
    """`act(full_state) -> action` for one Adroit task, deterministic."""

    def __init__(self, task: str, path: str | pathlib.Path | None = None):
        if task not in ADROIT_DIMS:
            raise ValueError(f"unknown Adroit task {task!r}; valid tasks are: {', '.join(ADROIT_DIMS)}")
        self.task = task
        self.path = pathlib.Path(path) if path is not None else WEIGHTS_DIR / f"{task}.npz"
        self.obs_dim, self.act_dim = ADROIT_DIMS[task]
        params = _load(self.path)
        _check_shapes(params, self.path, self.obs_dim, self.act_dim)
        # Compute in float64: the env's observation is float64.
        p = {k: v.astype(np.float64) for k, v in params.items()}
        self._W = (p["W0"], p["W1"], p["W2"])
        self._b = (p["b0"], p["b1"], p["b2"])
        self._in_shift, self._in_scale = p["in_shift"], p["in_scale"]
        self._out_shift, self._out_scale = p["out_shift"], p["out_scale"]
        self.hidden = int(p["W0"].shape[0])

    def act(self, full_state: np.ndarray) -> np.ndarray:
        o = np.asarray(full_state, dtype=np.float64)
        if o.shape != (self.obs_dim,):
            raise ValueError(f"AdroitExpert({self.task}): full_state must have shape ({self.obs_dim},), got {o.shape}")
        x = (o - self._in_shift) / (self._in_scale + 1e-8)
        x = np.tanh(self._W[0] @ x + self._b[0])
        x = np.tanh(self._W[1] @ x + self._b[1])
        a = (self._W[2] @ x + self._b[2]) * self._out_scale + self._out_shift
        return a.astype(np.float32)

    __call__ = act


def _load(path: pathlib.Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"Adroit expert weights not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _KEYS if k not in z.files]
            if missing:
                raise ValueError(f"Adroit expert weights {path}: missing key(s) {missing} (has {sorted(z.files)})")
            return {k: np.asarray(z[k]) for k in _KEYS}
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ValueError(f"Adroit expert weights {path}: not a readable .npz archive ({e})") from e
    except ValueError as e:
        if str(path) in str(e):
            raise
        raise ValueError(f"Adroit expert weights {path}: cannot be read ({e})") from e


def _check_shapes(p: dict[str, np.ndarray], path: pathlib.Path, obs_dim: int, act_dim: int) -> None:
    h = p["W0"].shape[0] if p["W0"].ndim == 2 else -1
    expected = {
        "W0": (h, obs_dim), "b0": (h,), "W1": (h, h), "b1": (h,), "W2": (act_dim, h), "b2": (act_dim,),
        "in_shift": (obs_dim,), "in_scale": (obs_dim,),
        "out_shift": (act_dim,), "out_scale": (act_dim,), "log_std": (act_dim,),
    }
    for key, shape in expected.items():
        arr = p[key]
        if arr.shape != shape or h < 1:
            raise ValueError(
                f"Adroit expert weights {path}: key '{key}' has shape {arr.shape}, expected {shape} "
                f"(obs_dim={obs_dim}, act_dim={act_dim}, hidden={h})"
            )
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"Adroit expert weights {path}: key '{key}' has dtype {arr.dtype}, expected a float type")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"Adroit expert weights {path}: key '{key}' has non-finite values")
