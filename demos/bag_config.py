"""The topics.yaml of `mfp import-bag`: parsed with yaml.safe_load into a validated, frozen dataclass.

    task: real/arm-pick                       # dataset task name (required)
    topics:
      depth: /camera/depth/image_rect_raw     # sensor_msgs/Image, 16UC1 (mm) or 32FC1 (m) ...
      camera_info: /camera/depth/camera_info  # ... with its sensor_msgs/CameraInfo (intrinsics K)
      # point_cloud: /camera/depth/points     # ... or a sensor_msgs/PointCloud2 instead of depth + camera_info
      state: /joint_states                    # sensor_msgs/JointState: positions are the robot state
      action: /arm/command                    # std_msgs/Float64MultiArray (or Float32MultiArray, JointState)
    state_joints: [j1, j2, j3, j4, j5, j6, j7]  # optional: joints to select, in order (default: all, as published)
    action_joints: null                       # optional: the same, when the action topic is a JointState
    camera_to_base:                           # 4x4: camera optical frame (OpenCV: x right, y down, z forward)
                                              # -> robot base;
      - [0.0, -0.5, 0.866, 0.1]               # also applied to point_cloud messages (the identity when they
      - [-1.0, 0.0, 0.0, 0.0]                 # are already published in the base frame)
      - [0.0, -0.866, -0.5, 0.6]
      - [0.0, 0.0, 0.0, 1.0]
    point_cloud: {crop_low: [0.2, -0.4, 0.01], crop_high: [0.9, 0.4, 0.6], num_points: 512}  # base-frame crop box
    max_staleness_s: 0.1                      # drop an action whose latest cloud or state is older than this
    stamp_tolerance_s: 0.001                  # a sample stamped up to this much after the action still counts as
                                              # "at or before" it (clocks that round differently; default 1 ms)
    episode_gap_s: 2.0                        # optional: a longer gap between actions starts a new episode
    time_source: header                       # header: header.stamp where a message has one; log: bag receive time

Every error names the file, the key and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mfp.envs import PointCloudConfig

TOPIC_KEYS = ("point_cloud", "depth", "camera_info", "state", "action")
TIME_SOURCES = ("header", "log")
_POINT_CLOUD_KEYS = tuple(f.name for f in dataclasses.fields(PointCloudConfig))


class BagConfigError(ValueError):
    """A topics.yaml that cannot be used; the message names the file, the key and what was expected."""


@dataclass(frozen=True)
class TopicsConfig:
    """The topic of each role. The observation comes from `point_cloud`, or from `depth` + `camera_info`."""

    state: str
    action: str
    point_cloud: str | None = None
    depth: str | None = None
    camera_info: str | None = None

    @property
    def cloud_topic(self) -> str:
        """The topic the observation's points come from."""
        return self.point_cloud if self.point_cloud is not None else self.depth

    def roles(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in TOPIC_KEYS if getattr(self, k) is not None}


