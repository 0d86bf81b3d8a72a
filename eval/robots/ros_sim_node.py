"""A ROS node serving a simulated robot: publishes its observations (PointCloud2 in the base frame, JointState,
optionally the privileged full state for scripted experts) and executes the actions it receives at their header
stamps. The simulator's own watchdog holds the robot when actions stop coming (a policy process that died), a
hold message drops pending actions, and an e-stop message stops the robot for good.

The e-stop is the node's first subscription, made before the simulator is built (seconds on a busy machine),
and latched for the node's life: one that comes before the robot exists, before the first action or during the
episode stops the robot all the same, and the summary reports it. The node then publishes the e-stop itself,
latched, for as long as it lives: a controller that starts after the stop is stopped on connecting.

The episode starts at the first action (or the e-stop, after which the robot only holds): until then the robot
stands still and keeps publishing its view, so a controller that is slow to start (warm-up, a loaded machine)
finds the whole episode ahead of it.

Progress lines on stdout, one each, for whoever waits on the node (tests, scripts): "ros-sim: e-stop subscribed",
"ros-sim: publishing", "ros-sim: controller connected" (the cloud and state topics have subscribers),
"ros-sim: first action" (received), "ros-sim: moving" (the first action executed), "ros-sim: e-stop received".

When the episode ends (success or step limit) the node writes a JSON summary (success, steps, holds) and exits.
"""

from __future__ import annotations

import threading
import time
import warnings

import numpy as np

from mfp.demos.ros_msgs import pointcloud2_fields_xyz, vector_from
from mfp.demos.seeds import EVAL_SEED_START
from mfp.envs import EPISODE_STEPS
from mfp.eval.robots.ros import import_rospy, init_node
from mfp.eval.robots.ros_topics import RosTopics
from mfp.eval.robots.sim import SimRobot
from mfp.eval.stats import percentile


def serve_sim(task: str, topics: RosTopics, rate_hz: float = 10.0, seed: int = EVAL_SEED_START,
              point_cloud: dict | None = None, result_path=None, timeout_s: float = 120.0,
              max_steps: int = EPISODE_STEPS, node_name: str = "mfp_sim_robot", start_on_first_action: bool = True) -> dict:
    rospy = import_rospy()
    from sensor_msgs.msg import JointState, PointCloud2, PointField
    from std_msgs.msg import Bool, Empty, Float64MultiArray

    init_node(node_name)
    estop = threading.Event()      # latched for the node's life
    node: dict = {"robot": None}
    with warnings.catch_warnings():  # queue_size=None (synchronous writes) is meant, not forgotten
        warnings.simplefilter("ignore", SyntaxWarning)
        pub_estop = rospy.Publisher(topics.estop, Bool, queue_size=None, latch=True)

    def on_estop(msg) -> None:
        if not msg.data:
            return
        if not estop.is_set():
            estop.set()
            _say("e-stop received")
            pub_estop.publish(Bool(data=True))  # the robot's own latch: a controller that connects later stops too
        robot = node["robot"]
        if robot is not None:
            robot.stop()

    estop_sub = rospy.Subscriber(topics.estop, Bool, on_estop, queue_size=10)
    _say("e-stop subscribed")
    try:
        robot = SimRobot(task, rate_hz=rate_hz, seed=seed, point_cloud=point_cloud,
                         publish_full_state=topics.full_state is not None, max_episode_steps=max_steps,
                         start_on_first_action=start_on_first_action)
    except BaseException:
        estop_sub.unregister()
        pub_estop.unregister()
        raise
    node["robot"] = robot
    if estop.is_set():  # came while the simulator was being built
        robot.stop()
    pub_cloud = rospy.Publisher(topics.cloud, PointCloud2, queue_size=2)
    pub_state = rospy.Publisher(topics.state, JointState, queue_size=2)
    pub_full = rospy.Publisher(topics.full_state, Float64MultiArray, queue_size=2) if topics.full_state else None
    rejected = {"action": 0}

    transport_ms: list[float] = []   # arrival here - the action's stamp (the time the policy node sent it)

    def on_action(msg) -> None:
        transport_ms.append(1000 * (time.time() - msg.header.stamp.to_sec()))
        if len(transport_ms) == 1:
            _say("first action")
        try:
            action = vector_from(msg.position, robot.action_dim, f"JointState on {topics.action}: position",
                                 np.float32)
        except ValueError as e:
            rejected["action"] += 1
            rospy.logwarn_throttle(5, f"sim robot: dropped an action: {e}")
            return
        robot.send(action, msg.header.stamp.to_sec())

    subs = [estop_sub, rospy.Subscriber(topics.action, JointState, on_action, queue_size=10),
            rospy.Subscriber(topics.hold, Empty, lambda msg: robot.hold(), queue_size=10)]

    def cloud_msg(points: np.ndarray, stamp: float) -> PointCloud2:
        fields, data, step = pointcloud2_fields_xyz(points)
        msg = PointCloud2()
        msg.header.stamp, msg.header.frame_id = rospy.Time.from_sec(stamp), topics.base_frame
        msg.height, msg.width = 1, len(points)
        msg.fields = [PointField(name=n, offset=o, datatype=d, count=c) for n, o, d, c in fields]
        msg.is_bigendian, msg.point_step, msg.row_step, msg.is_dense = False, step, step * len(points), True
        msg.data = data
        return msg

    last_stamp, t_start, connected, moving = None, time.time(), False, False
    _say("publishing")
    try:
        while not robot.done and not rospy.is_shutdown() and time.time() - t_start < timeout_s:
            if not connected and pub_cloud.get_num_connections() > 0 and pub_state.get_num_connections() > 0:
                connected = True
                _say("controller connected")
            if not moving and robot.commanded_steps > 0:
                moving = True
                _say("moving")
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
                   "hold_steps": robot.hold_steps, "commanded_steps": robot.commanded_steps,
                   "actions_received": len(transport_ms), "trailing_holds": robot.trailing_holds,
                   "e_stopped": estop.is_set() or robot.stopped, "steps_at_estop": robot.steps_at_stop,
                   "rejected": rejected, "timed_out": not robot.done,
                   "action_transport_ms_p50": percentile(transport_ms, 50),
                   "action_transport_ms_p99": percentile(transport_ms, 99)}
    finally:
        for s in subs:
            s.unregister()
        pub_estop.unregister()
        robot.close()
    if result_path:
        from mfp.demos.atomic import atomic_write_json

        atomic_write_json(result_path, summary)
    return summary


def _say(what: str) -> None:
    print(f"ros-sim: {what}", flush=True)
