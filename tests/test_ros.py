"""Through ROS 1 for real: a roscore on a free port, the simulated-robot node and the policy node as two
processes. Skipped (with the reason) only where ROS is not installed; scripts/setup.sh installs it."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from mfp.demos.store import DemoStore

pytestmark = pytest.mark.skipif(shutil.which("roscore") is None, reason="ROS 1 not installed (scripts/setup.sh)")
TASK = "metaworld/drawer-open"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ros_env(tmp_path_factory):
    port = _free_port()
    env = {**os.environ, "ROS_MASTER_URI": f"http://127.0.0.1:{port}", "ROS_HOSTNAME": "127.0.0.1",
           "ROS_HOME": str(tmp_path_factory.mktemp("ros_home")), "MUJOCO_GL": "egl"}
    core = subprocess.Popen(["roscore", "-p", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while subprocess.run(["rosnode", "list"], env=env, capture_output=True).returncode != 0:
        assert time.monotonic() < deadline, "roscore did not come up"
        time.sleep(0.3)
    yield env
    os.killpg(core.pid, signal.SIGINT)
    core.wait(timeout=20)


def _mfp(args, env, **kw):
    return subprocess.Popen([sys.executable, "-m", "mfp.eval.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def _sim(tmp_path, env, rate=20, max_steps=200):
    result = tmp_path / "sim.json"
    proc = _mfp(["ros-sim", "--task", TASK, "--rate", str(rate), "--publish-full-state", "--max-steps",
                 str(max_steps), "--result", str(result), "--timeout", "90"], env)
    return proc, result


def _control(tmp_path, env, rate=20, extra=()):
    return _mfp(["control", "--robot", "ros", "--expert", "--task", TASK, "--rate", str(rate), "--warmup", "1",
                 "--stale-stop", "1.5", "--record", str(tmp_path / "run.zarr"), "--out", str(tmp_path / "run.json"),
                 *extra], env)


def _finish(proc, timeout=120):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def test_task_solved_through_ros_topics(tmp_path, ros_env):
    sim, result = _sim(tmp_path, ros_env)
    ctl = _control(tmp_path, ros_env)
    rc_sim, sim_out = _finish(sim)
    rc_ctl, ctl_out = _finish(ctl)
    summary = json.loads(result.read_text())
    assert summary["success"], (sim_out, ctl_out)
    assert summary["rejected"] == {"action": 0} and not summary["e_stopped"]
    (report,) = json.loads((tmp_path / "run.json").read_text())
    assert report["steps"] >= 20 and report["stop_reason"] == "observations_lost"  # the sim node ended the episode
    store = DemoStore.open(tmp_path / "run.zarr")
    assert store.n_episodes == 1 and store.read("action").shape == (report["steps"], 4)
    assert store.attrs["topics"]["action"] == "/mfp/action"


def test_killed_policy_process_leaves_the_robot_holding(tmp_path, ros_env):
    sim, result = _sim(tmp_path, ros_env, max_steps=120)
    ctl = _control(tmp_path, ros_env)
    time.sleep(4.0)
    ctl.send_signal(signal.SIGKILL)
    _finish(ctl)
    rc, out = _finish(sim)
    summary = json.loads(result.read_text())
    assert summary["steps"] == 120 and not summary["success"], out
    assert summary["trailing_holds"] >= 20   # the robot held on its own once actions stopped coming


def test_estop_topic_stops_the_policy_and_the_robot(tmp_path, ros_env):
    sim, result = _sim(tmp_path, ros_env, max_steps=150)
    ctl = _control(tmp_path, ros_env)
    time.sleep(4.0)
    subprocess.run(["rostopic", "pub", "-1", "/mfp/estop", "std_msgs/Bool", "data: true"], env=ros_env,
                   capture_output=True, timeout=30)
    rc_ctl, ctl_out = _finish(ctl)
    rc_sim, sim_out = _finish(sim)
    (report,) = json.loads((tmp_path / "run.json").read_text())
    assert report["stop_reason"] == "e_stop" and rc_ctl == 1, ctl_out
    summary = json.loads(result.read_text())
    assert summary["e_stopped"] and not summary["success"] and summary["trailing_holds"] >= 20
    assert DemoStore.open(tmp_path / "run.zarr").attrs["control_runs"][0]["stop_reason"] == "e_stop"


def test_bag_recorded_with_rosbag_from_the_simulated_robot_imports_and_trains(tmp_path, ros_env):
    from mfp.eval.cli import main

    bag = tmp_path / "sim.bag"
    recorder = subprocess.Popen(["rosbag", "record", "-O", str(bag), "/mfp/point_cloud", "/mfp/joint_states",
                                 "/mfp/action"], env=ros_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    time.sleep(2.0)  # rosbag subscribes before the robot starts publishing
    sim, result = _sim(tmp_path, ros_env, max_steps=60)
    ctl = _control(tmp_path, ros_env)
    _finish(sim)
    _finish(ctl)
    os.killpg(recorder.pid, signal.SIGINT)  # rosbag closes the bag cleanly on SIGINT ...
    recorder.wait(timeout=30)
    deadline = time.monotonic() + 30        # ... in its recorder process, which may outlive the wrapper
    while not bag.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert bag.exists(), "rosbag wrote no bag"
    config = tmp_path / "bag.yaml"
    config.write_text("task: sim/drawer-open\n"
                      "topics: {point_cloud: /mfp/point_cloud, state: /mfp/joint_states, action: /mfp/action}\n"
                      "camera_to_base: [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]\n"
                      "point_cloud: {crop_low: [-0.6, 0.3, 0.005], crop_high: [0.6, 1.0, 0.8], num_points: 512}\n"
                      "max_staleness_s: 0.2\n")
    data = tmp_path / "from_bag.zarr"
    assert main(["import-bag", str(bag), "--out", str(data), "--config", str(config), "--no-progress"]) == 0
    store = DemoStore.open(data)
    (report,) = json.loads((tmp_path / "run.json").read_text())
    assert store.n_episodes == 1 and 0.8 * report["steps"] <= len(store.read("action")) <= report["steps"]
    assert store.read("point_cloud").shape[1:] == (512, 3) and store.read("state").shape[1] == 9
    run = tmp_path / "train"
    assert main(["train", "--data", str(data), "--out", str(run), "--preset", "tiny", "--steps", "2",
                 "--batch-size", "4", "--val-every", "0", "--no-progress", "--threads", "1"]) == 0
    assert (run / "last.safetensors").exists()
