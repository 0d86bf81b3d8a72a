"""Through ROS 2 for real, over DDS (Cyclone DDS's Python binding, no rclpy): the simulated-robot node
(`mfp ros-sim --ros 2`) and the policy node (`mfp control --robot ros2`) as two processes, e-stop buttons as a
third, each test in a DDS domain of its own (ROS_DOMAIN_ID from this process's id), so that runs on one machine
do not hear each other. Every wait is on an event (a line a node prints, a matched reader, a counter moving, a
process ending), never a fixed sleep, so the tests hold on a loaded machine.

The message layouts are checked against rosbags' ROS 2 (Humble) message definitions, an implementation of
ROS 2's CDR that shares nothing with ours.

Skipped (with the reason) only where the DDS binding cannot be imported; it is a dependency of the project, so
in CI (CI set, as .ci/run does) its absence fails instead."""

import contextlib
import importlib
import itertools
import json
import os
import sys
import time

from dataclasses import dataclass, field

import numpy as np
import pytest
import node_scenarios as scenarios
from procs import WAIT_S, BusyCores, Node, kill_all, mfp_command

from mfp.demos.store import DemoStore

TASK = "metaworld/drawer-open"
_domains = itertools.count()


def _dds_missing() -> str:
    """Why the DDS binding cannot be used here, or "" when it can."""
    try:
        importlib.import_module("cyclonedds.domain")
    except ImportError as e:
        return f"cyclonedds is not importable: {e}"
    return ""


def _require_dds() -> None:
    """Skip without the binding; in CI fail instead (it is installed with the project)."""
    missing = _dds_missing()
    if missing and os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"ROS 2 over DDS is required in CI but {missing}: scripts/setup.sh installs it with the "
                    f"project (pip install cyclonedds)", pytrace=False)
    if missing:
        pytest.skip(f"ROS 2 tests need the DDS binding ({missing}; pip install cyclonedds)")


@pytest.fixture
def domain() -> int:
    _require_dds()
    return 1 + (os.getpid() * 7 + next(_domains)) % 100   # within ROS 2's safe range 0..101


@pytest.fixture
def dds_env(domain) -> dict:
    return {**os.environ, "ROS_DOMAIN_ID": str(domain), "MUJOCO_GL": "egl"}


def _sim(tmp_path, env, rate=20, max_steps=200) -> Node:
    return Node(mfp_command("ros-sim", "--ros", 2, "--task", TASK, "--rate", rate, "--publish-full-state",
                            "--max-steps", max_steps, "--result", tmp_path / "sim.json", "--timeout", WAIT_S), env)


def _control(tmp_path, env, rate=20, warmup=1) -> Node:
    return Node(mfp_command("control", "--robot", "ros2", "--expert", "--task", TASK, "--rate", rate, "--warmup",
                            warmup, "--stale-stop", "1.5", "--record", tmp_path / "run.zarr", "--out",
                            tmp_path / "run.json"), env)


# An e-stop button written against the DDS binding alone (as any ROS 2 node would see the topic): a std_msgs/Bool
# writer on rt/mfp/estop, transient-local (argv[2] == "latched") or volatile (like `ros2 topic pub`). It says
# "ready", publishes true when told "go", waits until `argv[1]` readers are matched and have acknowledged it,
# says "delivered" and ends.
ESTOP_BUTTON = r"""
import os, sys, time
from dataclasses import dataclass
from cyclonedds.core import Policy, Qos
from cyclonedds.domain import DomainParticipant
from cyclonedds.idl import IdlStruct
from cyclonedds.pub import DataWriter
from cyclonedds.topic import Topic
from cyclonedds.util import duration

@dataclass
class Bool(IdlStruct, typename="std_msgs::msg::dds_::Bool_"):
    data: bool = False

durability = Policy.Durability.TransientLocal if sys.argv[2] == "latched" else Policy.Durability.Volatile
participant = DomainParticipant(int(os.environ["ROS_DOMAIN_ID"]))
writer = DataWriter(participant, Topic(participant, "rt/mfp/estop", Bool),
                    Qos(Policy.Reliability.Reliable(duration(seconds=1)), durability, Policy.History.KeepLast(1)))
print("ready", flush=True)
sys.stdin.readline()
writer.write(Bool(data=True))
while len(writer.get_matched_subscriptions()) < int(sys.argv[1]):
    time.sleep(0.01)
assert writer.wait_for_acks(duration(seconds=300))
print("delivered", len(writer.get_matched_subscriptions()), flush=True)
"""


