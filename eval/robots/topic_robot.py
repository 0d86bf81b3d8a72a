"""What the ROS 1 and ROS 2 robots (ros.py, ros2.py) share, whatever the middleware: the observation side
(RosInputs), the e-stop heard on the topic, and how `mfp control` builds one from a RobotRequest. Each adapter adds
its own publishers and subscribers, `send`, `hold`, `stop`, `close` and `describe`."""

from __future__ import annotations

from mfp.eval.robots.base import Robot, TimedObservation
from mfp.eval.robots.ros_inputs import RosInputs


class TopicRobot(Robot):
    middleware = "ROS"          # named in the e-stop's reason

    def __init__(self, topics, point_cloud, agent_dim: int, action_dim: int, estop=None,
                 estop_handover_s: float = 5.0):
        self.topics, self.pc_config = topics, point_cloud
        self.agent_dim, self.action_dim = int(agent_dim), int(action_dim)
        self.estop, self.estop_handover_s = estop, float(estop_handover_s)
        self.inputs = RosInputs(topics, point_cloud, agent_dim)
        self._stopped = False
        self._names = [f"a{i}" for i in range(self.action_dim)]   # JointState names of the action

    @property
    def rejected(self) -> dict[str, int]:
        return self.inputs.rejected

    @property
    def transport_ms(self) -> list[float]:
        return self.inputs.transport_ms

    def _on_estop(self, msg) -> None:
        if msg.data and self.estop is not None:
            self.estop.trigger(f"{self.middleware} topic {self.topics.estop}")

    def observe(self) -> TimedObservation | None:
        return self.inputs.observe()


def request_point_cloud(request):
    """The point-cloud settings of a RobotRequest: the checkpoint's, else the task's defaults."""
    from mfp.envs import PointCloudConfig, default_pc_config

    return PointCloudConfig.from_dict(request.point_cloud) if request.point_cloud else default_pc_config(request.task)
