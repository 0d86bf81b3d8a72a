"""Robots the control loop drives, behind one interface (base.py: Robot, TimedObservation), and the registry that
`mfp control --robot NAME` builds them from.

    base.py           the interface: observe() -> TimedObservation, send(action, at), hold(), close(), ...
    sim.py            SimRobot: a MuJoCo task stepping in real time in its own thread
    ros.py            RosRobot: a ROS 1 robot reached through topics (rospy)
    ros2.py           Ros2Robot: a ROS 2 robot reached through topics (plain DDS, ros2_dds.py; no rclpy)
    ros_inputs.py     RosInputs: ROS messages (either version) -> the policy's observation, bad ones counted
    ros_topics.py     RosTopics: topic names and camera calibration of the ROS adapters (YAML)
    sim_node.py       `mfp ros-sim`: a SimRobot served over a middleware (the other side of RosRobot / Ros2Robot),
                      with ros_sim_node.py (ROS 1) and ros2_sim_node.py (ROS 2)

Adding a robot is one file and one line: a module with a Robot subclass and a
`build(request: RobotRequest) -> Robot` function, and its entry in ROBOTS below. `--robot`'s choices come from
ROBOTS. Modules are imported only when their robot is built, so a missing rospy breaks only `--robot ros`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

# name -> the module whose build(request) makes that robot (imported when the robot is built).
ROBOTS: dict[str, str] = {
    "sim": "mfp.eval.robots.sim",
    "ros": "mfp.eval.robots.ros",
    "ros2": "mfp.eval.robots.ros2",
}


@dataclass(frozen=True)
class RobotRequest:
    """Everything a robot may need to be built for one episode of `mfp control`."""

    task: str | None                 # the task (a simulated robot needs it; a real one uses it for the crop box)
    rate_hz: float                   # the control loop's rate
    seed: int                        # the episode's seed (simulated robots)
    point_cloud: dict | None         # the checkpoint's point-cloud settings (PointCloudConfig.to_dict()), if any
    expert: bool = False             # driven by the scripted expert: publish the simulator's privileged state
    topics: Any = None               # RosTopics for the ROS adapters (None: the defaults)
    agent_dim: int | None = None
    action_dim: int | None = None
    estop: Any = None                # the loop's EStop (a robot may also publish it)
    record: str | None = None        # `--record`'s store: a robot may record its own traffic beside it (ROS 2: MCAP)


def robot_names() -> tuple[str, ...]:
    return tuple(ROBOTS)


def make_robot(kind: str, request: RobotRequest):
    """The robot named `kind` (a key of ROBOTS), built by its module's build(request)."""
    if kind not in ROBOTS:
        raise ValueError(f"unknown robot {kind!r}: choose {' or '.join(ROBOTS)}")
    return importlib.import_module(ROBOTS[kind]).build(request)
