"""The ROS 2 adapter: a robot reached through ROS 2 topics, behind the robot interface, over plain DDS (Cyclone
DDS's Python binding, ros2_dds.py) and wire-compatible with ROS 2 nodes on rmw_cyclonedds_cpp; rclpy is not
needed. Topic names and calibration come from the same YAML as ROS 1 (ros_topics.py); the DDS domain is its
`domain_id`, else $ROS_DOMAIN_ID, else 0.

Observations: PointCloud2 (or Image + CameraInfo) and JointState, best-effort with a shallow queue, go to
RosInputs (ros_inputs.py, shared with ROS 1), which makes the policy's observation and drops and counts what
cannot be used; a sample that cannot even be deserialized is counted the same way.
Out: each action as a JointState (position = action, header.stamp = its execute-at time) and hold as
std_msgs/Empty, reliable; the e-stop (std_msgs/Bool) both ways, reliable and transient-local: a node that joins
after the stop still gets it. Closing after an e-stop waits, up to `estop_handover_s`, until every e-stop
reader in the domain is matched and has acknowledged it.

Recording (`mfp control --record`): with a `bag` (ros2_bag.McapRecorder), every message received on the
subscribed topics and every one sent is also written to an MCAP file in the ROS 2 bag format, which
`mfp import-bag` turns into a dataset.
"""

from __future__ import annotations

import numpy as np

from mfp.demos import ros2_types as msgs
from mfp.eval.robots.ros2_bag import McapRecorder, bag_path
from mfp.eval.robots.ros2_dds import COMMAND_QOS, ESTOP_QOS, SENSOR_QOS, DdsNode, domain_id
from mfp.eval.robots.ros_topics import RosTopics
from mfp.eval.robots.topic_robot import TopicRobot, request_point_cloud


class Ros2Robot(TopicRobot):
    middleware = "ROS 2"

    def __init__(self, topics: RosTopics, point_cloud, agent_dim: int, action_dim: int, estop=None,
                 node_name: str = "mfp_policy", estop_handover_s: float = 5.0, bag=None):
        super().__init__(topics, point_cloud, agent_dim, action_dim, estop, estop_handover_s)
        self.bag = bag
        self.node = DdsNode(domain_id(topics.domain_id), node_name)
        try:
            self._pub_action = self.node.writer(topics.action, msgs.JointState, COMMAND_QOS)
            self._pub_hold = self.node.writer(topics.hold, msgs.Empty, COMMAND_QOS)
            self._pub_estop = self.node.writer(topics.estop, msgs.Bool, ESTOP_QOS)
            self.node.subscribe_estop(topics.estop, msgs.Bool, self._recorded(topics.estop, self._on_estop))
            self._subscribe(topics.state, msgs.JointState, self.inputs.on_state)
            if topics.cloud:
                self._subscribe(topics.cloud, msgs.PointCloud2, self.inputs.on_cloud)
            else:
                self._subscribe(topics.camera_info, msgs.CameraInfo, self.inputs.on_camera_info)
                self._subscribe(topics.depth, msgs.Image, self.inputs.on_depth)
            if topics.full_state:
                self._subscribe(topics.full_state, msgs.Float64MultiArray, self.inputs.on_full_state)
        except BaseException:
            self.node.close()
            raise

    def _subscribe(self, topic: str, msg_type, callback) -> None:
        self.node.subscribe(topic, msg_type, self._recorded(topic, callback), SENSOR_QOS,
                            on_error=lambda e: self.inputs.reject(topic, ValueError(f"undecodable sample: {e}")))

    def _recorded(self, topic: str, callback):
        """`callback`, and each message also into the bag when recording."""
        if self.bag is None:
            return callback

        def record_then_call(msg) -> None:
            self.bag.write(topic, msg)
            callback(msg)
        return record_then_call

    def _write(self, writer, topic: str, msg) -> None:
        writer.write(msg)
        if self.bag is not None:
            self.bag.write(topic, msg)

    # --- the robot interface (observe: TopicRobot) ----------------------------------------------------------
    def send(self, action: np.ndarray, t_exec: float) -> None:
        if self._stopped:
            return
        self._write(self._pub_action, self.topics.action, msgs.JointState(
            header=msgs.Header(stamp=msgs.to_stamp(t_exec)), name=self._names, position=[float(a) for a in action]))

    def hold(self) -> None:
        self._write(self._pub_hold, self.topics.hold, msgs.Empty())

    def stop(self) -> None:
        self._stopped = True
        self.hold()
        self._write(self._pub_estop, self.topics.estop, msgs.Bool(data=True))

    def close(self) -> None:
        try:
            if self._stopped:
                self.node.wait_delivered(self._pub_estop, self.estop_handover_s)
            self.node.close()
        finally:
            if self.bag is not None:
                self.bag.close()

    def describe(self) -> dict:
        return {"robot": "ros2", "topics": self.topics.to_dict(), "domain_id": self.node.domain,
                "rejected_messages": dict(self.rejected),
                "ros2_bag": None if self.bag is None else str(self.bag.path)}


def build(request) -> Ros2Robot:
    """`mfp control --robot ros2` (robots.RobotRequest): the point-cloud settings from the checkpoint, else the
    task's defaults; with --record, the episode's ROS 2 messages also go to an MCAP file beside the store."""
    pc = request_point_cloud(request)
    bag = McapRecorder(bag_path(request.record, request.seed)) if request.record else None
    try:
        return Ros2Robot(request.topics or RosTopics(), pc, agent_dim=request.agent_dim,
                         action_dim=request.action_dim, estop=request.estop, bag=bag)
    except BaseException:
        if bag is not None:
            bag.close()
        raise