@dataclass(frozen=True)
class BagImportConfig:
    task: str
    topics: TopicsConfig
    camera_to_base: tuple[tuple[float, ...], ...]
    point_cloud: PointCloudConfig = PointCloudConfig()
    state_joints: tuple[str, ...] | None = None
    action_joints: tuple[str, ...] | None = None
    max_staleness_s: float = 0.1
    stamp_tolerance_s: float = 0.001  # "at or before t" means stamped <= t + stamp_tolerance_s
    episode_gap_s: float | None = None
    time_source: str = "header"
    source: str = "<config>"  # the YAML file, for error messages

    # --- reading ------------------------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path) -> "BagImportConfig":
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such config file (the topics YAML of `mfp import-bag --config`)")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise BagConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "<config>") -> "BagImportConfig":
        def fail(key: str, expected: str, got: Any = dataclasses.MISSING) -> BagConfigError:
            got_text = "" if got is dataclasses.MISSING else f", got {got!r}"
            return BagConfigError(f"{source}: key '{key}': expected {expected}{got_text}")

        if not isinstance(data, dict):
            raise BagConfigError(f"{source}: expected a mapping of keys (task, topics, camera_to_base, ...), "
                                 f"got {type(data).__name__}")
        allowed = ("task", "topics", "camera_to_base", "point_cloud", "state_joints", "action_joints",
                   "max_staleness_s", "stamp_tolerance_s", "episode_gap_s", "time_source")
        _no_unknown_keys(data, allowed, "", source)
        task = data.get("task")
        if not isinstance(task, str) or not task.strip():
            raise fail("task", "a non-empty dataset task name such as 'real/arm-pick'", task)
        topics = _read_topics(data.get("topics"), fail, source)
        camera_to_base = _matrix4(data.get("camera_to_base"), fail)
        point_cloud = _read_point_cloud(data.get("point_cloud") or {}, fail, source)
        joints = {key: _read_joints(data.get(key), key, fail) for key in ("state_joints", "action_joints")}
        return cls(task=task.strip(), topics=topics, camera_to_base=camera_to_base, point_cloud=point_cloud,
                   state_joints=joints["state_joints"], action_joints=joints["action_joints"],
                   **_read_timing(data, fail), source=source)

    # --- use ------------------------------------------------------------------------------------------------
    @property
    def uses_depth(self) -> bool:
        return self.topics.point_cloud is None

    def camera_to_base_array(self) -> np.ndarray:
        return np.asarray(self.camera_to_base, dtype=np.float64)

    def to_dict(self) -> dict:
        """JSON-ready, the same keys as the YAML (recorded in the dataset)."""
        return {
            "task": self.task, "topics": self.topics.roles(),
            "camera_to_base": [list(row) for row in self.camera_to_base],
            "point_cloud": self.point_cloud.to_dict(),
            "state_joints": None if self.state_joints is None else list(self.state_joints),
            "action_joints": None if self.action_joints is None else list(self.action_joints),
            "max_staleness_s": self.max_staleness_s, "stamp_tolerance_s": self.stamp_tolerance_s,
            "episode_gap_s": self.episode_gap_s,
            "time_source": self.time_source,
        }


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _no_unknown_keys(d: dict, allowed, prefix: str, source: str) -> None:
    unknown = [k for k in d if k not in allowed]
    if unknown:
        raise BagConfigError(f"{source}: unknown key '{prefix}{unknown[0]}': expected one of "
                             f"{[prefix + k for k in allowed]}")


def _matrix4(value: Any, fail) -> tuple[tuple[float, ...], ...]:
    expected = ("a 4x4 matrix (list of 4 rows of 4 numbers) mapping the camera optical frame (OpenCV: x right, "
                "y down, z forward) into the robot base frame")
    if (not isinstance(value, list) or len(value) != 4
            or not all(isinstance(r, list) and len(r) == 4 and all(_is_number(v) for v in r) for r in value)):
        raise fail("camera_to_base", expected, value)
    T = np.asarray(value, dtype=np.float64)
    if not np.isfinite(T).all():
        raise fail("camera_to_base", "finite numbers", value)
    if not np.allclose(T[3], [0.0, 0.0, 0.0, 1.0], atol=1e-6):
        raise fail("camera_to_base", "a rigid transform whose last row is [0, 0, 0, 1]", value[3])
    R = T[:3, :3]
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-3) or np.linalg.det(R) < 0:
        raise fail("camera_to_base", "a rotation in the upper-left 3x3 block (orthonormal rows, determinant +1; "
                                     f"its determinant is {np.linalg.det(R):.4f})", [r[:3] for r in value[:3]])
    return tuple(tuple(float(v) for v in row) for row in value)


