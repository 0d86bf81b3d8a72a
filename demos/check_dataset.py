"""`mfp check DATASET`: is a demonstration store sound, and what does it hold.

    report = check_dataset("data/drawer-open.zarr")
    report.ok, report.problems, report.warnings    # problems: not sound; warnings: worth knowing
    print("\n".join(report.lines()))               # what `mfp check` prints

The content checks are `DemoStore.scan` (structure, every episode read back against the checksums recorded at
write time, NaN/inf); this module adds what the attributes promise about the data (point count, seeds) and the
summary. `CheckReport` is shared with the checkpoint and run-folder checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .seeds import EVAL_SEED_START
from .store import DemoStore, DemoStoreError, StoreScan


def one_line(text: Any) -> str:
    """Any message as one line (messages from libraries may hold newlines)."""
    return " ".join(str(text).split())


@dataclass
class CheckReport:
    """The result of checking one thing (dataset, checkpoint or run folder): sound when it has no problem."""

    kind: str                                        # "dataset", "checkpoint" or "run"
    path: Path
    info: list[str] = field(default_factory=list)    # what it holds, one line each
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)   # JSON-able summary
    children: list["CheckReport"] = field(default_factory=list)   # a run folder's checkpoints

    @property
    def ok(self) -> bool:
        return not self.problems and all(c.ok for c in self.children)

    def problem(self, msg: Any) -> None:
        self.problems.append(one_line(msg))

    def warn(self, msg: Any) -> None:
        self.warnings.append(one_line(msg))

    def all_problems(self) -> list[str]:
        return self.problems + [p for c in self.children for p in c.all_problems()]

    def lines(self, indent: str = "") -> list[str]:
        n = len(self.all_problems())
        verdict = "OK" if self.ok else f"NOT SOUND ({n} problem{'s' if n != 1 else ''})"
        out = [f"{indent}{self.kind} {self.path}: {verdict}"]
        out += [f"{indent}  {line}" for line in self.info]
        for child in self.children:
            out += child.lines(indent + "  ")
        out += [f"{indent}  warning: {w}" for w in self.warnings]
        out += [f"{indent}  problem: {p}" for p in self.problems]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path), "ok": self.ok, "info": self.info,
                "problems": self.problems, "warnings": self.warnings, "details": self.details,
                "children": [c.to_dict() for c in self.children]}


def looks_like_dataset(path) -> bool:
    """A zarr (v2) store folder: what `mfp check` treats as a dataset."""
    path = Path(path)
    return path.is_dir() and (path.suffix == ".zarr" or (path / ".zgroup").exists() or (path / "zarr.json").exists())


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.6g}"


def _range(values: list) -> str:
    return f"{min(values)}..{max(values)}" if values else "none"


def check_dataset(path) -> CheckReport:
    """Open, read back and summarise a dataset; never raises for a damaged one (the report says what is wrong)."""
    path = Path(path)
    report = CheckReport("dataset", path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such dataset")
    try:
        store = DemoStore.open(path, "r")
    except DemoStoreError as e:
        report.problem(e)
        return report
    scan = store.scan()
    for p in scan.problems:
        report.problem(p)
    for w in scan.warnings:
        report.warn(w)
    attrs = store.attrs
    _summarise(report, store, scan, attrs)
    _check_attrs(report, store, scan, attrs)
    return report


def _summarise(report: CheckReport, store: DemoStore, scan: StoreScan, attrs: dict) -> None:
    lengths = np.diff(np.concatenate([[0], store.episode_ends])).tolist()
    report.info.append(f"task: {attrs.get('task', '(not recorded)')}")
    report.info.append(f"episodes: {store.n_episodes}, steps: {store.n_steps}"
                       + (f", episode length {min(lengths)}..{max(lengths)} (mean {np.mean(lengths):.1f})"
                          if lengths else ""))
    pc = attrs.get("point_cloud")
    if isinstance(pc, dict):
        report.info.append(f"point cloud: {pc.get('num_points')} points, crop box {pc.get('crop_low')} .. "
                           f"{pc.get('crop_high')}")
    camera = attrs.get("camera")
    if isinstance(camera, dict):
        report.info.append("camera: " + ", ".join(f"{k}" + (f" {v}" if isinstance(v, (str, int, float)) else "")
                                                  for k, v in camera.items()))
    seeds, attempted = attrs.get("episode_seeds"), attrs.get("attempted_seeds")
    if isinstance(seeds, list):
        report.info.append(f"seeds: {len(seeds)} episode seeds {_range(seeds)}"
                           + (f", {len(attempted)} attempted" if isinstance(attempted, list) else ""))
    versions = (attrs.get("provenance") or {}).get("versions") if isinstance(attrs.get("provenance"), dict) else None
    if isinstance(versions, dict):
        report.info.append("versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    for key, label in (("sources", "imported recordings"), ("control_runs", "control runs")):
        if isinstance(attrs.get(key), (list, dict)):
            report.info.append(f"{label}: {len(attrs[key])}")
    shown = {"task", "point_cloud", "camera", "episode_seeds", "attempted_seeds", "provenance", "sources",
             "control_runs", "checksums"}
    others = sorted(set(attrs) - shown)
    if others:
        report.info.append(f"other attrs: {', '.join(others)}")
    width = max((len(k) for k in scan.arrays), default=0)
    for key, s in sorted(scan.arrays.items()):
        sums = (f"checksums {s.verified_episodes}/{store.n_episodes} verified"
                + (f", {s.unverified_episodes} unrecorded" if s.unverified_episodes else ""))
        report.info.append(f"data/{key:<{width}} {str(s.shape):<16} {s.dtype:<8} min {_fmt(s.min)} max {_fmt(s.max)}"
                           f"  NaN {s.n_nan} inf {s.n_inf}  {sums}")
    report.details = {
        "task": attrs.get("task"), "episodes": store.n_episodes, "steps": store.n_steps,
        "episode_lengths": lengths, "point_cloud": pc if isinstance(pc, dict) else None,
        "arrays": {k: {"shape": list(s.shape), "dtype": s.dtype, "min": s.min, "max": s.max, "nan": s.n_nan,
                       "inf": s.n_inf, "verified_episodes": s.verified_episodes,
                       "unverified_episodes": s.unverified_episodes} for k, s in scan.arrays.items()},
    }


def _check_attrs(report: CheckReport, store: DemoStore, scan: StoreScan, attrs: dict) -> None:
    """What the attributes promise about the data."""
    where = f"{store.path}: attrs"
    if "task" not in attrs:
        report.warn(f"{where} record no task (training and evaluation read it from here)")
    pc = attrs.get("point_cloud")
    cloud = scan.arrays.get("point_cloud")
    if isinstance(pc, dict) and cloud is not None and store.n_episodes and pc.get("num_points") is not None:
        if pc.get("num_points") != cloud.shape[1]:
            report.problem(f"{where}['point_cloud']['num_points'] = {pc.get('num_points')}, but 'data/point_cloud' "
                           f"holds {cloud.shape[1]} points per step: observations made from these attrs would not "
                           f"match the data")
    seeds = attrs.get("episode_seeds")
    if isinstance(seeds, list):
        # `collect` records a seed just before committing its episode: one extra seed is an interrupted append.
        if len(seeds) < store.n_episodes:
            report.warn(f"{where}['episode_seeds'] holds {len(seeds)} seeds for {store.n_episodes} episodes")
        elif len(seeds) > store.n_episodes + 1:
            report.warn(f"{where}['episode_seeds'] holds {len(seeds)} seeds for {store.n_episodes} episodes")
        late = [s for s in seeds[: store.n_episodes] if not isinstance(s, int) or s >= EVAL_SEED_START]
        if late:
            report.problem(f"{where}['episode_seeds'] holds {late[:5]}: demonstration seeds must be integers below "
                           f"the evaluation seeds ({EVAL_SEED_START}), or evaluation would replay demonstrations")
