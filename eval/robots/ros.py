"""The ROS 1 adapter: a robot reached through topics, behind the robot interface. All rospy code of the control
path lives here and in ros_sim_node.py; a ROS 2 adapter would be one more file like this one (rclpy
subscriptions filling the same TimedObservation, a publisher in `send`).

Observations: a PointCloud2 (or a depth Image + CameraInfo) becomes the policy's cloud through the project's one
point-cloud code (back-projection, crop box, farthest-point sampling) with the settings read from the checkpoint;
a JointState's positions become agent_pos. Each keeps its header stamp. A message that cannot be used (wrong
size, encoding, frame) is dropped and counted in `rejected` with its reason; the last good sample stays and ages,
so the control loop's staleness check holds the robot.

E-stop: the e-stop topic is subscribed (an e-stop from anywhere stops the loop) and published, latched and
unqueued (written to every connected subscriber before `publish` returns; a node that connects later gets it on
connecting). Closing after an e-stop waits, up to `estop_handover_s`, until every node subscribed to the topic is
connected, so a robot node that was slow to connect still gets the stop before this publisher goes away.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings

import numpy as np

from mfp.demos.ros_clouds import camera_model, cloud_from_depth, cloud_from_pointcloud2
from mfp.demos.ros_msgs import MAX_POINTS, RosMessageError, intrinsics_from_camera_info, vector_from
from mfp.eval.robots.base import Robot, TimedObservation
from mfp.eval.robots.ros_topics import RosTopics

log = logging.getLogger("mfp.ros")


def import_rospy():
    try:
        import rospy
    except ImportError as e:
        raise RuntimeError("ROS 1 (rospy) is not importable: run scripts/setup.sh (installs Debian's ros-core and "
                           "python3-rospy and links them into .venv), or use --robot sim") from e
    return rospy


def init_node(name: str) -> None:
    rospy = import_rospy()
    if not rospy.core.is_initialized():
        # our own signal handling: Ctrl-C must reach the e-stop, not kill the node mid-step
        rospy.init_node(name, anonymous=True, disable_signals=True)


class RosRobot(Robot):
    def __init__(self, topics: RosTopics, point_cloud, agent_dim: int, action_dim: int, estop=None,
                 node_name: str = "mfp_policy", estop_handover_s: float = 5.0):
        rospy = import_rospy()
        from sensor_msgs.msg import CameraInfo, Image, JointState, PointCloud2
        from std_msgs.msg import Bool, Empty, Float64MultiArray

        init_node(node_name)
        self.topics, self.pc_config = topics, point_cloud
        self.agent_dim, self.action_dim = int(agent_dim), int(action_dim)
        self.estop, self.estop_handover_s = estop, float(estop_handover_s)
        self._lock = threading.Lock()
        self._cloud: tuple[np.ndarray, float] | None = None
        self._state: tuple[np.ndarray, float] | None = None
        self._full_state: np.ndarray | None = None
        self._intrinsics = None
        self._stopped = False
        self.rejected: dict[str, int] = {}
        self.transport_ms: list[float] = []   # cloud arrival here - its header stamp
        self._cam_to_base = None if topics.camera_to_base is None else np.asarray(topics.camera_to_base, np.float64)
        self._hint = "check the checkpoint's point-cloud crop box and camera_to_base in the ROS config"
        self._JointState, self._Empty, self._Bool = JointState, Empty, Bool
        self._pub_action = rospy.Publisher(topics.action, JointState, queue_size=10)
        self._pub_hold = rospy.Publisher(topics.hold, Empty, queue_size=10)
        with warnings.catch_warnings():  # queue_size=None (synchronous writes) is meant, not forgotten
            warnings.simplefilter("ignore", SyntaxWarning)
            self._pub_estop = rospy.Publisher(topics.estop, Bool, queue_size=None, latch=True)
        self._subs = [rospy.Subscriber(topics.estop, Bool, self._on_estop, queue_size=10),
                      rospy.Subscriber(topics.state, JointState, self._on_state, queue_size=1)]
        if topics.cloud:
            self._subs.append(rospy.Subscriber(topics.cloud, PointCloud2, self._on_cloud, queue_size=1,
                                               buff_size=2**24))
        else:
            self._subs += [rospy.Subscriber(topics.camera_info, CameraInfo, self._on_camera_info, queue_size=1),
                           rospy.Subscriber(topics.depth, Image, self._on_depth, queue_size=1, buff_size=2**24)]
        if topics.full_state:
            self._subs.append(rospy.Subscriber(topics.full_state, Float64MultiArray, self._on_full_state,
                                               queue_size=1))
        self._names = [f"a{i}" for i in range(self.action_dim)]

    # --- incoming ------------------------------------------------------------------------------------------
    def _reject(self, topic: str, error: Exception) -> None:
        with self._lock:
            first = topic not in self.rejected
            self.rejected[topic] = self.rejected.get(topic, 0) + 1
        if first:
            log.warning("ROS: dropped a message on %s: %s (further ones are counted)", topic, error)

    def _on_cloud(self, msg) -> None:
        self.transport_ms.append(1000 * (time.time() - msg.header.stamp.to_sec()))
        self._keep_cloud(self.topics.cloud, msg, self._points_from_pointcloud2)

    def _on_camera_info(self, msg) -> None:
        try:
            self._intrinsics = intrinsics_from_camera_info(msg, what=f"CameraInfo on {self.topics.camera_info}")
        except RosMessageError as e:
            self._reject(self.topics.camera_info, e)

    def _on_depth(self, msg) -> None:
        self._keep_cloud(self.topics.depth, msg, self._points_from_depth)

    def _keep_cloud(self, topic: str, msg, points_of) -> None:
        """The policy's cloud from `msg` (points_of(msg)), kept with its header stamp; a message that cannot be
        used is rejected and counted, and the last good cloud stays (and ages)."""
        try:
            cloud = points_of(msg)
        except ValueError as e:  # RosMessageError, or no point in the crop box
            return self._reject(topic, e)
        with self._lock:
            self._cloud = (cloud, msg.header.stamp.to_sec())

    def _points_from_pointcloud2(self, msg) -> np.ndarray:
        frame = msg.header.frame_id.lstrip("/")
        if self._cam_to_base is None and frame and frame != self.topics.base_frame:
            raise RosMessageError(f"cloud in frame {frame!r}, expected {self.topics.base_frame!r} "
                                  f"(or set camera_to_base)")
        return cloud_from_pointcloud2(msg, self.pc_config, self._cam_to_base, self._hint,
                                      what=f"PointCloud2 on {self.topics.cloud}", max_points=MAX_POINTS)

    def _points_from_depth(self, msg) -> np.ndarray:
        if self._intrinsics is None:
            raise RosMessageError("no CameraInfo received yet")
        camera = camera_model(self._intrinsics, self._cam_to_base, name=self.topics.depth)
        return cloud_from_depth(msg, camera, self.pc_config, self._hint, what=f"Image on {self.topics.depth}",
                                max_pixels=MAX_POINTS)

    def _on_state(self, msg) -> None:
        try:
            state = vector_from(msg.position, self.agent_dim, f"JointState on {self.topics.state}: position",
                                np.float32)
        except RosMessageError as e:
            return self._reject(self.topics.state, e)
        with self._lock:
            self._state = (state, msg.header.stamp.to_sec())

    def _on_full_state(self, msg) -> None:
        with self._lock:
            self._full_state = np.asarray(msg.data, np.float32)

    def _on_estop(self, msg) -> None:
        if msg.data and self.estop is not None:
            self.estop.trigger(f"ROS topic {self.topics.estop}")

    # --- the robot interface -------------------------------------------------------------------------------
    def observe(self) -> TimedObservation | None:
        with self._lock:
            if self._cloud is None or self._state is None:
                return None
            extra = {} if self._full_state is None else {"full_state": self._full_state}
            return TimedObservation(self._cloud[0], self._state[0], self._cloud[1], self._state[1], extra)

    def send(self, action: np.ndarray, t_exec: float) -> None:
        if self._stopped:
            return
        rospy = import_rospy()
        msg = self._JointState()
        msg.header.stamp = rospy.Time.from_sec(t_exec)
        msg.name = self._names
        msg.position = [float(a) for a in action]
        self._pub_action.publish(msg)

    def hold(self) -> None:
        self._pub_hold.publish(self._Empty())

    def stop(self) -> None:
        self._stopped = True
        self._pub_hold.publish(self._Empty())
        self._pub_estop.publish(self._Bool(data=True))

    def _hand_over_estop(self) -> bool:
        """Wait until every node subscribed to the e-stop topic is connected to our latched publisher."""
        import rosgraph

        rospy = import_rospy()
        topic, master = self._pub_estop.resolved_name, rosgraph.Master(rospy.get_name())
        deadline = time.monotonic() + self.estop_handover_s
        while True:
            try:
                _, subscribers, _ = master.getSystemState()
                nodes = next((n for t, n in subscribers if t == topic), [])
            except Exception as e:  # the master is gone: nobody else can connect now
                log.warning("ROS: e-stop hand-over: cannot reach the master: %s", e)
                return False
            if self._pub_estop.get_num_connections() >= len(nodes):
                return True
            if time.monotonic() > deadline:
                log.warning("ROS: e-stop hand-over: %d of the %d nodes subscribed to %s connected within %g s",
                            self._pub_estop.get_num_connections(), len(nodes), topic, self.estop_handover_s)
                return False
            time.sleep(0.02)

    def close(self) -> None:
        if self._stopped:
            self._hand_over_estop()
        for s in self._subs:
            s.unregister()
        self._pub_action.unregister()
        self._pub_hold.unregister()
        self._pub_estop.unregister()

    def describe(self) -> dict:
        return {"robot": "ros", "topics": self.topics.to_dict(), "rejected_messages": dict(self.rejected)}


def build(request) -> RosRobot:
    """`mfp control --robot ros` (robots.RobotRequest): the point-cloud settings from the checkpoint, else the
    task's defaults."""
    from mfp.envs import PointCloudConfig, default_pc_config

    pc = PointCloudConfig.from_dict(request.point_cloud) if request.point_cloud else default_pc_config(request.task)
    return RosRobot(request.topics or RosTopics(), pc, agent_dim=request.agent_dim, action_dim=request.action_dim,
                    estop=request.estop)
