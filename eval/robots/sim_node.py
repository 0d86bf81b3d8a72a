"""The simulated robot served over a middleware (`mfp ros-sim`), whatever the middleware: this module is the
part that does not depend on it; ros_sim_node.py (ROS 1) and ros2_sim_node.py (ROS 2) each add a `SimTransport`
and a `serve_sim` that is `serve_topics` with it.

The node publishes the robot's observations (PointCloud2 in the base frame, JointState, optionally the privileged
full state for scripted experts) and executes the actions it receives at their header stamps. The simulator's own
watchdog holds the robot when actions stop coming (a policy process that died), a hold message drops pending
actions, and an e-stop message stops the robot for good.

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

When the episode ends (success or step limit) the node writes a JSON summary (success, steps, holds, when the
e-stop came: `estop_received_t`, time.time()) and exits.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from typing import Callable, Sequence

import numpy as np

from mfp.demos.ros_msgs import vector_from
from mfp.demos.seeds import EVAL_SEED_START
from mfp.envs import EPISODE_STEPS
from mfp.eval.robots.base import TimedObservation
from mfp.eval.robots.sim import SimRobot
from mfp.eval.stats import percentile

log = logging.getLogger("mfp.ros")


class SimTransport(abc.ABC):
    """What the simulated-robot node needs from a middleware."""

    @abc.abstractmethod
    def subscribe_estop(self, on_estop: Callable[[bool], None]) -> None:
        """Subscribe to the e-stop topic (first of all); on_estop(data) for each message."""

    @abc.abstractmethod
    def publish_estop(self) -> None:
        """Publish the e-stop (true), latched for the node's life."""

    @abc.abstractmethod
    def start(self, on_action: Callable[[Sequence[float], float], None], on_hold: Callable[[], None],
              on_bad_action: Callable[[Exception], None]) -> None:
        """Advertise the observation topics; subscribe to actions (on_action(position, stamp_s); on_bad_action
        for one that could not even be decoded) and hold."""

    @abc.abstractmethod
    def controller_connected(self) -> bool:
        """The cloud and state topics have a subscriber."""

    @abc.abstractmethod
    def publish(self, obs: TimedObservation) -> None:
        """The robot's observation: state (and full state) and cloud, each with its stamp."""

    def is_shutdown(self) -> bool:
        return False

    @abc.abstractmethod
    def close(self) -> None:
        """Unsubscribe and unadvertise everything."""


def serve_sim(transport: SimTransport, task: str, rate_hz: float = 10.0, seed: int = EVAL_SEED_START,
              point_cloud: dict | None = None, result_path=None, timeout_s: float = 120.0,
              max_steps: int = EPISODE_STEPS, publish_full_state: bool = False,
              start_on_first_action: bool = True) -> dict:
    estop = threading.Event()      # latched for the node's life
    node: dict = {"robot": None, "estop_received_t": None}

    def on_estop(data: bool) -> None:
        if not data:
            return
        if not estop.is_set():
            node["estop_received_t"] = time.time()
            estop.set()
            say("e-stop received")
            transport.publish_estop()  # the robot's own latch: a controller that connects later stops too
        robot = node["robot"]
        if robot is not None:
            robot.stop()

    try:
        transport.subscribe_estop(on_estop)
        say("e-stop subscribed")
        robot = SimRobot(task, rate_hz=rate_hz, seed=seed, point_cloud=point_cloud,
                         publish_full_state=publish_full_state, max_episode_steps=max_steps,
                         start_on_first_action=start_on_first_action)
    except BaseException:
        transport.close()
        raise
    node["robot"] = robot
    if estop.is_set():  # came while the simulator was being built
        robot.stop()
    rejected = {"action": 0}
    transport_ms: list[float] = []   # arrival here - the action's stamp (the time the policy node sent it)

    def reject_action(error: Exception) -> None:
        rejected["action"] += 1
        if rejected["action"] == 1:
            log.warning("sim robot: dropped an action: %s (further ones are counted)", error)

    def on_action(position: Sequence[float], stamp_s: float) -> None:
        transport_ms.append(1000 * (time.time() - stamp_s))
        if len(transport_ms) == 1:
            say("first action")
        try:
            action = vector_from(position, robot.action_dim, "action: position", np.float32)
        except ValueError as e:
            return reject_action(e)
        robot.send(action, stamp_s)

    last_stamp, t_start, connected, moving = None, time.time(), False, False
    try:
        transport.start(on_action, robot.hold, reject_action)
        say("publishing")
        while not robot.done and not transport.is_shutdown() and time.time() - t_start < timeout_s:
            if not connected and transport.controller_connected():
                connected = True
                say("controller connected")
            if not moving and robot.commanded_steps > 0:
                moving = True
                say("moving")
            obs = robot.observe()
            if obs is not None and (obs.t_state, obs.t_cloud) != last_stamp:
                last_stamp = (obs.t_state, obs.t_cloud)
                transport.publish(obs)
            robot.wait_done(0.002)
        summary = {"task": task, "seed": seed, "success": bool(robot.success), "steps": robot.steps,
                   "hold_steps": robot.hold_steps, "commanded_steps": robot.commanded_steps,
                   "actions_received": len(transport_ms), "trailing_holds": robot.trailing_holds,
                   "e_stopped": estop.is_set() or robot.stopped, "steps_at_estop": robot.steps_at_stop,
                   "estop_received_t": node["estop_received_t"],
                   "rejected": rejected, "timed_out": not robot.done,
                   "action_transport_ms_p50": percentile(transport_ms, 50),
                   "action_transport_ms_p99": percentile(transport_ms, 99)}
    finally:
        transport.close()
        robot.close()
    if result_path:
        from mfp.demos.atomic import atomic_write_json

        atomic_write_json(result_path, summary)
    return summary


def serve_topics(transport_cls, task: str, topics, rate_hz: float = 10.0, seed: int = EVAL_SEED_START,
                 point_cloud: dict | None = None, result_path=None, timeout_s: float = 120.0,
                 max_steps: int = EPISODE_STEPS, node_name: str = "mfp_sim_robot",
                 start_on_first_action: bool = True) -> dict:
    """`serve_sim` over ROS topics (a RosTopics): the transport is `transport_cls(topics, node_name)` (ROS 1 or
    ROS 2), and the privileged full state is published when the topics name a full_state topic."""
    return serve_sim(transport_cls(topics, node_name), task, rate_hz=rate_hz, seed=seed, point_cloud=point_cloud,
                     result_path=result_path, timeout_s=timeout_s, max_steps=max_steps,
                     publish_full_state=topics.full_state is not None, start_on_first_action=start_on_first_action)


def say(what: str) -> None:
    print(f"ros-sim: {what}", flush=True)
