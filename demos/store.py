"""The demonstration store: one class owns the zarr store (DP3-compatible layout); everything reads through it.

Layout (zarr v2 format, readable by DP3/diffusion_policy):
    data/point_cloud (T, N, 3) float32    data/state (T, d_agent) float32    data/action (T, d_act) float32
    data/full_state  (T, d_full) float32  meta/episode_ends (E,) int64, cumulative end index of each episode
    attrs: task, camera, point_cloud config, seeds, package versions, ...

Crash safety. zarr's LocalStore writes every file atomically (temporary file + rename), and an episode is
committed only when `meta/episode_ends` names it: data arrays are written first, episode_ends last. A
process killed in between leaves data past the last committed end (ignored, and cut off at the next
append) or an `episode_ends` whose new last entry was not written yet (read back as the fill value 0,
not increasing: ignored and repaired the same way). Committed episodes are never rewritten except the
chunk they share with the next episode, and that rewrite is itself atomic.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np

DATA_KEYS = ("point_cloud", "state", "action", "full_state")
REQUIRED_KEYS = ("point_cloud", "state", "action")
CHUNK_STEPS = 200


class DemoStoreError(ValueError):
    """A dataset that cannot be read as demonstrations; the message names the file, key and expected shape."""


def _expected_ndim(key: str) -> int:
    return 3 if key in ("point_cloud", "img") else 2


class DemoStore:
    """Episodes as flat arrays + `meta/episode_ends`, over a zarr store on disk."""

    def __init__(self, root, path: Path, mode: str):
        self.root = root
        self.path = Path(path)
        self.mode = mode
        self._ends = self._committed_episode_ends()
        self._validate()

    # --- opening ----------------------------------------------------------------------------------
    @classmethod
    def create(cls, path, attrs: Mapping[str, Any] | None = None, overwrite: bool = False) -> "DemoStore":
        """A new, empty store at `path` (an existing one is an error unless `overwrite`)."""
        import zarr

        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path}: a dataset already exists (append to it, or choose another --out)")
        root = zarr.open_group(str(path), mode="w" if overwrite else "w-", zarr_format=2)
        root.create_group("data")
        meta = root.create_group("meta")
        meta.create_array("episode_ends", shape=(0,), chunks=(4096,), dtype="int64", fill_value=0)
        root.attrs.update(dict(attrs or {}))
        return cls(root, path, "a")

    @classmethod
    def open(cls, path, mode: str = "r") -> "DemoStore":
        """Open an existing store, read-only ("r") or for appending ("a"); validated on opening."""
        import zarr

        path = Path(path)
        if not path.exists():
            raise DemoStoreError(f"{path}: no such dataset")
        if mode == "a":
            for partial in path.rglob("*.partial"):  # leftovers of a write interrupted before its rename
                partial.unlink(missing_ok=True)
        try:
            root = zarr.open_group(str(path), mode="r" if mode == "r" else "r+", zarr_format=2)
        except Exception as e:  # zarr raises several types for a non-store
            raise DemoStoreError(f"{path}: not a zarr dataset ({type(e).__name__}: {e})") from e
        return cls(root, path, mode)

    # --- validation ---------------------------------------------------------------------------------
    def _require(self, group: str, key: str):
        try:
            return self.root[f"{group}/{key}"]
        except KeyError:
            raise DemoStoreError(f"{self.path}: missing key '{group}/{key}'") from None

    def _committed_episode_ends(self) -> np.ndarray:
        ends = np.asarray(self._require("meta", "episode_ends")[:], dtype=np.int64)
        if ends.ndim != 1:
            raise DemoStoreError(f"{self.path}: 'meta/episode_ends' must be 1-D (E,), got shape {ends.shape}")
        return ends

    def _validate(self) -> None:
        ends = self._ends
        # A commit interrupted between resizing 'meta/episode_ends' and writing its new entry leaves
        # trailing fill values (0): those episodes were never committed.
        n_committed = len(ends)
        while n_committed > 0 and ends[n_committed - 1] == 0:
            n_committed -= 1
        ends = self._ends = ends[:n_committed]
        if np.any(ends <= 0) or np.any(np.diff(ends) <= 0):
            raise DemoStoreError(
                f"{self.path}: 'meta/episode_ends' must hold strictly increasing positive end indices (E,), "
                f"got {ends.tolist()[:20]}"
            )
        n_steps = self.n_steps
        lengths = {}
        for key in REQUIRED_KEYS:
            if n_steps == 0 and key not in self.root["data"]:
                continue  # an empty store gets its arrays with its first episode
            arr = self._require("data", key)
            if arr.ndim != _expected_ndim(key) or (key == "point_cloud" and arr.shape[-1] not in (3, 6)):
                shape = "(T, N, 3 or 6)" if key == "point_cloud" else "(T, D)"
                raise DemoStoreError(f"{self.path}: 'data/{key}' must have shape {shape}, got {arr.shape}")
            if arr.shape[0] < n_steps:
                raise DemoStoreError(
                    f"{self.path}: 'data/{key}' has {arr.shape[0]} steps but 'meta/episode_ends' ends at {n_steps}: "
                    f"expected shape ({n_steps}, ...)"
                )
            lengths[key] = arr.shape[0]
        if any(n > n_steps for n in lengths.values()):
            # Data written by an append that was interrupted before its commit: ignored, cut at the next append.
            warnings.warn(
                f"{self.path}: ignoring uncommitted steps past the last episode end {n_steps} "
                f"(array lengths {lengths}; an interrupted append?)", stacklevel=3,
            )

    # --- reading --------------------------------------------------------------------------------------
    @property
    def episode_ends(self) -> np.ndarray:
        return self._ends.copy()

    @property
    def n_episodes(self) -> int:
        return len(self._ends)

    @property
    def n_steps(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    @property
    def attrs(self) -> dict:
        return dict(self.root.attrs)

    def keys(self) -> list[str]:
        return sorted(self.root["data"].array_keys())

    def episode_slice(self, i: int) -> slice:
        if not -self.n_episodes <= i < self.n_episodes:
            raise IndexError(f"{self.path}: episode {i} out of range (0..{self.n_episodes - 1})")
        i %= self.n_episodes
        start = 0 if i == 0 else int(self._ends[i - 1])
        return slice(start, int(self._ends[i]))

    def get_episode(self, i: int, keys=None) -> dict[str, np.ndarray]:
        s = self.episode_slice(i)
        return {k: self.root[f"data/{k}"][s] for k in (keys or self.keys())}

    def read(self, key: str) -> np.ndarray:
        """All committed steps of one array, (T, ...)."""
        return self._require("data", key)[: self.n_steps]

    # --- writing ---------------------------------------------------------------------------------------
    def add_episode(self, episode: Mapping[str, np.ndarray]) -> None:
        """Append one episode {key: (T_ep, ...)}; keys and per-step shapes must match the store's."""
        if self.mode != "a":
            raise DemoStoreError(f"{self.path}: opened read-only")
        missing = [k for k in REQUIRED_KEYS if k not in episode]
        if missing:
            raise DemoStoreError(f"episode is missing keys {missing} (needs {list(REQUIRED_KEYS)})")
        lengths = {k: len(v) for k, v in episode.items()}
        if len(set(lengths.values())) != 1 or 0 in lengths.values():
            raise DemoStoreError(f"episode arrays must share one non-zero length, got {lengths}")
        existing = set(self.keys())
        if existing and existing != set(episode):
            raise DemoStoreError(f"{self.path}: episode keys {sorted(episode)} differ from the dataset's {sorted(existing)}")
        t_ep = lengths[next(iter(lengths))]
        start = self.n_steps
        data = self.root["data"]
        for key, value in episode.items():
            value = np.asarray(value)
            if value.ndim != _expected_ndim(key) and key in REQUIRED_KEYS:
                raise DemoStoreError(f"episode '{key}' has shape {value.shape}; expected {_expected_ndim(key)} dims")
            if key not in existing:
                data.create_array(key, shape=(0,) + value.shape[1:], chunks=(CHUNK_STEPS,) + value.shape[1:],
                                  dtype=value.dtype)
            arr = data[key]
            if arr.shape[1:] != value.shape[1:]:
                raise DemoStoreError(
                    f"{self.path}: episode '{key}' has per-step shape {value.shape[1:]}, the dataset's is {arr.shape[1:]}"
                )
            arr.resize((start + t_ep,) + arr.shape[1:])  # also cuts off uncommitted data past `start`
            arr[start:] = value.astype(arr.dtype, copy=False)
        ends_arr = self.root["meta/episode_ends"]
        new_ends = np.append(self._ends, start + t_ep)
        ends_arr.resize((len(new_ends),))
        ends_arr[:] = new_ends  # the commit point
        self._ends = new_ends

    def update_attrs(self, **attrs: Any) -> None:
        self.root.attrs.update(attrs)
