"""`mfp import-bag`: ROS 1 bags and MCAP files (ROS 1 and ROS 2 messages) become a trainable demo dataset.

The ROS 1 bag holds real simulator data (Meta-World reach: rendered depth + intrinsics, the expert's executed
actions, agent_pos as JointState), so the imported clouds can be compared with the env's own observations.
The MCAP files hold synthetic PointCloud2 messages whose content says which message they came from, so the
time alignment (latest sample stamped <= t, staleness, out-of-order messages) is checked frame by frame.
"""

import numpy as np
import pytest
import yaml

from mfp.demos import ros_clouds
from mfp.demos.bag_import import BagConfigError, BagImportConfig, BagImportError, import_bag
from mfp.demos.store import DemoStore, DemoStoreError
from mfp.envs import PointCloudConfig

S = 1_000_000_000  # ns
T0 = 1_700_000_000 * S  # a realistic UNIX time


# --- writing ROS 1 bags with rosbags ---------------------------------------------------------------------------
def _ts1():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS1_NOETIC)


def _header(ts, t_ns: int, frame: str = "camera"):
    T = ts.types
    return T["std_msgs/msg/Header"](seq=0, stamp=T["builtin_interfaces/msg/Time"](sec=t_ns // S, nanosec=t_ns % S),
                                    frame_id=frame)


def _image(ts, t_ns, depth_m, encoding="32FC1"):
    if encoding == "16UC1":
        raw = np.round(depth_m * 1000).astype("<u2")
    else:
        raw = np.asarray(depth_m, dtype="<f4")
    h, w = raw.shape
    return ts.types["sensor_msgs/msg/Image"](header=_header(ts, t_ns), height=h, width=w, encoding=encoding,
                                              is_bigendian=0, step=w * raw.itemsize,
                                              data=np.frombuffer(raw.tobytes(), np.uint8))


def _camera_info(ts, t_ns, K, w, h):
    T = ts.types
    roi = T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    P = np.zeros((3, 4))
    P[:, :3] = K
    return T["sensor_msgs/msg/CameraInfo"](header=_header(ts, t_ns), height=h, width=w, distortion_model="plumb_bob",
                                           D=np.zeros(5), K=np.asarray(K, float).reshape(-1), R=np.eye(3).reshape(-1),
                                           P=P.reshape(-1), binning_x=0, binning_y=0, roi=roi)


def _joint_state(ts, t_ns, names, positions):
    return ts.types["sensor_msgs/msg/JointState"](header=_header(ts, t_ns, "base"), name=list(names),
                                                   position=np.asarray(positions, float), velocity=np.zeros(0),
                                                   effort=np.zeros(0))


def _f64_array(ts, values):
    T = ts.types
    return T["std_msgs/msg/Float64MultiArray"](layout=T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0),
                                                data=np.asarray(values, float))


def _write_ros1_bag(path, messages):
    """messages: [(topic, msgtype, log time ns, message)], written in log-time order."""
    from rosbags.rosbag1 import Writer

    ts = _ts1()
    with Writer(path) as writer:
        conns = {}
        for topic, msgtype, t_ns, msg in sorted(messages, key=lambda m: m[2]):
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=ts)
            writer.write(conns[topic], t_ns, ts.serialize_ros1(msg, msgtype))


def _write_config(path, **cfg):
    path.write_text(yaml.safe_dump(cfg))
    return path


# --- a ROS 1 bag of real simulator data --------------------------------------------------------------------------
EPISODE_STEPS = 20


@pytest.fixture(scope="module")
def sim_bag(tmp_path_factory):
    """Meta-World reach driven by its expert, 2 episodes of 20 steps, 5 s apart: episode 0 publishes 32FC1 depth
    (metres), episode 1 16UC1 (millimetres, as a real camera). Camera and state samples are stamped 60 ms before
    each action, the next ones 40 ms after it: only "latest sample stamped <= t" pairs them correctly."""
    from mfp.demos.experts import make_expert
    from mfp.envs import make_env

    ts = _ts1()
    env = make_env("metaworld/reach")
    expert = make_expert("metaworld/reach")
    names = [f"ee_{i}" for i in range(9)]
    messages, ref = [], {"point_cloud": [], "agent_pos": [], "action": [], "t": []}
    try:
        for episode, (seed, encoding) in enumerate([(0, "32FC1"), (1, "16UC1")]):
            obs, info = env.reset(seed=seed)
            for k in range(EPISODE_STEPS):
                t = T0 + episode * 5 * S + k * S // 10
                t_obs = t - 60_000_000
                depth = env.camera.render_depth()
                K, pose = env.camera.K, env.camera.cam_to_world()
                messages += [
                    ("/camera/depth", "sensor_msgs/msg/Image", t_obs + 10_000_000, _image(ts, t_obs, depth, encoding)),
                    ("/camera/info", "sensor_msgs/msg/CameraInfo", t_obs + 10_000_000,
                     _camera_info(ts, t_obs, K, env.camera.width, env.camera.height)),
                    ("/joint_states", "sensor_msgs/msg/JointState", t_obs + 10_000_000,
                     _joint_state(ts, t_obs, names, obs["agent_pos"])),
                ]
                ref["point_cloud"].append(obs["point_cloud"])
                ref["agent_pos"].append(obs["agent_pos"])
                obs, _, _, _, info = env.step(expert.act(info["full_state"]))
                executed = info["executed_action"].astype(np.float64)
                messages.append(("/arm/command", "std_msgs/msg/Float64MultiArray", t, _f64_array(ts, executed)))
                ref["action"].append(executed)
                ref["t"].append(t)
    finally:
        env.close()
    root = tmp_path_factory.mktemp("bag")
    bag = root / "reach.bag"
    _write_ros1_bag(bag, messages)
    config = _write_config(
        root / "topics.yaml", task="metaworld/reach",
        topics={"depth": "/camera/depth", "camera_info": "/camera/info", "state": "/joint_states",
                "action": "/arm/command"},
        camera_to_base=pose.tolist(), max_staleness_s=0.1, episode_gap_s=1.0)
    out = root / "reach.zarr"
    report = import_bag(bag, out, config, progress=False)
    return {"bag": bag, "config": config, "out": out, "report": report, "K": K, "pose": pose,
            **{k: np.asarray(v) for k, v in ref.items()}}