def _estop_button(env, readers: int, latched: bool) -> Node:
    button = Node([sys.executable, "-c", ESTOP_BUTTON, str(readers), "latched" if latched else "volatile"], env,
                  stdin=True)
    button.wait_for("ready")
    return button


# --- the message layouts -------------------------------------------------------------------------------------
def test_messages_have_the_ros2_names_and_wire_layout():
    """Each type serialized here is read by an independent ROS 2 CDR implementation (rosbags, Humble's .msg
    definitions) field for field, and the other way round; the DDS type names are rmw_cyclonedds_cpp's."""
    _require_dds()
    from rosbags.typesys import Stores, get_typestore

    from mfp.demos import ros2_types as m

    store = get_typestore(Stores.ROS2_HUMBLE)
    header = m.Header(stamp=m.to_stamp(1700000000.123456789), frame_id="base")
    samples = [
        m.PointCloud2(header=header, height=2, width=3, fields=[m.PointField("x", 0, 7, 1), m.PointField("z", 8, 7, 1)],
                      is_bigendian=False, point_step=12, row_step=36, data=bytes(range(72)), is_dense=True),
        m.JointState(header=header, name=["a", "bc"], position=[0.5, -1.0], velocity=[], effort=[2.0]),
        m.Image(header=header, height=2, width=3, encoding="16UC1", is_bigendian=0, step=6, data=bytes(range(12))),
        m.CameraInfo(header=header, height=480, width=640, distortion_model="plumb_bob", d=[0.1, 0.2],
                     k=[float(i) for i in range(9)], r=[1.0] * 9, p=[2.0] * 12, binning_x=1, binning_y=2,
                     roi=m.RegionOfInterest(1, 2, 3, 4, True)),
        m.Float64MultiArray(layout=m.MultiArrayLayout(dim=[m.MultiArrayDimension("q", 3, 3)], data_offset=1),
                            data=[1.0, 2.0, 3.0]),
        m.Bool(data=True), m.Empty(),
    ]
    for sample in samples:
        name = m.ros_type_name(type(sample))
        assert type(sample).__idl_typename__.replace(".", "::") == name.replace("/msg/", "::msg::dds_::") + "_"
        raw = sample.serialize()
        assert raw[:4] == b"\x00\x01\x00\x00", name   # CDR, little-endian: what ROS 2 writes
        theirs = store.deserialize_cdr(raw, name)
        _assert_same(sample, theirs, name)
        assert bytes(store.serialize_cdr(theirs, name)) == raw, name   # byte for byte
        assert type(sample).deserialize(bytes(store.serialize_cdr(theirs, name))) == sample, name
    from mfp.demos.ros_msgs import stamp_seconds

    assert m.to_stamp(2.75) == m.Time(sec=2, nanosec=750_000_000)
    t = 1700000000.123456789   # seconds since the epoch -> stamp -> seconds, within float64's resolution
    assert abs(stamp_seconds(m.JointState(header=m.Header(stamp=m.to_stamp(t)))) - t) < 1e-6


def _assert_same(ours, theirs, where: str) -> None:
    import dataclasses

    for f in dataclasses.fields(ours):
        a, b = getattr(ours, f.name), getattr(theirs, f.name)
        if dataclasses.is_dataclass(a):
            _assert_same(a, b, f"{where}.{f.name}")
        elif isinstance(a, list) and a and dataclasses.is_dataclass(a[0]):
            assert len(a) == len(b), f"{where}.{f.name}"
            for x, y in zip(a, b):
                _assert_same(x, y, f"{where}.{f.name}")
        elif isinstance(a, (bytes, list)):
            assert np.array_equal(np.asarray(list(a)), np.asarray(b).reshape(-1)), f"{where}.{f.name}"
        else:
            assert a == b, f"{where}.{f.name}: {a!r} != {b!r}"


