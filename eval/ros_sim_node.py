"""A ROS node serving a simulated robot: publishes its observations (PointCloud2 in the base frame, JointState,
optionally the privileged full state for scripted experts) and executes the actions it receives at their header
stamps. The simulator's own watchdog holds the robot when actions stop coming (a policy process that died), a
hold message drops pending actions, and an e-stop message stops the robot for good.

When the episode ends (success or step limit) the node writes a JSON summary (success, steps, holds) and exits.
"""

from __future__ import annotations

import json
import time

import numpy as np

from mfp.demos.ros_msgs import pointcloud2_fields_xyz, vector_from

from .ros_robot import import_rospy, init_node
from .ros_topics import RosTopics
from .rollout import percentile
from .sim_robot import SimRobot


def serve_sim(task: str, topics: RosTopics, rate_hz: float = 10.0, seed: int = 1_000_000,
              point_cloud: dict | None = None, result_path=None, timeout_s: float = 120.0,
              max_steps: int = 200, node_name: str = "mfp_sim_robot") -> dict:
    rospy = import_rospy()
    from sensor_msgs.msg import JointState, PointCloud2, PointField
    from std_msgs.msg import Bool, Empty, Float64MultiArray

    init_node(node_name)
    robot = SimRobot(task, rate_hz=rate_hz, seed=seed, point_cloud=point_cloud,
                     publish_full_state=topics.full_state is not None, max_episode_steps=max_steps)
    pub_cloud = rospy.Publisher(topics.cloud, PointCloud2, queue_size=2)
    pub_state = rospy.Publisher(topics.state, JointState, queue_size=2)
    pub_full = rospy.Publisher(topics.full_state, Float64MultiArray, queue_size=2) if topics.full_state else None
    rejected = {"action": 0}

    transport_ms: list[float] = []   # arrival here - the action's stamp (the time the policy node sent it)

    def on_action(msg) -> None:
        transport_ms.append(1000 * (time.time() - msg.header.stamp.to_sec()))
        try:
            action = vector_from(msg.position, robot.action_dim, f"JointState on {topics.action}: position",
                                 np.float32)
        except ValueError as e:
            rejected["action"] += 1
            rospy.logwarn_throttle(5, f"sim robot: dropped an action: {e}")
            return
        robot.send(action, msg.header.stamp.to_sec())

    def on_estop(msg) -> None:
        if msg.data:
            robot.stop()

    subs = [rospy.Subscriber(topics.action, JointState, on_action, queue_size=10),
            rospy.Subscriber(topics.hold, Empty, lambda msg: robot.hold(), queue_size=10),
            rospy.Subscriber(topics.estop, Bool, on_estop, queue_size=10)]

    def cloud_msg(points: np.ndarray, stamp: float) -> PointCloud2:
        fields, data, step = pointcloud2_fields_xyz(points)
        msg = PointCloud2()
        msg.header.stamp, msg.header.frame_id = rospy.Time.from_sec(stamp), topics.base_frame
        msg.height, msg.width = 1, len(points)
        msg.fields = [PointField(name=n, offset=o, datatype=d, count=c) for n, o, d, c in fields]
        msg.is_bigendian, msg.point_step, msg.row_step, msg.is_dense = False, step, step * len(points), True
        msg.data = data
        return msg

    last_stamp, t_start = None, time.time()
    try:
        while not robot.done and not rospy.is_shutdown() and time.time() - t_start < timeout_s:
            obs = robot.observe()
            if obs is not None and (obs.t_state, obs.t_cloud) != last_stamp:
                last_stamp = (obs.t_state, obs.t_cloud)
                state = JointState()
                state.header.stamp = rospy.Time.from_sec(obs.t_state)
                state.name = [f"q{i}" for i in range(len(obs.agent_pos))]
                state.position = [float(v) for v in obs.agent_pos]
                if pub_full is not None:
                    pub_full.publish(Float64MultiArray(data=[float(v) for v in obs.extra["full_state"]]))
                pub_state.publish(state)
                pub_cloud.publish(cloud_msg(obs.point_cloud, obs.t_cloud))
            robot.wait_done(0.002)
        summary = {"task": task, "seed": seed, "success": bool(robot.success), "steps": robot.steps,
                   "hold_steps": robot.hold_steps,
                   "trailing_holds": robot.trailing_holds, "e_stopped": robot.stopped, "rejected": rejected,
                   "timed_out": not robot.done,
                   "action_transport_ms_p50": percentile(transport_ms, 50),
                   "action_transport_ms_p99": percentile(transport_ms, 99)}
    finally:
        for s in subs:
            s.unregister()
        robot.close()
    if result_path:
        from mfp.demos.atomic import atomic_write_json

        atomic_write_json(result_path, summary)
    return summary