def _chamfer(a, b):
    d = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
    return 0.5 * (d.min(axis=1).mean() + d.min(axis=0).mean())


def test_ros1_bag_of_simulator_data_imports_like_the_env_observes(sim_bag):
    store = DemoStore.open(sim_bag["out"])
    n = EPISODE_STEPS
    assert store.episode_ends.tolist() == [n, 2 * n]  # split at the 5 s gap
    assert store.keys() == ["action", "point_cloud", "point_cloud_timestamp", "state", "state_timestamp", "timestamp"]
    # Actions and states exactly as published (float32).
    np.testing.assert_array_equal(store.read("action"), sim_bag["action"].astype(np.float32))
    np.testing.assert_array_equal(store.read("state"), sim_bag["agent_pos"].astype(np.float32))
    # Times: the action's log time, and the observations stamped 60 ms before it (not the ones 40 ms after).
    t = sim_bag["t"] / S
    np.testing.assert_allclose(store.read("timestamp"), t, rtol=0, atol=1e-6)
    np.testing.assert_allclose(store.read("point_cloud_timestamp"), t - 0.06, rtol=0, atol=1e-6)
    np.testing.assert_allclose(store.read("state_timestamp"), t - 0.06, rtol=0, atol=1e-6)
    # Point clouds: metric float depth reproduces the env's own clouds (same back-projection, crop and FPS) ...
    clouds, ref = store.read("point_cloud"), sim_bag["point_cloud"]
    assert clouds.shape == ref.shape == (2 * n, 512, 3)
    np.testing.assert_allclose(clouds[:n], ref[:n], atol=1e-5)
    # ... and millimetre depth comes within quantisation: small chamfer distance, same bounding boxes.
    chamfer = [_chamfer(clouds[i], ref[i]) for i in range(n, 2 * n)]
    assert np.mean(chamfer) < 0.003 and max(chamfer) < 0.006, chamfer  # measured: mean 2.1 mm, max 4.0 mm
    np.testing.assert_allclose(clouds[n:].min(axis=1), ref[n:].min(axis=1), atol=0.01)
    np.testing.assert_allclose(clouds[n:].max(axis=1), ref[n:].max(axis=1), atol=0.01)
    # A shifted frame would not pass the same test: the comparison above can tell frames apart.
    assert np.abs(clouds[1:n] - ref[: n - 1]).max() > 1e-3


def test_calibration_and_provenance_are_in_the_attrs(sim_bag):
    attrs = DemoStore.open(sim_bag["out"]).attrs
    assert attrs["task"] == "metaworld/reach"
    cal = attrs["calibration"]
    np.testing.assert_allclose(cal["intrinsics"]["K"], sim_bag["K"])
    assert (cal["intrinsics"]["width"], cal["intrinsics"]["height"]) == (128, 128)
    np.testing.assert_allclose(cal["camera_to_base"], sim_bag["pose"])
    # The same shapes as `mfp collect` writes: camera = CameraModel.to_dict(), point_cloud = PointCloudConfig.to_dict().
    np.testing.assert_allclose(attrs["camera"]["K"], sim_bag["K"])
    np.testing.assert_allclose(attrs["camera"]["cam_to_world"], sim_bag["pose"])
    assert attrs["point_cloud"] == PointCloudConfig().to_dict()
    assert "stamped <= t" in attrs["time_alignment"]
    (source,) = attrs["sources"]
    assert source["name"] == "reach.bag" and source["format"] == "ROS 1 bag" and source["complete"]
    assert source["message_counts"] == {"/joint_states": 40, "/arm/command": 40, "/camera/info": 40,
                                        "/camera/depth": 40}
    assert source["episodes"] == [0, 1] and source["frames"] == 40
    assert source["time_sources"]["/arm/command"] == "bag log time"
    assert source["time_sources"]["/camera/depth"] == "header.stamp"
    report = sim_bag["report"]
    assert report.episodes_added == 2 and report.frames_added == 40 and not any(report.dropped.values())


