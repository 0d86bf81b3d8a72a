"""`mfp ros-sim` over ROS 1: the simulated-robot node (sim_node.py: the simulation, watchdog, e-stop latch and
progress lines) with rospy topics. Observations go out as PointCloud2 (base frame), JointState and, for scripted
experts, Float64MultiArray; actions come in as JointState (position, header.stamp = execute-at time), hold as
std_msgs/Empty, the e-stop as std_msgs/Bool (subscribed first; published latched and unqueued once received).
"""

from __future__ import annotations

import warnings

from mfp.demos.ros_msgs import pointcloud2_fields_xyz
from mfp.eval.robots import sim_node
from mfp.eval.robots.ros import import_rospy, init_node
from mfp.eval.robots.ros_topics import RosTopics


class Ros1SimTransport(sim_node.SimTransport):
    def __init__(self, topics: RosTopics, node_name: str = "mfp_sim_robot"):
        self.rospy = import_rospy()
        from sensor_msgs.msg import JointState, PointCloud2, PointField
        from std_msgs.msg import Bool, Empty, Float64MultiArray

        self.msgs = {"JointState": JointState, "PointCloud2": PointCloud2, "PointField": PointField, "Bool": Bool,
                     "Empty": Empty, "Float64MultiArray": Float64MultiArray}
        init_node(node_name)
        self.topics = topics
        self._subs, self._pubs = [], []
        with warnings.catch_warnings():  # queue_size=None (synchronous writes) is meant, not forgotten
            warnings.simplefilter("ignore", SyntaxWarning)
            self._pub_estop = self._advertise(topics.estop, Bool, queue_size=None, latch=True)

    def _advertise(self, topic, msg_type, **kw):
        pub = self.rospy.Publisher(topic, msg_type, **kw)
        self._pubs.append(pub)
        return pub

    def _subscribe(self, topic, msg_type, callback) -> None:
        self._subs.append(self.rospy.Subscriber(topic, msg_type, callback, queue_size=10))

    def subscribe_estop(self, on_estop) -> None:
        self._subscribe(self.topics.estop, self.msgs["Bool"], lambda msg: on_estop(bool(msg.data)))

    def publish_estop(self) -> None:
        self._pub_estop.publish(self.msgs["Bool"](data=True))

    def start(self, on_action, on_hold, on_bad_action) -> None:  # rospy drops what it cannot decode
        m, t = self.msgs, self.topics
        self._pub_cloud = self._advertise(t.cloud, m["PointCloud2"], queue_size=2)
        self._pub_state = self._advertise(t.state, m["JointState"], queue_size=2)
        self._pub_full = self._advertise(t.full_state, m["Float64MultiArray"], queue_size=2) if t.full_state else None
        self._subscribe(t.action, m["JointState"], lambda msg: on_action(msg.position, msg.header.stamp.to_sec()))
        self._subscribe(t.hold, m["Empty"], lambda msg: on_hold())

    def controller_connected(self) -> bool:
        return self._pub_cloud.get_num_connections() > 0 and self._pub_state.get_num_connections() > 0

    def publish(self, obs) -> None:
        m, Time = self.msgs, self.rospy.Time
        state = m["JointState"]()
        state.header.stamp = Time.from_sec(obs.t_state)
        state.name = [f"q{i}" for i in range(len(obs.agent_pos))]
        state.position = [float(v) for v in obs.agent_pos]
        if self._pub_full is not None:
            self._pub_full.publish(m["Float64MultiArray"](data=[float(v) for v in obs.extra["full_state"]]))
        self._pub_state.publish(state)
        fields, data, step = pointcloud2_fields_xyz(obs.point_cloud)
        cloud = m["PointCloud2"]()
        cloud.header.stamp, cloud.header.frame_id = Time.from_sec(obs.t_cloud), self.topics.base_frame
        cloud.height, cloud.width = 1, len(obs.point_cloud)
        cloud.fields = [m["PointField"](name=n, offset=o, datatype=d, count=c) for n, o, d, c in fields]
        cloud.is_bigendian, cloud.point_step, cloud.row_step, cloud.is_dense = False, step, step * cloud.width, True
        cloud.data = data
        self._pub_cloud.publish(cloud)

    def is_shutdown(self) -> bool:
        return self.rospy.is_shutdown()

    def close(self) -> None:
        for s in self._subs:
            s.unregister()
        for p in self._pubs:
            p.unregister()


def serve_sim(task: str, topics: RosTopics, **kw) -> dict:
    """The node over ROS 1 until its episode ends (sim_node.serve_topics: the options)."""
    return sim_node.serve_topics(Ros1SimTransport, task, topics, **kw)