def test_topic_names_and_domain_id(monkeypatch):
    _require_dds()
    from mfp.eval.robots.ros2_dds import dds_topic, domain_id
    from mfp.eval.robots.ros_topics import RosTopics

    assert dds_topic("/mfp/action") == "rt/mfp/action" and dds_topic("points") == "rt/points"
    monkeypatch.setenv("ROS_DOMAIN_ID", "17")
    assert domain_id(None) == 17 and domain_id(3) == 3
    monkeypatch.delenv("ROS_DOMAIN_ID")
    assert domain_id(None) == 0
    for bad in ("x", "233", "-1"):
        monkeypatch.setenv("ROS_DOMAIN_ID", bad)
        with pytest.raises(ValueError, match="domain id"):
            domain_id(None)
    with pytest.raises(ValueError, match="domain_id"):
        RosTopics(domain_id=300)
    assert RosTopics(domain_id=5).domain_id == 5


def _until(robot, condition, write, what: str) -> None:
    """Write (again: best effort may lose a sample) until `condition` holds (the robot's thread made it so),
    failing after 60 s."""
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"{what}: never happened; rejected {robot.rejected}"
        write()
        t_wait = time.monotonic() + 1.0
        while not condition() and time.monotonic() < t_wait:
            time.sleep(0.01)   # polling what the robot's thread sets


# --- malformed messages --------------------------------------------------------------------------------------
def test_malformed_ros2_messages_are_dropped_and_counted(domain):
    """A robot fed over real DDS: each bad message (wrong point step, wrong field layout, NaN, an oversized
    cloud) is dropped and counted on its topic, the last good observation stays, and a good message after them
    all is taken: nothing stopped. A peer with another layout of the message is not even matched."""
    from cyclonedds.idl import IdlStruct
    from cyclonedds.idl.types import float32, sequence

    from mfp.demos import ros2_types as m
    from mfp.demos.ros_msgs import MAX_POINTS, pointcloud2_fields_xyz
    from mfp.envs import default_pc_config
    from mfp.eval.robots.ros2 import Ros2Robot
    from mfp.eval.robots.ros2_dds import SENSOR_QOS, DdsNode
    from mfp.eval.robots.ros_topics import RosTopics

    @dataclass
    class OtherJointState(IdlStruct, typename="sensor_msgs::msg::dds_::JointState_"):
        """A JointState of another layout under ROS 2's type name (a peer built from another definition)."""
        position: sequence[float32] = field(default_factory=list)

    pc = default_pc_config(TASK)
    topics = RosTopics(domain_id=domain)
    robot = Ros2Robot(topics, pc, agent_dim=9, action_dim=4, node_name="test_robot")
    camera, peer = DdsNode(domain, "test_camera"), DdsNode(domain, "test_other_peer")
    try:
        pub_cloud = camera.writer(topics.cloud, m.PointCloud2, SENSOR_QOS)
        pub_state = camera.writer(topics.state, m.JointState, SENSOR_QOS)
        inside = (np.asarray(pc.crop_low) + np.asarray(pc.crop_high)) / 2
        points = (inside + 0.01 * np.random.default_rng(0).standard_normal((2000, 3))).astype(np.float32)

        def cloud(t, pts=points, **changes):
            fields, data, step = pointcloud2_fields_xyz(pts)
            msg = m.PointCloud2(header=m.Header(m.to_stamp(t), "base"), height=1, width=len(pts),
                                fields=[m.PointField(*f) for f in fields], point_step=step, row_step=step * len(pts),
                                data=data, is_dense=True)
            for k, v in changes.items():
                setattr(msg, k, v)
            return msg

        def state(t, position):
            return m.JointState(header=m.Header(m.to_stamp(t)), name=[f"q{i}" for i in range(len(position))],
                                position=position)

        t_good = time.time()
        _until(robot, lambda: robot.observe() is not None,
              lambda: (pub_cloud.write(cloud(t_good)), pub_state.write(state(t_good, [0.1] * 9))), "first observation")
        good = robot.observe()

        def rejected(topic):
            return robot.rejected.get(topic, 0)

        bad_clouds = {
            "wrong point step": cloud(t_good + 1, point_step=8, row_step=8 * len(points)),
            "no z field": cloud(t_good + 2, fields=[m.PointField("x", 0, 7, 1), m.PointField("y", 4, 7, 1)]),
            "unknown datatype": cloud(t_good + 3, fields=[m.PointField(n, 4 * i, 42, 1) for i, n in enumerate("xyz")]),
            "NaN points only": cloud(t_good + 4, pts=np.full((50, 3), np.nan, np.float32)),
            "oversized": cloud(t_good + 5, height=MAX_POINTS, width=2, data=b""),
        }
        for i, (what, msg) in enumerate(bad_clouds.items(), start=1):
            _until(robot, lambda: rejected(topics.cloud) >= i, lambda: pub_cloud.write(msg), what)
        bad_states = [state(t_good + 1, [float("nan")] * 9), state(t_good + 2, [0.1] * 5)]
        for i, msg in enumerate(bad_states, start=1):
            _until(robot, lambda: rejected(topics.state) >= i, lambda: pub_state.write(msg), f"bad state {i}")
        # a peer whose JointState has another layout is never matched: DDS compares the type information (a
        # writer from the same participant, created after it, is matched with the robot's reader)
        other = peer.writer(topics.state, OtherJointState, SENSOR_QOS)
        probe = peer.writer(topics.cloud, m.PointCloud2, SENSOR_QOS)
        _until(robot, lambda: len(probe.get_matched_subscriptions()) >= 1, lambda: None, "the probe writer matched")
        assert other.get_matched_subscriptions() == []
        other.write(OtherJointState(position=[float("nan")] * 3))   # goes nowhere
        assert rejected(topics.cloud) == len(bad_clouds) and rejected(topics.state) == 2, robot.rejected
        still = robot.observe()
        assert still.t_cloud == good.t_cloud and still.t_state == good.t_state   # the last good one stays
        np.testing.assert_array_equal(still.point_cloud, good.point_cloud)
        t_new = time.time()
        _until(robot, lambda: robot.observe().t_cloud == pytest.approx(t_new, abs=1e-6),
              lambda: pub_cloud.write(cloud(t_new)), "a good cloud after the bad ones")
        assert robot.describe()["rejected_messages"] == robot.rejected
    finally:
        camera.close()
        peer.close()
        robot.close()