def _read_topics(topics: Any, fail, source: str) -> TopicsConfig:
    """`topics`: a topic per role; the observation from point_cloud, or from depth + camera_info."""
    if not isinstance(topics, dict):
        raise fail("topics", f"a mapping with keys among {list(TOPIC_KEYS)}", topics)
    _no_unknown_keys(topics, TOPIC_KEYS, "topics.", source)
    for key, value in topics.items():
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise fail(f"topics.{key}", "a topic name (text) such as '/joint_states'", value)
    for key in ("state", "action"):
        if not topics.get(key):
            raise fail(f"topics.{key}", "a topic name (required)")
    has_cloud, has_depth, has_info = (bool(topics.get(k)) for k in ("point_cloud", "depth", "camera_info"))
    if has_cloud and (has_depth or has_info):
        raise fail("topics", "either point_cloud, or depth + camera_info, not both",
                   {k: topics[k] for k in ("point_cloud", "depth", "camera_info") if topics.get(k)})
    if not has_cloud and not (has_depth and has_info):
        missing = [k for k in ("depth", "camera_info") if not topics.get(k)]
        raise fail("topics", f"an observation source: point_cloud (sensor_msgs/PointCloud2), or depth "
                             f"(sensor_msgs/Image) + camera_info (sensor_msgs/CameraInfo); missing {missing}")
    roles = {k: v for k, v in topics.items() if v}
    if len(set(roles.values())) != len(roles):
        raise fail("topics", "a different topic for each role", roles)
    return TopicsConfig(**roles)


def _read_point_cloud(pc: Any, fail, source: str) -> PointCloudConfig:
    """`point_cloud`: the base-frame crop box and point counts (PointCloudConfig's fields)."""
    if not isinstance(pc, dict):
        raise fail("point_cloud", f"a mapping with keys among {list(_POINT_CLOUD_KEYS)}", pc)
    _no_unknown_keys(pc, _POINT_CLOUD_KEYS, "point_cloud.", source)
    for key in ("crop_low", "crop_high"):
        if key in pc and (not isinstance(pc[key], (list, tuple)) or len(pc[key]) != 3
                          or not all(_is_number(v) for v in pc[key])):
            raise fail(f"point_cloud.{key}", "3 numbers [x, y, z] in metres, robot base frame", pc[key])
    for key in ("num_points", "max_points_before_fps"):
        if key in pc and (not isinstance(pc[key], int) or isinstance(pc[key], bool) or pc[key] < 1):
            raise fail(f"point_cloud.{key}", "a positive integer", pc[key])
    try:
        return PointCloudConfig(**pc)
    except ValueError as e:
        raise BagConfigError(f"{source}: key 'point_cloud': {e}") from None


def _read_joints(value: Any, key: str, fail) -> tuple[str, ...] | None:
    """`state_joints` / `action_joints`: distinct joint names in order, or None for all joints as published."""
    if value is None:
        return None
    if (not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value)
            or len(set(value)) != len(value)):
        raise fail(key, "a list of distinct joint names (or null for all joints, as published)", value)
    return tuple(value)


def _read_timing(data: dict, fail) -> dict:
    """max_staleness_s, stamp_tolerance_s, episode_gap_s and time_source, checked, with their defaults."""
    staleness = data.get("max_staleness_s", 0.1)
    if not _is_number(staleness) or not math.isfinite(staleness) or staleness <= 0:
        raise fail("max_staleness_s", "a positive number of seconds", staleness)
    tolerance = data.get("stamp_tolerance_s", 0.001)
    if not _is_number(tolerance) or not math.isfinite(tolerance) or tolerance < 0:
        raise fail("stamp_tolerance_s", "a number of seconds >= 0 (how much later than an action a sample may "
                                        "be stamped and still count as at or before it)", tolerance)
    gap = data.get("episode_gap_s")
    if gap is not None and (not _is_number(gap) or not math.isfinite(gap) or gap <= 0):
        raise fail("episode_gap_s", "a positive number of seconds, or null for one episode per bag", gap)
    time_source = data.get("time_source", "header")
    if time_source not in TIME_SOURCES:
        raise fail("time_source", "'header' (header.stamp where a message has one, else the bag's log time) "
                                  "or 'log' (the bag's log time for every message)", time_source)
    return {"max_staleness_s": float(staleness), "stamp_tolerance_s": float(tolerance),
            "episode_gap_s": None if gap is None else float(gap), "time_source": time_source}
