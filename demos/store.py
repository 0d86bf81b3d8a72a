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

Content checksums. zarr reads a missing chunk file as the array's fill value, silently, so the structure
alone cannot tell a damaged store from a sound one. `add_episode` therefore records, in the store's attrs
and before the commit point, the sha256 of each array's bytes for the new episode:
    attrs["checksums"] = {"algorithm": "sha256", "episodes": {key: [hex of episode 0, hex of episode 1, ...]}}
Entry i belongs to committed episode i; entries past the last committed episode were written by an append
that never committed (ignored, overwritten by the next append). A committed episode therefore always has
its checksum, except in stores written before checksums existed: their entries are absent (or None once
such a store is appended to), and `verify` reports those episodes as unverified, a warning, not a problem.
`verify()` / `scan()` read every committed episode back and compare (plus structure, NaN/inf, chunk files).
"""

from __future__ import annotations

import hashlib
import itertools
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

DATA_KEYS = ("point_cloud", "state", "action", "full_state")
REQUIRED_KEYS = ("point_cloud", "state", "action")
CHUNK_STEPS = 200
CHECKSUM_ATTR = "checksums"
CHECKSUM_ALGORITHM = "sha256"
NUMERIC_KINDS = "fiu"   # dtype kinds a policy input can hold: float, signed and unsigned integers


class DemoStoreError(ValueError):
    """A dataset that cannot be read as demonstrations; the message names the file, key and expected shape."""


def _expected_ndim(key: str) -> int:
    return 3 if key in ("point_cloud", "img") else 2


def episode_checksum(value: np.ndarray) -> str:
    """sha256 (hex) of an episode's array as stored: its C-order bytes."""
    return hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()


@dataclass
class ArrayStats:
    """What `scan` saw in one data array over the committed steps."""

    key: str
    shape: tuple
    dtype: str
    min: float | None = None        # over finite values (None: no finite value, or not numeric)
    max: float | None = None
    n_nan: int = 0
    n_inf: int = 0
    verified_episodes: int = 0      # episodes whose bytes match the checksum recorded at write time
    unverified_episodes: int = 0    # episodes without a recorded checksum (stores written before checksums)