def test_depth_image_and_camera_info_become_the_policy_cloud(domain):
    """Image (16UC1, millimetres) + CameraInfo over real DDS -> the one point-cloud code -> a cloud in the crop
    box, in the base frame given by camera_to_base; an image whose size disagrees with its CameraInfo is
    dropped and counted."""
    from mfp.demos import ros2_types as m
    from mfp.envs import default_pc_config
    from mfp.eval.robots.ros2 import Ros2Robot
    from mfp.eval.robots.ros2_dds import SENSOR_QOS, DdsNode
    from mfp.eval.robots.ros_topics import RosTopics

    pc = default_pc_config(TASK)
    # a camera 1 m above (0, 0.65, 0) looking straight down (OpenCV axes: x right, y down, z forward)
    pose = [[1, 0, 0, 0], [0, -1, 0, 0.65], [0, 0, -1, 1.0], [0, 0, 0, 1]]
    topics = RosTopics(cloud=None, depth="/cam/depth", camera_info="/cam/info", camera_to_base=pose,
                       domain_id=domain)
    robot = Ros2Robot(topics, pc, agent_dim=9, action_dim=4, node_name="test_robot")
    camera = DdsNode(domain, "test_depth_camera")
    try:
        pub_info = camera.writer(topics.camera_info, m.CameraInfo, SENSOR_QOS)
        pub_depth = camera.writer(topics.depth, m.Image, SENSOR_QOS)
        pub_state = camera.writer(topics.state, m.JointState, SENSOR_QOS)
        w, h = 32, 24
        info = m.CameraInfo(header=m.Header(frame_id="cam"), height=h, width=w, distortion_model="plumb_bob",
                            k=[100.0, 0, 16, 0, 100.0, 12, 0, 0, 1])

        def image(t, width=w):
            depth_mm = np.full((h, width), 600, "<u2")   # a floor 0.6 m away: z = 0.4 in the base frame
            return m.Image(header=m.Header(m.to_stamp(t), "cam"), height=h, width=width, encoding="16UC1",
                           step=2 * width, data=depth_mm.tobytes())

        t = time.time()
        _until(robot, lambda: robot.observe() is not None,
              lambda: (pub_info.write(info), pub_depth.write(image(t)),
                       pub_state.write(m.JointState(header=m.Header(m.to_stamp(t)), position=[0.0] * 9))),
              "first observation")
        obs = robot.observe()
        assert obs.point_cloud.shape == (pc.num_points, 3) and obs.t_cloud == pytest.approx(t, abs=1e-6)
        np.testing.assert_allclose(obs.point_cloud[:, 2], 0.4, atol=1e-3)
        assert (np.abs(obs.point_cloud[:, 0]) <= 0.1 + 1e-3).all()
        assert (np.abs(obs.point_cloud[:, 1] - 0.65) <= 0.075 + 1e-3).all()
        _until(robot, lambda: robot.rejected.get(topics.depth, 0) >= 1, lambda: pub_depth.write(image(t + 1, width=30)),
              "an image of the wrong size")
        assert robot.observe().t_cloud == obs.t_cloud
    finally:
        camera.close()
        robot.close()


