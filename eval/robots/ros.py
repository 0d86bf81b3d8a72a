"""The ROS 1 adapter: a robot reached through topics, behind the robot interface. All rospy code of the control
path lives here and in ros_sim_node.py; ros2.py is the ROS 2 adapter, behind the same interface.

Observations: the cloud and state messages go to RosInputs (ros_inputs.py, shared with the ROS 2 robot), which
turns them into the policy's observation and drops and counts what cannot be used.

E-stop: the e-stop topic is subscribed (an e-stop from anywhere stops the loop) and published, latched and
unqueued (written to every connected subscriber before `publish` returns; a node that connects later gets it on
connecting). Closing after an e-stop waits, up to `estop_handover_s`, until every node subscribed to the topic is
connected, so a robot node that was slow to connect still gets the stop before this publisher goes away.
"""

from __future__ import annotations

import logging
import time
import warnings

import numpy as np

from mfp.eval.robots.topic_robot import TopicRobot, request_point_cloud
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


class RosRobot(TopicRobot):
    def __init__(self, topics: RosTopics, point_cloud, agent_dim: int, action_dim: int, estop=None,
                 node_name: str = "mfp_policy", estop_handover_s: float = 5.0):
        rospy = import_rospy()
        from sensor_msgs.msg import CameraInfo, Image, JointState, PointCloud2
        from std_msgs.msg import Bool, Empty, Float64MultiArray

        init_node(node_name)
        super().__init__(topics, point_cloud, agent_dim, action_dim, estop, estop_handover_s)
        self._JointState, self._Empty, self._Bool = JointState, Empty, Bool
        self._pub_action = rospy.Publisher(topics.action, JointState, queue_size=10)
        self._pub_hold = rospy.Publisher(topics.hold, Empty, queue_size=10)
        with warnings.catch_warnings():  # queue_size=None (synchronous writes) is meant, not forgotten
            warnings.simplefilter("ignore", SyntaxWarning)
            self._pub_estop = rospy.Publisher(topics.estop, Bool, queue_size=None, latch=True)
        inputs = self.inputs
        self._subs = [rospy.Subscriber(topics.estop, Bool, self._on_estop, queue_size=10),
                      rospy.Subscriber(topics.state, JointState, inputs.on_state, queue_size=1)]
        if topics.cloud:
            self._subs.append(rospy.Subscriber(topics.cloud, PointCloud2, inputs.on_cloud, queue_size=1,
                                               buff_size=2**24))
        else:
            self._subs += [rospy.Subscriber(topics.camera_info, CameraInfo, inputs.on_camera_info, queue_size=1),
                           rospy.Subscriber(topics.depth, Image, inputs.on_depth, queue_size=1, buff_size=2**24)]
        if topics.full_state:
            self._subs.append(rospy.Subscriber(topics.full_state, Float64MultiArray, inputs.on_full_state,
                                               queue_size=1))

    # --- the robot interface (observe: TopicRobot) ----------------------------------------------------------
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
    return RosRobot(request.topics or RosTopics(), request_point_cloud(request), agent_dim=request.agent_dim,
                    action_dim=request.action_dim, estop=request.estop)
