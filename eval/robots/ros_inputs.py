"""The policy's observation from ROS messages, for either ROS version (the ROS 1 robot in ros.py, the ROS 2 robot
in ros2.py): each adapter subscribes in its own middleware and hands the messages here.

A PointCloud2 (or a depth Image + CameraInfo) becomes the policy's cloud through the project's one point-cloud code
(demos/ros_clouds.py: back-projection, crop box, farthest-point sampling) with the checkpoint's settings; a
JointState's positions become agent_pos. Each keeps its header stamp. A message that cannot be used (wrong size,
layout, encoding or frame, a non-finite value, too many points) is dropped and counted in `rejected` per topic,
the first one logged with its reason; the last good sample stays and ages, so the loop's staleness check holds
the robot. Message fields are read through mfp.demos.ros_msgs, which knows both spellings (rospy's, ROS 2's).
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from mfp.demos.ros_clouds import camera_model, cloud_from_depth, cloud_from_pointcloud2
from mfp.demos.ros_msgs import (MAX_POINTS, RosMessageError, intrinsics_from_camera_info, stamp_seconds,
                                vector_from)
from mfp.eval.robots.base import TimedObservation

log = logging.getLogger("mfp.ros")


class RosInputs:
    def __init__(self, topics, point_cloud, agent_dim: int, max_points: int = MAX_POINTS):
        self.topics, self.pc_config, self.agent_dim, self.max_points = topics, point_cloud, int(agent_dim), max_points
        self._lock = threading.Lock()
        self._cloud: tuple[np.ndarray, float] | None = None
        self._state: tuple[np.ndarray, float] | None = None
        self._full_state: np.ndarray | None = None
        self._intrinsics = None
        self.rejected: dict[str, int] = {}
        self.transport_ms: list[float] = []   # cloud arrival here - its header stamp
        self._cam_to_base = None if topics.camera_to_base is None else np.asarray(topics.camera_to_base, np.float64)
        self._hint = "check the checkpoint's point-cloud crop box and camera_to_base in the ROS config"

    def reject(self, topic: str, error: Exception) -> None:
        with self._lock:
            first = topic not in self.rejected
            self.rejected[topic] = self.rejected.get(topic, 0) + 1
        if first:
            log.warning("ROS: dropped a message on %s: %s (further ones are counted)", topic, error)

    # --- one callback per subscribed topic ---------------------------------------------------------------------
    def on_cloud(self, msg) -> None:
        self.transport_ms.append(1000 * (time.time() - stamp_seconds(msg)))
        self._keep_cloud(self.topics.cloud, msg, self._points_from_pointcloud2)

    def on_camera_info(self, msg) -> None:
        try:
            self._intrinsics = intrinsics_from_camera_info(msg, what=f"CameraInfo on {self.topics.camera_info}")
        except RosMessageError as e:
            self.reject(self.topics.camera_info, e)

    def on_depth(self, msg) -> None:
        self._keep_cloud(self.topics.depth, msg, self._points_from_depth)

    def on_state(self, msg) -> None:
        try:
            state = vector_from(msg.position, self.agent_dim, f"JointState on {self.topics.state}: position",
                                np.float32)
        except RosMessageError as e:
            return self.reject(self.topics.state, e)
        with self._lock:
            self._state = (state, stamp_seconds(msg))

    def on_full_state(self, msg) -> None:
        try:
            full_state = vector_from(msg.data, None, f"Float64MultiArray on {self.topics.full_state}", np.float32)
        except RosMessageError as e:
            return self.reject(self.topics.full_state, e)
        with self._lock:
            self._full_state = full_state

    # --- the cloud -------------------------------------------------------------------------------------------
    def _keep_cloud(self, topic: str, msg, points_of) -> None:
        """The policy's cloud from `msg` (points_of(msg)), kept with its header stamp; a message that cannot be
        used is rejected and counted, and the last good cloud stays (and ages)."""
        try:
            cloud = points_of(msg)
        except ValueError as e:  # RosMessageError, or no point in the crop box
            return self.reject(topic, e)
        with self._lock:
            self._cloud = (cloud, stamp_seconds(msg))

    def _points_from_pointcloud2(self, msg) -> np.ndarray:
        frame = msg.header.frame_id.lstrip("/")
        if self._cam_to_base is None and frame and frame != self.topics.base_frame:
            raise RosMessageError(f"cloud in frame {frame!r}, expected {self.topics.base_frame!r} "
                                  f"(or set camera_to_base)")
        return cloud_from_pointcloud2(msg, self.pc_config, self._cam_to_base, self._hint,
                                      what=f"PointCloud2 on {self.topics.cloud}", max_points=self.max_points)

    def _points_from_depth(self, msg) -> np.ndarray:
        if self._intrinsics is None:
            raise RosMessageError("no CameraInfo received yet")
        camera = camera_model(self._intrinsics, self._cam_to_base, name=self.topics.depth)
        return cloud_from_depth(msg, camera, self.pc_config, self._hint, what=f"Image on {self.topics.depth}",
                                max_pixels=self.max_points)

    # --- the latest observation ----------------------------------------------------------------------------
    def observe(self) -> TimedObservation | None:
        with self._lock:
            if self._cloud is None or self._state is None:
                return None
            extra = {} if self._full_state is None else {"full_state": self._full_state}
            return TimedObservation(self._cloud[0], self._state[0], self._cloud[1], self._state[1], extra)