# --- two processes over ROS 2 --------------------------------------------------------------------------------
def _nodes(tmp_path, dds_env) -> dict:
    """How node_scenarios starts the nodes and presses an e-stop over ROS 2."""
    return {"start_sim": lambda max_steps=200: _sim(tmp_path, dds_env, max_steps=max_steps),
            "start_control": lambda warmup=1: _control(tmp_path, dds_env, warmup=warmup)}


def test_task_solved_through_ros2_topics_recorded_as_mcap_that_imports_and_trains(tmp_path, dds_env):
    report, summary, store = scenarios.task_solved(tmp_path, **_nodes(tmp_path, dds_env))
    assert store.attrs["robot"] == "ros2"
    assert store.attrs["domain_id"] == int(dds_env["ROS_DOMAIN_ID"]) and store.attrs["rejected_messages"] == {}
    _recorded_mcap_imports_and_trains(tmp_path, report)


def _recorded_mcap_imports_and_trains(tmp_path, report) -> None:
    """The MCAP file `--record` wrote beside the store (ROS 2 bag format) goes through `mfp import-bag` into a
    dataset that trains."""
    from mfp.eval.cli import main

    (bag,) = tmp_path.glob("run.seed*.mcap")
    assert not list(tmp_path.glob("*.part"))
    config = tmp_path / "bag.yaml"
    config.write_text("task: sim/drawer-open\n"
                      "topics: {point_cloud: /mfp/point_cloud, state: /mfp/joint_states, action: /mfp/action}\n"
                      "camera_to_base: [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]\n"
                      "point_cloud: {crop_low: [-0.6, 0.3, 0.005], crop_high: [0.6, 1.0, 0.8], num_points: 512}\n"
                      "max_staleness_s: 0.2\n")
    data = tmp_path / "from_mcap.zarr"
    assert main(["import-bag", str(bag), "--out", str(data), "--config", str(config), "--no-progress"]) == 0
    store = DemoStore.open(data)
    assert store.n_episodes == 1 and 0.8 * report["steps"] <= len(store.read("action")) <= report["steps"]
    sent = DemoStore.open(tmp_path / "run.zarr").read("action")
    for action in store.read("action"):   # each imported action is one that was sent, as sent
        assert np.abs(sent - action).max(axis=1).min() < 1e-6, action
    assert store.read("point_cloud").shape[1:] == (512, 3) and store.read("state").shape[1] == 9
    run = tmp_path / "train"
    assert main(["train", "--data", str(data), "--out", str(run), "--preset", "tiny", "--steps", "2",
                 "--batch-size", "4", "--val-every", "0", "--no-progress", "--threads", "1"]) == 0
    assert (run / "last.safetensors").exists()


def test_killed_policy_process_leaves_the_robot_holding(tmp_path, dds_env):
    scenarios.killed_policy_leaves_the_robot_holding(tmp_path, **_nodes(tmp_path, dds_env))


def test_estop_from_a_third_process_stops_the_policy_and_the_robot(tmp_path, dds_env):
    """Published once, volatile (as `ros2 topic pub` does), while the robot moves: both nodes stop, the robot
    holds from then on."""
    scenarios.estop_while_moving_stops_both(   # one volatile e-stop reader per node
        tmp_path, **_nodes(tmp_path, dds_env), e_stop_button=lambda: _estop_button(dds_env, readers=2, latched=False))


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "every-core-busy"])
def test_estop_while_the_policy_node_starts_stops_both_nodes(tmp_path, dds_env, busy):
    """Published once by a third process while the policy node starts (its first observation on the way, or
    warming up: an endless warm-up here), on an idle machine and with every core saturated by busy loops: the
    policy node stops at once, the robot node before any action."""
    with BusyCores() if busy else contextlib.nullcontext():
        sim = _sim(tmp_path, dds_env, max_steps=40)
        button = ctl = None
        try:
            sim.wait_for("ros-sim: publishing")
            button = _estop_button(dds_env, readers=2, latched=False)
            ctl = _control(tmp_path, dds_env, warmup=10**9)
            sim.wait_for("ros-sim: controller connected")
            button.send("go")
            button.wait_for("delivered")
            rc_ctl, ctl_out = ctl.finish()
            rc_sim, sim_out = sim.finish()
        finally:
            kill_all(sim, button, ctl)
    report, summary = scenarios.check_estopped(tmp_path, rc_ctl, ctl_out, sim_out)
    (event,) = [e for e in report["events"] if e["kind"] == "e_stop"]
    assert report["steps"] == 0, report
    assert "during the warm-up" in event["detail"] or "before the first observation" in event["detail"], event
    assert summary["steps_at_estop"] == 0 and summary["commanded_steps"] == 0 and summary["actions_received"] == 0