def test_imported_dataset_trains(sim_bag, tmp_path, one_torch_thread):
    from mfp.eval.cli import main

    assert main(["train", "--data", str(sim_bag["out"]), "--preset", "tiny", "--steps", "3", "--batch-size", "4",
                 "--val-every", "0", "--no-progress", "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "last.safetensors").exists()


def test_same_recording_is_not_imported_twice_and_mismatched_settings_are_refused(sim_bag, tmp_path):
    with pytest.raises(DemoStoreError, match="reach.bag .* already imported into this dataset as episodes \\[0, 1\\]"):
        import_bag(sim_bag["bag"], sim_bag["out"], sim_bag["config"], progress=False)
    other = yaml.safe_load(sim_bag["config"].read_text())
    other["point_cloud"] = {"num_points": 256}
    with pytest.raises(DemoStoreError, match="holds point_cloud"):
        import_bag(sim_bag["bag"], sim_bag["out"], other, progress=False)
    assert DemoStore.open(sim_bag["out"]).n_episodes == 2


# --- MCAP files, synthetic point clouds ------------------------------------------------------------------------
# camera_to_base: a 90-degree turn about z plus a shift; clouds are published in the camera frame.
CAM_TO_BASE = np.array([[0.0, -1.0, 0.0, 0.5], [1.0, 0.0, 0.0, -0.2], [0.0, 0.0, 1.0, 0.1], [0.0, 0.0, 0.0, 1.0]])
CROP = {"crop_low": [0.0, 0.0, 0.0], "crop_high": [0.5, 0.5, 0.5], "num_points": 64}


def _marked_cloud_base(k: int) -> np.ndarray:
    """Cloud k in the base frame: 4 x 50 points, 150 inside the crop box at x >= 0.01 k (the mark), 50 outside."""
    rng = np.random.default_rng(k)
    inside = rng.uniform([0.0, 0.0, 0.0], [0.2, 0.4, 0.4], (150, 3)) + [0.01 * k + 0.001, 0.0, 0.0]
    outside = rng.uniform([1.0, 1.0, 1.0], [2.0, 2.0, 2.0], (50, 3))
    return np.concatenate([inside, outside])


def _cloud_bytes(k: int) -> tuple[bytes, dict]:
    """Organised 4 x 50 cloud, x y z float32 + a 4-byte rgb field (point_step 16), 8 bytes of row padding,
    in the camera frame; the last point is NaN (an invalid reading)."""
    base = _marked_cloud_base(k)
    cam = (base - CAM_TO_BASE[:3, 3]) @ CAM_TO_BASE[:3, :3]  # inverse transform
    cam[-1] = np.nan
    h, w, point_step = 4, 50, 16
    row_step = w * point_step + 8
    buf = np.zeros((h, row_step), np.uint8)
    pts = np.zeros((h, w), dtype=np.dtype({"names": ["x", "y", "z", "rgb"], "formats": ["<f4"] * 3 + ["<u4"],
                                           "offsets": [0, 4, 8, 12], "itemsize": 16}))
    for i, n in enumerate("xyz"):
        pts[n] = cam[:, i].reshape(h, w)
    buf[:, : w * point_step] = pts.view(np.uint8).reshape(h, w * point_step)
    fields = [("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("rgb", 12, 6)]
    return buf.tobytes(), {"height": h, "width": w, "point_step": point_step, "row_step": row_step, "fields": fields}


def _ros2_schemas(writer):
    from rosbags.typesys import Stores, get_typestore

    ts2 = get_typestore(Stores.ROS2_HUMBLE)
    return {name: writer.register_msgdef(name, ts2.generate_msgdef(name, ros_version=2)[0])
            for name in ("sensor_msgs/msg/PointCloud2", "sensor_msgs/msg/JointState", "std_msgs/msg/Float64MultiArray")}


def _stamp2(t_ns):
    return {"stamp": {"sec": t_ns // S, "nanosec": t_ns % S}, "frame_id": "camera"}


def _write_ros2_mcap(path):
    """Clouds stamped k * 100 ms (k = 0..9, cloud 5 missing; cloud 7 logged after cloud 8), states at + 20 ms,
    actions (Float64MultiArray, no header) logged at + 50 ms, and one action at 10 ms, before any state."""
    from mcap_ros2.writer import Writer

    with open(path, "wb") as f, Writer(f) as writer:
        schemas = _ros2_schemas(writer)
        msgs = []
        for k in range(10):
            if k != 5:
                data, meta = _cloud_bytes(k)
                msg = {"header": _stamp2(T0 + k * S // 10), "height": meta["height"], "width": meta["width"],
                       "fields": [{"name": n, "offset": o, "datatype": d, "count": 1} for n, o, d in meta["fields"]],
                       "is_bigendian": False, "point_step": meta["point_step"], "row_step": meta["row_step"],
                       "data": data, "is_dense": False}
                log = T0 + (85 if k == 7 else k * 100 + 10) * 1_000_000
                msgs.append(("/points", "sensor_msgs/msg/PointCloud2", msg, log))
            t_state = T0 + k * S // 10 + 20_000_000
            msgs.append(("/joint_states", "sensor_msgs/msg/JointState",
                         {"header": _stamp2(t_state), "name": ["a", "b"], "position": [float(k), -float(k)],
                          "velocity": [], "effort": []}, t_state + 1_000_000))
            msgs.append(("/action", "std_msgs/msg/Float64MultiArray",
                         {"layout": {"dim": [], "data_offset": 0}, "data": [k, 10.0 * k, 100.0 * k]},
                         T0 + k * S // 10 + 50_000_000))
        msgs.append(("/action", "std_msgs/msg/Float64MultiArray",
                     {"layout": {"dim": [], "data_offset": 0}, "data": [-1.0, -1.0, -1.0]}, T0 + 10_000_000))
        for topic, schema, msg, log in sorted(msgs, key=lambda m: m[3]):
            writer.write_message(topic, schemas[schema], msg, log_time=log, publish_time=log)


def _mcap_config(**over):
    cfg = {"task": "real/synthetic", "topics": {"point_cloud": "/points", "state": "/joint_states",
                                                 "action": "/action"},
           "camera_to_base": CAM_TO_BASE.tolist(), "point_cloud": dict(CROP), "max_staleness_s": 0.1}
    cfg.update(over)
    return cfg


def test_mcap_with_ros2_point_clouds(tmp_path, monkeypatch):
    monkeypatch.setattr(ros_clouds, "BLOCK_POINTS", 30)  # decode and crop in many blocks of rows and columns
    path = tmp_path / "synthetic.mcap"
    _write_ros2_mcap(path)
    report = import_bag(path, tmp_path / "out.zarr", _mcap_config(), progress=False)
    assert report.format == "MCAP (ROS 2 messages)"
    # 11 actions: the one at 10 ms has no earlier state; the one at 550 ms would use cloud 4 (150 ms old).
    assert report.dropped == {"with_no_earlier_point_cloud": 0, "with_a_stale_point_cloud": 1,
                              "with_no_earlier_state": 1, "with_a_stale_state": 0}
    store = DemoStore.open(tmp_path / "out.zarr")
    kept = [0, 1, 2, 3, 4, 6, 7, 8, 9]
    assert store.episode_ends.tolist() == [9]
    np.testing.assert_array_equal(store.read("action"), [[k, 10.0 * k, 100.0 * k] for k in kept])
    np.testing.assert_array_equal(store.read("state"), [[k, -k] for k in kept])
    np.testing.assert_allclose(store.read("point_cloud_timestamp"), [(T0 + k * S // 10) / S for k in kept], atol=1e-6)
    clouds = store.read("point_cloud")
    assert clouds.shape == (9, 64, 3)
    for cloud, k in zip(clouds, kept):  # cloud k (cloud 7 arrived out of order), in the base frame, cropped
        d = np.linalg.norm(cloud[:, None] - _marked_cloud_base(k)[None], axis=-1).min(axis=1)
        assert d.max() < 1e-5, k  # every point is one of cloud k's points, moved into the base frame
        assert np.all(cloud >= CROP["crop_low"]) and np.all(cloud <= CROP["crop_high"])
        assert abs(cloud[:, 0].min() - (0.01 * k + 0.001)) < 0.02 and len(np.unique(cloud, axis=0)) == 64
    attrs = store.attrs
    assert attrs["calibration"]["intrinsics"] is None
    np.testing.assert_allclose(attrs["calibration"]["camera_to_base"], CAM_TO_BASE)
    assert attrs["sources"][0]["message_counts"] == {"/joint_states": 10, "/action": 11, "/points": 9}


def _write_ros2_mcap_rounded_stamps(path):
    """10 frames, 100 ms apart: actions without a header (Float64MultiArray, so their log time t counts); the cloud
    and the state recorded for frame k are header-stamped 1 ns AFTER t for even k (a clock that rounds the other
    way), 1 ms before t for odd k. Returns the observation stamps."""
    from mcap_ros2.writer import Writer

    stamps = []
    with open(path, "wb") as f, Writer(f) as writer:
        schemas = _ros2_schemas(writer)
        msgs = []
        for k in range(10):
            t = T0 + k * S // 10
            stamp = t + 1 if k % 2 == 0 else t - 1_000_000
            stamps.append(stamp)
            data, meta = _cloud_bytes(k)
            msgs.append(("/points", "sensor_msgs/msg/PointCloud2",
                         {"header": _stamp2(stamp), "height": meta["height"], "width": meta["width"],
                          "fields": [{"name": n, "offset": o, "datatype": d, "count": 1} for n, o, d in meta["fields"]],
                          "is_bigendian": False, "point_step": meta["point_step"], "row_step": meta["row_step"],
                          "data": data, "is_dense": False}, stamp + 5_000_000))
            msgs.append(("/joint_states", "sensor_msgs/msg/JointState",
                         {"header": _stamp2(stamp), "name": ["a", "b"], "position": [float(k), -float(k)],
                          "velocity": [], "effort": []}, stamp + 1_000_000))
            msgs.append(("/action", "std_msgs/msg/Float64MultiArray",
                         {"layout": {"dim": [], "data_offset": 0}, "data": [k, 10.0 * k, 100.0 * k]}, t))
        for topic, schema, msg, log in sorted(msgs, key=lambda m: m[3]):
            writer.write_message(topic, schemas[schema], msg, log_time=log, publish_time=log)
    return stamps


def test_stamps_a_few_nanoseconds_after_the_action_count_as_at_or_before(tmp_path):
    """Issue 12 part 5: an action logged 1 ns before the header stamp of the cloud recorded for it took the previous
    cloud (then 101 ms old: stale) and the frame was dropped. With the default stamp_tolerance_s (1 ms), and with a
    tolerance of exactly 1 ns (the bound is inclusive), every frame keeps its own cloud and state; with 0, the even
    frames are dropped as before, counted per reason."""
    path = tmp_path / "rounded.mcap"
    stamps = _write_ros2_mcap_rounded_stamps(path)
    assert BagImportConfig.from_dict(_mcap_config()).stamp_tolerance_s == 0.001
    for name, over in [("default", {}), ("one_ns", {"stamp_tolerance_s": 1e-9})]:
        report = import_bag(path, tmp_path / f"{name}.zarr", _mcap_config(**over), progress=False)
        assert report.frames_added == 10 and not any(report.dropped.values()), (name, report.summary())
        store = DemoStore.open(tmp_path / f"{name}.zarr")
        np.testing.assert_array_equal(store.read("action"), [[k, 10.0 * k, 100.0 * k] for k in range(10)])
        np.testing.assert_array_equal(store.read("state"), [[k, -k] for k in range(10)])
        np.testing.assert_allclose(store.read("point_cloud_timestamp"), np.asarray(stamps) / S, rtol=0, atol=1e-6)
        for cloud, k in zip(store.read("point_cloud"), range(10)):  # cloud k's own points, not cloud k - 1's
            d = np.linalg.norm(cloud[:, None] - _marked_cloud_base(k)[None], axis=-1).min(axis=1)
            assert d.max() < 1e-5, (name, k)
        assert store.attrs["sources"][0]["config"]["stamp_tolerance_s"] == over.get("stamp_tolerance_s", 0.001)
    report = import_bag(path, tmp_path / "strict.zarr", _mcap_config(stamp_tolerance_s=0), progress=False)
    assert report.dropped == {"with_no_earlier_point_cloud": 1, "with_a_stale_point_cloud": 4,
                              "with_no_earlier_state": 0, "with_a_stale_state": 0}
    assert "dropped 5 of 10 action messages: 1 with no earlier point cloud, 4 with a stale point cloud" in \
        report.summary()
    store = DemoStore.open(tmp_path / "strict.zarr")
    np.testing.assert_array_equal(store.read("state"), [[k, -k] for k in (1, 3, 5, 7, 9)])
    assert store.attrs["sources"][0]["dropped"] == report.dropped


def test_mcap_with_ros1_messages_and_joint_state_actions(tmp_path):
    """ROS 1 messages in an MCAP (genpy decoding), JointState actions with header stamps, joints selected by name."""
    from mcap.writer import Writer

    ts = _ts1()
    path = tmp_path / "ros1.mcap"
    with open(path, "wb") as f:
        w = Writer(f)
        w.start(profile="ros1")
        channels = {}
        for topic, msgtype in (("/points", "sensor_msgs/msg/PointCloud2"),
                               ("/joint_states", "sensor_msgs/msg/JointState"), ("/cmd", "sensor_msgs/msg/JointState")):
            schema = w.register_schema(name=msgtype.replace("/msg/", "/"), encoding="ros1msg",
                                       data=ts.generate_msgdef(msgtype)[0].encode())
            channels[topic] = (w.register_channel(topic=topic, message_encoding="ros1", schema_id=schema), msgtype)
        PF = ts.types["sensor_msgs/msg/PointField"]
        for k in range(3):
            t = T0 + k * S // 10
            data, meta = _cloud_bytes(k)
            cloud = ts.types["sensor_msgs/msg/PointCloud2"](
                header=_header(ts, t), height=meta["height"], width=meta["width"],
                fields=[PF(name=n, offset=o, datatype=d, count=1) for n, o, d in meta["fields"]],
                is_bigendian=False, point_step=meta["point_step"], row_step=meta["row_step"],
                data=np.frombuffer(data, np.uint8), is_dense=False)
            state = _joint_state(ts, t, ["b", "c", "a"], [k + 0.2, k + 0.3, k + 0.1])
            command = _joint_state(ts, t + 30_000_000, ["a", "b"], [k, 2 * k])
            for topic, msg, stamp in (("/points", cloud, t), ("/joint_states", state, t),
                                      ("/cmd", command, t + 30_000_000)):
                cid, msgtype = channels[topic]
                # log times 1 s late: the header stamps are what counts (time_source: header)
                w.add_message(channel_id=cid, log_time=stamp + S, publish_time=stamp + S,
                              data=bytes(ts.serialize_ros1(msg, msgtype)))
        w.finish()
    cfg = _mcap_config(topics={"point_cloud": "/points", "state": "/joint_states", "action": "/cmd"},
                       state_joints=["a", "b"], action_joints=["b"])
    report = import_bag(path, tmp_path / "out.zarr", cfg, progress=False)
    assert report.format == "MCAP (ROS 1 messages)" and report.frames_added == 3
    store = DemoStore.open(tmp_path / "out.zarr")
    np.testing.assert_allclose(store.read("state"), [[k + 0.1, k + 0.2] for k in range(3)], atol=1e-6)
    np.testing.assert_array_equal(store.read("action"), [[2 * k] for k in range(3)])
    np.testing.assert_allclose(store.read("timestamp"), [(T0 + k * S // 10 + 30_000_000) / S for k in range(3)],
                               atol=1e-6)
    assert store.attrs["sources"][0]["time_sources"]["/cmd"] == "header.stamp"
    # time_source: log -> every message at its log time (here 1 s after its stamp); same pairs, times + 1 s.
    import_bag(path, tmp_path / "log.zarr", {**cfg, "time_source": "log"}, progress=False)
    logged = DemoStore.open(tmp_path / "log.zarr")
    np.testing.assert_allclose(logged.read("timestamp"), store.read("timestamp") + 1.0, atol=1e-6)
    np.testing.assert_array_equal(logged.read("point_cloud"), store.read("point_cloud"))
    assert logged.attrs["sources"][0]["time_sources"]["/cmd"] == "bag log time"


def test_ros2_bag_folder(tmp_path):
    """`ros2 bag record` output (metadata.yaml + sqlite3), read by rosbags; a PointCloud2 as float64 fields."""
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)
    T = ts.types
    topics = {"/points": "sensor_msgs/msg/PointCloud2", "/joint_states": "sensor_msgs/msg/JointState",
              "/action": "std_msgs/msg/Float64MultiArray"}
    with Writer(tmp_path / "rec", version=8) as writer:
        conns = {t: writer.add_connection(t, m, typestore=ts) for t, m in topics.items()}
        for k in range(3):
            t = T0 + k * S // 10
            header = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=t // S, nanosec=t % S),
                                              frame_id="camera")
            xyz = ((_marked_cloud_base(k) - CAM_TO_BASE[:3, 3]) @ CAM_TO_BASE[:3, :3]).astype("<f8")
            fields = [T["sensor_msgs/msg/PointField"](name=n, offset=8 * i, datatype=8, count=1)
                      for i, n in enumerate("xyz")]
            msgs = {
                "/points": T["sensor_msgs/msg/PointCloud2"](
                    header=header, height=1, width=len(xyz), fields=fields, is_bigendian=False, point_step=24,
                    row_step=24 * len(xyz), data=np.frombuffer(xyz.tobytes(), np.uint8), is_dense=True),
                "/joint_states": T["sensor_msgs/msg/JointState"](header=header, name=["a"], position=np.array([k / 2]),
                                                                 velocity=np.zeros(0), effort=np.zeros(0)),
                "/action": T["std_msgs/msg/Float64MultiArray"](
                    layout=T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0), data=np.array([k, -k], float)),
            }
            for topic, msg in msgs.items():
                writer.write(conns[topic], t + 1000, ts.serialize_cdr(msg, topics[topic]))
    report = import_bag(tmp_path / "rec", tmp_path / "out.zarr", _mcap_config(), progress=False)
    assert report.format == "ROS 2 bag" and report.frames_added == 3
    store = DemoStore.open(tmp_path / "out.zarr")
    np.testing.assert_array_equal(store.read("action"), [[k, -k] for k in range(3)])
    np.testing.assert_array_equal(store.read("state"), [[k / 2] for k in range(3)])
    for k, cloud in enumerate(store.read("point_cloud")):
        d = np.linalg.norm(cloud[:, None] - _marked_cloud_base(k)[None], axis=-1).min(axis=1)
        assert d.max() < 1e-5 and np.all(cloud >= CROP["crop_low"]) and np.all(cloud <= CROP["crop_high"])


# --- bad inputs ---------------------------------------------------------------------------------------------------
def _depth_bag(path, images, info_size=(16, 16)):
    """A small ROS 1 bag: depth images at 10 Hz (1 m away), CameraInfo, JointState, Float64MultiArray."""
    ts = _ts1()
    K = np.array([[10.0, 0, 7.5], [0, 10.0, 7.5], [0, 0, 1]])
    msgs = []
    for k, img in enumerate(images):
        t = T0 + k * S // 10
        msgs += [("/depth", "sensor_msgs/msg/Image", t, img(ts, t)),
                 ("/info", "sensor_msgs/msg/CameraInfo", t, _camera_info(ts, t, K, *info_size)),
                 ("/js", "sensor_msgs/msg/JointState", t, _joint_state(ts, t, ["a"], [k])),
                 ("/act", "std_msgs/msg/Float64MultiArray", t + 1, _f64_array(ts, [k]))]
    _write_ros1_bag(path, msgs)
    return path


def _depth_config(**over):
    cfg = {"task": "real/box", "topics": {"depth": "/depth", "camera_info": "/info", "state": "/js", "action": "/act"},
           "camera_to_base": np.eye(4).tolist(),
           "point_cloud": {"crop_low": [-1, -1, 0.5], "crop_high": [1, 1, 1.5], "num_points": 16}}
    cfg.update(over)
    return cfg


def _good_image(ts, t):
    return _image(ts, t, np.ones((16, 16)), "16UC1")


def test_bad_messages_name_topic_index_and_problem(tmp_path):
    def rgb(ts, t):
        msg = _image(ts, t, np.ones((16, 16)), "16UC1")
        msg.encoding = "rgb8"
        return msg

    def short(ts, t):
        msg = _image(ts, t, np.ones((16, 16)), "16UC1")
        msg.data = msg.data[:-2]
        return msg

    out = tmp_path / "x.zarr"
    bag = _depth_bag(tmp_path / "rgb.bag", [_good_image, rgb])
    with pytest.raises(BagImportError, match=r"topic '/depth' message 1: depth encoding 'rgb8' is not supported: "
                                             r"expected 16UC1 \(millimetres\) or 32FC1"):
        import_bag(bag, out, _depth_config(), progress=False)
    bag = _depth_bag(tmp_path / "short.bag", [_good_image, _good_image, short])
    with pytest.raises(BagImportError, match=r"topic '/depth' message 2: data holds 510 bytes, expected step x "
                                             r"height = 32 x 16 = 512"):
        import_bag(bag, out, _depth_config(), progress=False)
    bag = _depth_bag(tmp_path / "size.bag", [_good_image], info_size=(20, 16))
    with pytest.raises(BagImportError, match="message 0: image is 16x16 but the camera_info is 20x16"):
        import_bag(bag, out, _depth_config(), progress=False)
    bag = _depth_bag(tmp_path / "ok.bag", [_good_image, _good_image])
    with pytest.raises(BagImportError, match=r"topic '/nope' \(topics.state in <config>\) is not in the recording; "
                                             r"its topics: /act \(std_msgs/Float64MultiArray, 2\)"):
        import_bag(bag, out, _depth_config(topics={"depth": "/depth", "camera_info": "/info", "state": "/nope",
                                                   "action": "/act"}), progress=False)
    with pytest.raises(BagImportError, match=r"topic '/act' \(topics.state\) carries std_msgs/Float64MultiArray; "
                                             r"expected sensor_msgs/JointState"):
        import_bag(bag, out, _depth_config(topics={"depth": "/depth", "camera_info": "/info", "state": "/act",
                                                   "action": "/js"}), progress=False)
    with pytest.raises(BagImportError, match=r"topic '/js' message 0: joints \['z'\] \(config key 'state_joints'\) "
                                             r"are not in the message, which names \['a'\]"):
        import_bag(bag, out, _depth_config(state_joints=["z"]), progress=False)
    with pytest.raises(BagImportError,
                       match=r"message 0: no point lies inside the crop box .* span \[-0.75, -0.75, 1.0\]"):
        import_bag(bag, out, _depth_config(point_cloud={"crop_low": [0, 0, 2], "crop_high": [1, 1, 3]}), progress=False)
    (tmp_path / "not.bag").write_bytes(b"hello")
    with pytest.raises(BagImportError, match="neither a ROS 1 bag"):
        import_bag(tmp_path / "not.bag", out, _depth_config(), progress=False)
    assert not out.exists()  # nothing is written for a bag that fails


def test_stale_observations_are_dropped_and_counted(tmp_path):
    bag = _depth_bag(tmp_path / "ok.bag", [_good_image, _good_image, _good_image])
    # Actions 1 ns after their observations: fresh for any staleness.
    renamed = tmp_path / "ok.recording"  # a ROS 1 bag is recognised by its first bytes, not its name
    renamed.write_bytes(bag.read_bytes())
    report = import_bag(renamed, tmp_path / "a.zarr", _depth_config(), progress=False)
    assert report.frames_added == 3 and not any(report.dropped.values()) and report.format == "ROS 1 bag"
    assert DemoStore.open(tmp_path / "a.zarr").read("point_cloud").shape == (3, 16, 3)
    # One depth image, then only states and actions: the later actions' cloud is too old.
    cfg = _depth_config(max_staleness_s=0.05)
    ts = _ts1()
    msgs = [("/depth", "sensor_msgs/msg/Image", T0, _good_image(ts, T0)),
            ("/info", "sensor_msgs/msg/CameraInfo", T0, _camera_info(ts, T0, np.diag([10.0, 10.0, 1.0]), 16, 16))]
    for k in range(4):  # state every 100 ms, action 10 ms after it; the single cloud ages 10, 110, 210, 310 ms
        t = T0 + k * S // 10
        msgs += [("/js", "sensor_msgs/msg/JointState", t, _joint_state(ts, t, ["a"], [k])),
                 ("/act", "std_msgs/msg/Float64MultiArray", t + 10_000_000, _f64_array(ts, [k]))]
    _write_ros1_bag(tmp_path / "stale.bag", msgs)
    report = import_bag(tmp_path / "stale.bag", tmp_path / "b.zarr", cfg, progress=False)
    assert report.frames_added == 1 and report.dropped["with_a_stale_point_cloud"] == 3
    np.testing.assert_array_equal(DemoStore.open(tmp_path / "b.zarr").read("action"), [[0.0]])
    assert "dropped 3 of 4 action messages: 3 with a stale point cloud" in report.summary()
    with pytest.raises(BagImportError, match="no action message has a point cloud and a state at most "
                                             "max_staleness_s=0.001 s older"):
        import_bag(tmp_path / "stale.bag", tmp_path / "c.zarr", _depth_config(max_staleness_s=0.001), progress=False)
    assert not (tmp_path / "c.zarr").exists()


@pytest.mark.parametrize("change, message", [
    ({"topics": {"pointcloud": "/p", "state": "/s", "action": "/a"}},
     r"unknown key 'topics.pointcloud': expected one of \['topics.point_cloud'"),
    ({"topics": {"depth": "/d", "state": "/s", "action": "/a"}},
     r"key 'topics': expected an observation source: .* missing \['camera_info'\]"),
    ({"camera_to_base": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}, r"key 'camera_to_base': expected a 4x4 matrix"),
    ({"camera_to_base": (2 * np.eye(4)).tolist()}, r"key 'camera_to_base': expected a rigid transform"),
    ({"point_cloud": {"crop_low": [0, 0], "crop_high": [1, 1, 1]}}, r"key 'point_cloud.crop_low': expected 3 numbers"),
    ({"point_cloud": {"crop_low": [1, 1, 1], "crop_high": [0, 0, 0]}}, r"key 'point_cloud': .*crop box is empty"),
    ({"max_staleness_s": -1}, r"key 'max_staleness_s': expected a positive number of seconds, got -1"),
    ({"stamp_tolerance_s": -0.001}, r"key 'stamp_tolerance_s': expected a number of seconds >= 0 .*, got -0.001"),
    ({"stamp_tolerance_s": "1ms"}, r"key 'stamp_tolerance_s': expected a number of seconds >= 0 .*, got '1ms'"),
    ({"state_joints": "a"}, r"key 'state_joints': expected a list of distinct joint names"),
    ({"time_source": "bag"}, r"key 'time_source': expected 'header'"),
    ({"stalenes": 1}, r"unknown key 'stalenes'"),
])
def test_bad_config_names_file_key_and_expectation(tmp_path, change, message):
    path = _write_config(tmp_path / "topics.yaml", **_depth_config(**change))
    with pytest.raises(BagConfigError, match=f"^{tmp_path / 'topics.yaml'}: {message}"):
        BagImportConfig.from_yaml(path)


def test_cli_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    from mfp.eval.cli import main

    bag = _depth_bag(tmp_path / "ok.bag", [_good_image, _good_image])
    config = _write_config(tmp_path / "topics.yaml", **_depth_config(max_staleness_s="soon"))
    assert main(["import-bag", str(bag), "--out", str(tmp_path / "x.zarr"), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mfp import-bag: error: {config}: key 'max_staleness_s'") and err.count("\n") == 1
    config = _write_config(tmp_path / "good.yaml", **_depth_config())
    assert main(["import-bag", str(tmp_path / "missing.bag"), "--out", str(tmp_path / "x.zarr"),
                 "--config", str(config)]) == 2
    assert capsys.readouterr().err == f"mfp import-bag: error: {tmp_path / 'missing.bag'}: no such bag\n"
    assert main(["import-bag", str(bag), "--out", str(tmp_path / "x.zarr"), "--config", str(config),
                 "--no-progress"]) == 0
    assert "+1 episodes (2 frames" in capsys.readouterr().out
    assert DemoStore.open(tmp_path / "x.zarr").n_episodes == 1


def test_a_huge_cloud_is_processed_in_blocks(monkeypatch):
    """A PointCloud2 far larger than a block goes through decode/transform/crop one block at a time."""
    blocks = []
    real = ros_clouds.xyz_blocks_from_pointcloud2

    def spy(msg, *args, **kwargs):
        for b in real(msg, *args, **kwargs):
            blocks.append(len(b))
            yield b

    monkeypatch.setattr(ros_clouds, "xyz_blocks_from_pointcloud2", spy)
    monkeypatch.setattr(ros_clouds, "BLOCK_POINTS", 1000)
    n = 20_000
    xyz = np.random.default_rng(0).uniform(-1, 1, (n, 3)).astype("<f4")

    class Field:
        def __init__(self, name, offset):
            self.name, self.offset, self.datatype, self.count = name, offset, 7, 1

    class Msg:
        height, width, point_step, row_step, is_bigendian = 1, n, 12, 12 * n, False
        fields = [Field("x", 0), Field("y", 4), Field("z", 8)]
        data = xyz.tobytes()

    cfg = BagImportConfig.from_dict(_mcap_config(camera_to_base=np.eye(4).tolist(),
                                                 point_cloud={"crop_low": [0, 0, 0], "crop_high": [1, 1, 1],
                                                              "num_points": 32}))
    cloud = ros_clouds.cloud_from_pointcloud2(Msg(), cfg.point_cloud, cfg.camera_to_base_array())
    assert cloud.shape == (32, 3) and (cloud >= 0).all() and (cloud <= 1).all()
    assert max(blocks) == 1000 and sum(blocks) == n


def test_the_help_example_config_is_valid():
    import textwrap

    from mfp.eval.cli.import_bag import CONFIG_EXAMPLE

    example = textwrap.dedent(CONFIG_EXAMPLE.split("\n", 1)[1].split("\n\n", 1)[0])
    cfg = BagImportConfig.from_dict(yaml.safe_load(example), source="help")
    assert cfg.uses_depth and cfg.topics.cloud_topic == "/camera/depth/image_rect_raw"
    assert cfg.point_cloud.num_points == 512 and cfg.episode_gap_s == 2.0 and len(cfg.state_joints) == 7
    assert BagImportConfig.from_dict(cfg.to_dict(), source="help") == cfg  # what the dataset records reads back
