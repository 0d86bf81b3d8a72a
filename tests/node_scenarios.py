"""The scenarios every robot transport must pass, shared by test_ros.py (ROS 1) and test_ros2.py (ROS 2 over DDS):
the simulated-robot node (`mfp ros-sim`) and the policy node (`mfp control`) as two processes that write their
summaries to tmp_path/sim.json and tmp_path/run.json. A transport test module passes its own ways of starting the
nodes (`start_sim(max_steps=...)`, `start_control(warmup=...)`) and of pressing an e-stop button from a third
process (`e_stop_button()`: a started Node that publishes once when sent "go" and says "delivered").
Every wait is on an event (a line a node prints, a process ending), never a fixed sleep."""

import json

from procs import kill_all

from mfp.demos.store import DemoStore


def reports(tmp_path) -> tuple[dict, dict]:
    """(the policy node's report, the robot node's summary)."""
    (report,) = json.loads((tmp_path / "run.json").read_text())
    return report, json.loads((tmp_path / "sim.json").read_text())


def task_solved(tmp_path, start_sim, start_control) -> tuple[dict, dict, DemoStore]:
    """The policy node drives the robot node to success through the topics; returns (report, summary, the store
    `--record` wrote) for the transport's own checks."""
    sim = start_sim()
    ctl = None
    try:
        sim.wait_for("ros-sim: publishing")   # the robot stands still until the controller's first action
        ctl = start_control()
        rc_ctl, ctl_out = ctl.finish()
        rc_sim, sim_out = sim.finish()
    finally:
        kill_all(sim, ctl)
    report, summary = reports(tmp_path)
    assert summary["success"], (sim_out, ctl_out)
    assert summary["rejected"] == {"action": 0} and not summary["e_stopped"]
    assert report["steps"] >= 20 and report["stop_reason"] == "observations_lost"  # the sim node ended the episode
    assert 20 <= summary["commanded_steps"] <= report["steps"]
    store = DemoStore.open(tmp_path / "run.zarr")
    assert store.n_episodes == 1 and store.read("action").shape == (report["steps"], 4)
    assert store.attrs["topics"]["action"] == "/mfp/action"
    return report, summary, store


def killed_policy_leaves_the_robot_holding(tmp_path, start_sim, start_control) -> None:
    """kill -9 of the policy node while it drives: the robot node holds by itself (its watchdog) to the end."""
    sim = start_sim(max_steps=120)
    ctl = None
    try:
        sim.wait_for("ros-sim: publishing")
        ctl = start_control()
        sim.wait_for("ros-sim: first action")   # the policy is driving the robot
        ctl.kill()                                # kill -9
        rc, out = sim.finish()
    finally:
        kill_all(sim, ctl)
    summary = json.loads((tmp_path / "sim.json").read_text())
    assert summary["steps"] == 120 and not summary["success"], out
    assert summary["actions_received"] >= 1 and summary["commanded_steps"] >= 1, out   # actions came before the kill
    assert summary["trailing_holds"] >= 20   # the robot held on its own once actions stopped coming
    assert not summary["e_stopped"]


def check_estopped(tmp_path, rc_ctl, ctl_out, sim_out) -> tuple[dict, dict]:
    """Both nodes stopped on the e-stop, and from then on the robot only held; returns (report, summary)."""
    report, summary = reports(tmp_path)
    assert report["stop_reason"] == "e_stop" and rc_ctl == 1, ctl_out
    assert summary["e_stopped"] and not summary["success"] and not summary["timed_out"], sim_out
    assert "ros-sim: e-stop received" in sim_out and summary["estop_received_t"] is not None
    # from the e-stop on the robot only held: at most one action already being executed when it came
    assert summary["trailing_holds"] >= summary["steps"] - summary["steps_at_estop"] - 1, summary
    return report, summary


def estop_while_moving_stops_both(tmp_path, start_sim, start_control, e_stop_button) -> None:
    """An e-stop published once from a third process while the robot moves: both nodes stop, the robot holds from
    then on, and the recorded run says why it stopped."""
    sim = start_sim(max_steps=100)
    button = ctl = None
    try:
        sim.wait_for("ros-sim: publishing")
        button = e_stop_button()
        ctl = start_control()
        sim.wait_for("ros-sim: moving")   # the robot executed a first action
        button.send("go")
        button.wait_for("delivered")
        rc_ctl, ctl_out = ctl.finish()
        rc_sim, sim_out = sim.finish()
    finally:
        kill_all(sim, button, ctl)
    report, summary = check_estopped(tmp_path, rc_ctl, ctl_out, sim_out)
    assert summary["steps_at_estop"] >= 1 and summary["trailing_holds"] >= 20
    assert DemoStore.open(tmp_path / "run.zarr").attrs["control_runs"][0]["stop_reason"] == "e_stop"