def test_estop_before_the_controller_starts_reaches_it(tmp_path, dds_env):
    """Published once, transient-local, the moment the robot node has subscribed (it is building its simulator
    then), by a process that is gone before the policy node starts: the robot latches it and never moves, and
    its own transient-local e-stop stops the policy node that joins later."""
    button = _estop_button(dds_env, readers=2, latched=True)   # the robot node's two e-stop readers
    sim = _sim(tmp_path, dds_env, max_steps=200)
    ctl = None
    try:
        sim.wait_for("ros-sim: e-stop subscribed")
        button.send("go")
        rc_button, button_out = button.finish()
        assert rc_button == 0 and "delivered" in button_out, button_out
        sim.wait_for("ros-sim: e-stop received")
        ctl = _control(tmp_path, dds_env)
        rc_ctl, ctl_out = ctl.finish()
        rc_sim, sim_out = sim.finish()
    finally:
        kill_all(sim, button, ctl)
    report, summary = scenarios.check_estopped(tmp_path, rc_ctl, ctl_out, sim_out)
    assert summary["steps_at_estop"] == 0 and summary["commanded_steps"] == 0 and report["steps"] == 0


def test_malformed_actions_reach_the_robot_node_dropped_and_counted(tmp_path, dds_env, domain):
    """Actions of the wrong size or with NaN, published over DDS to the simulated robot node: dropped and counted
    in its summary, the robot never moves; an e-stop then ends its episode."""
    from cyclonedds.util import duration

    from mfp.demos import ros2_types as m
    from mfp.eval.robots.ros2_dds import COMMAND_QOS, ESTOP_QOS, DdsNode
    from mfp.eval.robots.ros_topics import RosTopics

    topics = RosTopics()
    sim = _sim(tmp_path, dds_env, max_steps=40)
    node = DdsNode(domain, "test_bad_controller")
    try:
        pub_action = node.writer(topics.action, m.JointState, COMMAND_QOS)
        pub_estop = node.writer(topics.estop, m.Bool, ESTOP_QOS)
        sim.wait_for("ros-sim: publishing")   # its action reader exists
        deadline = time.monotonic() + WAIT_S
        while not pub_action.get_matched_subscriptions():
            assert time.monotonic() < deadline, "the robot node's action reader never matched"
            time.sleep(0.01)   # polling discovery
        now = time.time()
        for position in ([0.1, 0.2, 0.3], [float("nan")] * 4):   # 3 values for a 4-dim action; NaN
            pub_action.write(m.JointState(header=m.Header(m.to_stamp(now)), position=position))
        assert pub_action.wait_for_acks(duration(seconds=WAIT_S))   # both are in the robot node's reader
        sim.wait_for("ros-sim: first action")
        pub_estop.write(m.Bool(data=True))
        rc, out = sim.finish()
    finally:
        node.close()
        kill_all(sim)
    summary = json.loads((tmp_path / "sim.json").read_text())
    assert summary["rejected"] == {"action": 2} and summary["actions_received"] == 2, out
    assert summary["commanded_steps"] == 0 and summary["e_stopped"] and rc == 0, out


def test_missing_dds_binding_fails_in_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setitem(sys.modules, "cyclonedds.domain", None)   # importing it now raises ImportError
    for ci, outcome in [(None, pytest.skip.Exception), ("true", pytest.fail.Exception), ("1", pytest.fail.Exception),
                        ("false", pytest.skip.Exception)]:
        if ci is None:
            monkeypatch.delenv("CI", raising=False)
        else:
            monkeypatch.setenv("CI", ci)
        with pytest.raises(outcome) as e:
            _require_dds()
        assert "cyclonedds is not importable" in str(e.value), ci
