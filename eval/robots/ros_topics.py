"""Topic names, message types and calibration shared by the ROS policy node and the simulated-robot node.

Read from YAML with yaml.safe_load (no code runs from a config). Example (every key optional; these defaults):

    cloud: /mfp/point_cloud          # sensor_msgs/PointCloud2, in `cloud_frame`; or set depth + camera_info
    depth: null                      # sensor_msgs/Image 16UC1 (mm) or 32FC1 (m)
    camera_info: null                # sensor_msgs/CameraInfo (intrinsics of the depth image)
    camera_to_base: null             # 4x4 pose of the camera (OpenCV optical axes) in the robot base frame;
                                     # needed for depth, and for a cloud that is not already in the base frame
    state: /mfp/joint_states         # sensor_msgs/JointState: position = the policy's agent_pos
    action: /mfp/action              # sensor_msgs/JointState out: position = action, header.stamp = execute-at time
    hold: /mfp/hold                  # std_msgs/Empty out: hold still until the next action
    estop: /mfp/estop                # std_msgs/Bool, both ways: true = emergency stop
    full_state: null                 # std_msgs/Float64MultiArray: a simulator's privileged state, for scripted
                                     # experts in tests only (a policy never sees it)
    base_frame: base                 # frame_id expected on clouds already in the base frame
    domain_id: null                  # ROS 2 only: the DDS domain; null: $ROS_DOMAIN_ID, else 0
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np


@dataclass
class RosTopics:
    cloud: str | None = "/mfp/point_cloud"
    depth: str | None = None
    camera_info: str | None = None
    camera_to_base: list | None = None
    state: str = "/mfp/joint_states"
    action: str = "/mfp/action"
    hold: str = "/mfp/hold"
    estop: str = "/mfp/estop"
    full_state: str | None = None
    base_frame: str = "base"
    domain_id: int | None = None

    # Where a simulated robot publishes its privileged state when a scripted expert drives it (unless set).
    SIM_FULL_STATE: ClassVar[str] = "/mfp/sim/full_state"

    def with_full_state(self) -> "RosTopics":
        """These topics with a `full_state` topic (SIM_FULL_STATE unless one is set): the scripted expert reads the
        simulator's privileged state from it."""
        return self if self.full_state is not None else dataclasses.replace(self, full_state=self.SIM_FULL_STATE)

    def __post_init__(self) -> None:
        if (self.cloud is None) == (self.depth is None):
            raise ValueError("ROS topics: give either `cloud` (PointCloud2) or `depth` + `camera_info`, not both")
        if self.depth is not None and (self.camera_info is None or self.camera_to_base is None):
            raise ValueError("ROS topics: `depth` needs `camera_info` and `camera_to_base` (4x4 camera pose in the "
                             "robot base frame)")
        if self.camera_to_base is not None:
            m = np.asarray(self.camera_to_base, dtype=np.float64)
            if m.shape != (4, 4) or not np.isfinite(m).all() or not np.allclose(m[3], [0, 0, 0, 1]):
                raise ValueError(f"ROS topics: camera_to_base must be a 4x4 homogeneous pose, got {self.camera_to_base}")
        if self.domain_id is not None and (isinstance(self.domain_id, bool) or not isinstance(self.domain_id, int)
                                           or not 0 <= self.domain_id <= 232):
            raise ValueError(f"ROS topics: domain_id must be an integer in 0..232, got {self.domain_id!r}")
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name not in ("camera_to_base", "domain_id") and v is not None and not (isinstance(v, str) and v):
                raise ValueError(f"ROS topics: {f.name} must be a non-empty string, got {v!r}")

    @classmethod
    def from_yaml(cls, path) -> "RosTopics":
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of topic settings, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {unknown}; known: {sorted(known)}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