@dataclass
class StoreScan:
    """Result of reading a whole store back: problems (it is not sound), warnings, per-array statistics."""

    path: Path
    n_episodes: int = 0
    n_steps: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    arrays: dict[str, ArrayStats] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


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
            raise DemoStoreError(f"{path}: not a zarr dataset, or its root metadata (.zgroup, .zattrs) is damaged "
                                 f"({type(e).__name__}: {_one_line(e)})") from e
        return cls(root, path, mode)

    # --- validation ---------------------------------------------------------------------------------
    def _require(self, group: str, key: str):
        try:
            return self.root[f"{group}/{key}"]
        except KeyError:
            raise DemoStoreError(f"{self.path}: missing key '{group}/{key}'") from None
        except Exception as e:  # a damaged .zarray / .zgroup: zarr raises several types
            raise DemoStoreError(f"{self.path}: cannot read '{group}/{key}' (damaged metadata in "
                                 f"{self.path / group / key}? {type(e).__name__}: {_one_line(e)})") from e

    def _committed_episode_ends(self) -> np.ndarray:
        arr = self._require("meta", "episode_ends")
        if arr.dtype.kind not in "iu":
            raise DemoStoreError(f"{self.path}: 'meta/episode_ends' must hold integers (int64), got dtype {arr.dtype}")
        try:
            ends = np.asarray(arr[:], dtype=np.int64)
        except Exception as e:  # a damaged chunk file
            raise DemoStoreError(f"{self.path}: cannot read 'meta/episode_ends' (damaged chunk file in "
                                 f"{self.path / 'meta' / 'episode_ends'}? {type(e).__name__}: {_one_line(e)})") from e
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
        try:
            data = self.root["data"]
        except KeyError:
            raise DemoStoreError(f"{self.path}: missing group 'data' (the DP3 layout keeps the arrays in data/)") \
                from None
        except Exception as e:  # a damaged data/.zgroup or data/.zattrs
            raise DemoStoreError(f"{self.path}: cannot read group 'data' (damaged metadata in {self.path / 'data'}? "
                                 f"{type(e).__name__}: {_one_line(e)})") from e
        lengths = {}
        for key in REQUIRED_KEYS:
            if n_steps == 0 and key not in data:
                continue  # an empty store gets its arrays with its first episode
            arr = self._require("data", key)
            if arr.ndim != _expected_ndim(key) or (key == "point_cloud" and arr.shape[-1] not in (3, 6)):
                shape = "(T, N, 3 or 6)" if key == "point_cloud" else "(T, D)"
                raise DemoStoreError(f"{self.path}: 'data/{key}' must have shape {shape}, got {arr.shape}")
            if arr.dtype.kind not in NUMERIC_KINDS:
                raise DemoStoreError(f"{self.path}: 'data/{key}' must hold numbers (float32), got dtype {arr.dtype}")
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
        sums: dict[str, str] = {}
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
            stored = value.astype(arr.dtype, copy=False)
            arr[start:] = stored
            sums[key] = episode_checksum(stored)
        # Checksums before the commit point: a committed episode always has its checksum (module docstring).
        self._record_checksums(sums)
        ends_arr = self.root["meta/episode_ends"]
        new_ends = np.append(self._ends, start + t_ep)
        ends_arr.resize((len(new_ends),))
        ends_arr[:] = new_ends  # the commit point
        self._ends = new_ends

    def update_attrs(self, **attrs: Any) -> None:
        self.root.attrs.update(attrs)

    # --- checksums --------------------------------------------------------------------------------------
    def recorded_checksums(self) -> dict[str, list]:
        """{key: [hex or None per committed episode]}; {} for a store written before checksums existed.
        A malformed record is a DemoStoreError."""
        record = self.root.attrs.get(CHECKSUM_ATTR)
        if record is None:
            return {}
        episodes = record.get("episodes") if isinstance(record, dict) else None
        if (not isinstance(record, dict) or record.get("algorithm") != CHECKSUM_ALGORITHM
                or not isinstance(episodes, dict)
                or not all(isinstance(v, list) for v in episodes.values())):
            raise DemoStoreError(f"{self.path}: attrs['{CHECKSUM_ATTR}'] is malformed (expected "
                                 f"{{'algorithm': '{CHECKSUM_ALGORITHM}', 'episodes': {{key: [hex, ...]}}}})")
        n = self.n_episodes
        return {k: (list(v[:n]) + [None] * (n - len(v))) for k, v in episodes.items()}

    def _record_checksums(self, sums: Mapping[str, str]) -> None:
        """Set the checksums of episode n_episodes (not committed yet); entries past it are dropped."""
        n = self.n_episodes
        try:
            known = self.recorded_checksums()
        except DemoStoreError:  # a malformed record: start again, older episodes become unverified
            known = {}
        episodes = {k: known.get(k, [None] * n)[:n] + [h] for k, h in sums.items()}
        self.root.attrs.update({CHECKSUM_ATTR: {"algorithm": CHECKSUM_ALGORITHM, "episodes": episodes}})

    # --- verification -----------------------------------------------------------------------------------
    def verify(self) -> list[str]:
        """Read every committed episode back; the problems found (empty: sound). See `scan`."""
        return self.scan().problems

    def scan(self) -> StoreScan:
        """Read the store again from disk and every committed episode of every array, and report.

        Problems (each names the file, the key and what is wrong): a structure `open` refuses (missing key,
        shape, dtype, episode_ends not strictly increasing, arrays shorter than episode_ends), an unreadable
        (truncated) chunk file, bytes that differ from the checksum recorded at write time (a missing chunk
        file is read as the fill value: the checksum catches it, and the missing file is named), NaN or
        inf in a float array, a malformed checksum record. Warnings: uncommitted data past the last episode,
        episodes without recorded checksums (older stores; a missing chunk file there is only a warning, since
        zarr also omits chunks that hold nothing but the fill value), an empty store."""
        scan = StoreScan(self.path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                fresh = DemoStore.open(self.path, "r")
            except DemoStoreError as e:
                scan.problems.append(str(e))
                return scan
        scan.warnings += [_one_line(w.message) for w in caught]
        scan.n_episodes, scan.n_steps = fresh.n_episodes, fresh.n_steps
        if fresh.n_episodes == 0:
            scan.warnings.append(f"{self.path}: holds no committed episode")
        try:
            recorded = fresh.recorded_checksums()
        except DemoStoreError as e:
            scan.problems.append(str(e))
            recorded = {}
        fresh._scan_episode_ends(scan)
        for key in fresh.keys():
            fresh._scan_array(key, recorded.get(key, [None] * fresh.n_episodes), scan)
        unverified = {k: s.unverified_episodes for k, s in scan.arrays.items() if s.unverified_episodes}
        if unverified:
            scan.warnings.append(
                f"{self.path}: no checksum recorded for {max(unverified.values())} of {fresh.n_episodes} episodes "
                f"(keys {sorted(unverified)}; written before checksums existed?): their content is unverified")
        return scan

    def _scan_episode_ends(self, scan: StoreScan) -> None:
        """Committed episodes lost from `meta/episode_ends` (its chunk file missing or replaced) look like an
        interrupted append; the checksum record and the chunk file tell the two apart."""
        where = f"{self.path}: 'meta/episode_ends'"
        record = self.root.attrs.get(CHECKSUM_ATTR)
        episodes = record.get("episodes") if isinstance(record, dict) else None
        n_recorded = max((len(v) for v in episodes.values() if isinstance(v, list)), default=0) \
            if isinstance(episodes, dict) else 0
        # An append records its checksums just before its commit, so one entry past the last episode is normal.
        if n_recorded > self.n_episodes + 1:
            scan.problems.append(f"{where} commits {self.n_episodes} episodes but checksums were recorded for "
                                 f"{n_recorded}: committed episodes were lost (its chunk file missing or replaced?)")
        arr = self.root["meta/episode_ends"]
        # A commit interrupted right after resizing leaves its new last entry unwritten: when that entry is alone
        # in its chunk, the chunk file does not exist yet. Any other missing chunk held committed ends.
        if arr.shape[0]:
            last_alone = (arr.shape[0] - 1) % arr.chunks[0] == 0
            files = self._chunk_files(arr, slice(0, arr.shape[0]))
            missing = [f for f in (files[:-1] if last_alone else files) if not f.exists()]
            if missing:
                scan.problems.append(f"{where}: chunk file(s) {', '.join(str(f) for f in missing)} missing: the "
                                     f"episode ends read as 0 and their episodes are lost")

    def _scan_array(self, key: str, sums: list, scan: StoreScan) -> None:
        where = f"{self.path}: 'data/{key}'"
        try:
            arr = self.root[f"data/{key}"]
        except Exception as e:
            scan.problems.append(f"{where}: cannot open ({type(e).__name__}: {_one_line(e)})")
            return
        stats = scan.arrays[key] = ArrayStats(key, (self.n_steps,) + tuple(arr.shape[1:]), str(arr.dtype))
        if arr.shape[0] < self.n_steps:  # keys besides the required ones (open checks those)
            scan.problems.append(f"{where} has {arr.shape[0]} steps but 'meta/episode_ends' ends at {self.n_steps}: "
                                 f"expected shape ({self.n_steps}, ...)")
            return
        kind = arr.dtype.kind
        lo, hi, nonfinite_eps = np.inf, -np.inf, []
        for i in range(self.n_episodes):
            s = self.episode_slice(i)
            try:
                value = arr[s]
            except Exception as e:  # a truncated or otherwise undecodable chunk file
                bad = self._unreadable_chunks(arr, s)
                files = ", ".join(str(f) for f in bad) if bad else "?"
                scan.problems.append(f"{where}: episode {i} (steps {s.start}..{s.stop - 1}) cannot be read: "
                                     f"damaged chunk file(s) {files} ({type(e).__name__}: {_one_line(e)})")
                continue
            expected = sums[i] if i < len(sums) else None
            missing = [f for f in self._chunk_files(arr, s) if not f.exists()]
            if expected is None:
                stats.unverified_episodes += 1
                if missing:
                    scan.warnings.append(
                        f"{where}: episode {i} (steps {s.start}..{s.stop - 1}, no recorded checksum): chunk file(s) "
                        f"{', '.join(str(f) for f in missing)} missing, read as the fill value {arr.fill_value}")
            elif episode_checksum(value) != expected:
                files = ", ".join(str(f) for f in (missing or self._chunk_files(arr, s)))
                cause = (f"chunk file(s) {files} missing (zarr reads them as the fill value {arr.fill_value})"
                         if missing else f"chunk file(s) {files} changed after writing")
                scan.problems.append(f"{where}: episode {i} (steps {s.start}..{s.stop - 1}) differs from the checksum "
                                     f"recorded when it was written: {cause}")
            else:
                stats.verified_episodes += 1
            if kind in "fc":
                n_nan, n_inf = int(np.isnan(value).sum()), int(np.isinf(value).sum())
                if n_nan or n_inf:
                    stats.n_nan, stats.n_inf = stats.n_nan + n_nan, stats.n_inf + n_inf
                    nonfinite_eps.append(i)
                finite = value[np.isfinite(value)] if (n_nan or n_inf) else value
            elif kind in "iub":
                finite = value
            else:
                finite = None
            if finite is not None and finite.size:
                lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
        if lo <= hi:
            stats.min, stats.max = lo, hi
        if nonfinite_eps:
            scan.problems.append(f"{where} holds {stats.n_nan} NaN and {stats.n_inf} inf values, in episode(s) "
                                 f"{nonfinite_eps[:10]}{' ...' if len(nonfinite_eps) > 10 else ''}")

    def _chunk_grid(self, arr, s: slice):
        """Chunk grid indices of `arr` that hold steps s (all chunks along the other axes)."""
        chunks = arr.chunks
        rows = range(s.start // chunks[0], (s.stop - 1) // chunks[0] + 1)
        others = [range(-(-n // c)) for n, c in zip(arr.shape[1:], chunks[1:])]
        return itertools.product(rows, *others)

    def _chunk_files(self, arr, s: slice) -> list[Path]:
        """The files that hold steps s of `arr` (zarr v2: <array>/<i>.<j>..., separator from its metadata)."""
        sep = getattr(arr.metadata, "dimension_separator", ".") or "."
        folder = self.path / arr.path
        return [folder / sep.join(str(i) for i in idx) for idx in self._chunk_grid(arr, s)]

    def _unreadable_chunks(self, arr, s: slice) -> list[Path]:
        bad = []
        for idx, f in zip(self._chunk_grid(arr, s), self._chunk_files(arr, s)):
            region = tuple(slice(i * c, (i + 1) * c) for i, c in zip(idx, arr.chunks))
            try:
                arr[region]
            except Exception:
                bad.append(f)
        return bad
