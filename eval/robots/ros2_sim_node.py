"""`mfp ros-sim --ros 2`: the simulated-robot node (sim_node.py: the simulation, watchdog, e-stop latch and
progress lines) over ROS 2 topics on plain DDS (ros2_dds.py), with the QoS of the ROS 2 robot (ros2.py):
observations (PointCloud2 in the base frame, JointState, for scripted experts Float64MultiArray) best-effort;
actions (JointState: position, header.stamp = execute-at time) and hold (std_msgs/Empty) reliable; the e-stop
(std_msgs/Bool) subscribed first, from transient-local and volatile writers, and published transient-local once
received, so a controller that starts later is stopped on joining.
"""

from __future__ import annotations

from mfp.demos import ros2_types as msgs
from mfp.demos.ros_msgs import pointcloud2_fields_xyz, stamp_seconds
from mfp.eval.robots import sim_node
from mfp.eval.robots.ros2_dds import COMMAND_QOS, ESTOP_QOS, SENSOR_QOS, DdsNode, domain_id
from mfp.eval.robots.ros_topics import RosTopics


class Ros2SimTransport(sim_node.SimTransport):
    def __init__(self, topics: RosTopics, node_name: str = "mfp_sim_robot"):
        self.topics = topics
        self.node = DdsNode(domain_id(topics.domain_id), node_name)
        self._pub_estop = self.node.writer(topics.estop, msgs.Bool, ESTOP_QOS)
        self._state_names: list[str] = []

    def subscribe_estop(self, on_estop) -> None:
        self.node.subscribe_estop(self.topics.estop, msgs.Bool, lambda msg: on_estop(bool(msg.data)))

    def publish_estop(self) -> None:
        self._pub_estop.write(msgs.Bool(data=True))

    def start(self, on_action, on_hold, on_bad_action) -> None:
        t = self.topics
        self._pub_cloud = self.node.writer(t.cloud, msgs.PointCloud2, SENSOR_QOS)
        self._pub_state = self.node.writer(t.state, msgs.JointState, SENSOR_QOS)
        self._pub_full = self.node.writer(t.full_state, msgs.Float64MultiArray, SENSOR_QOS) if t.full_state else None
        self.node.subscribe(t.action, msgs.JointState, lambda msg: on_action(msg.position, stamp_seconds(msg)),
                            COMMAND_QOS, on_error=on_bad_action)
        self.node.subscribe(t.hold, msgs.Empty, lambda msg: on_hold(), COMMAND_QOS)

    def controller_connected(self) -> bool:
        return bool(self._pub_cloud.get_matched_subscriptions() and self._pub_state.get_matched_subscriptions())

    def publish(self, obs) -> None:
        if len(self._state_names) != len(obs.agent_pos):
            self._state_names = [f"q{i}" for i in range(len(obs.agent_pos))]
        if self._pub_full is not None:
            full = obs.extra["full_state"]
            self._pub_full.write(msgs.Float64MultiArray(
                layout=msgs.MultiArrayLayout(dim=[msgs.MultiArrayDimension("full_state", len(full), len(full))]),
                data=[float(v) for v in full]))
        self._pub_state.write(msgs.JointState(header=msgs.Header(stamp=msgs.to_stamp(obs.t_state)),
                                              name=self._state_names, position=[float(v) for v in obs.agent_pos]))
        fields, data, step = pointcloud2_fields_xyz(obs.point_cloud)
        n = len(obs.point_cloud)
        self._pub_cloud.write(msgs.PointCloud2(
            header=msgs.Header(stamp=msgs.to_stamp(obs.t_cloud), frame_id=self.topics.base_frame), height=1, width=n,
            fields=[msgs.PointField(name, offset, datatype, count) for name, offset, datatype, count in fields],
            is_bigendian=False, point_step=step, row_step=step * n, data=data, is_dense=True))

    def close(self) -> None:
        self.node.close()


def serve_sim(task: str, topics: RosTopics, **kw) -> dict:
    """The node over ROS 2 until its episode ends (sim_node.serve_topics: the options)."""
    return sim_node.serve_topics(Ros2SimTransport, task, topics, **kw)
