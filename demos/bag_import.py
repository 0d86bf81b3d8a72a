"""Robot demonstrations recorded as ROS 1 bags or MCAP files (ROS 1 or ROS 2 messages) -> a DemoStore dataset.

    import_bag("pick.bag", "data/pick.zarr", "topics.yaml")      # `mfp import-bag pick.bag --out ... --config ...`

Reading needs no ROS installation: ROS 1 `.bag` files through `rosbags` (its own deserialiser and the message
definitions stored in the bag), `.mcap` files through `mcap` with the `mcap-ros2-support` (CDR) and
`mcap-ros1-support` decoders; the file's first bytes decide which. A ROS 2 bag folder (`ros2 bag record`:
metadata.yaml + sqlite3 or mcap storage) is read by `rosbags` too.

Time alignment (also written into the dataset's attrs, `time_alignment`):
    one frame per message on the action topic, at time t = its header stamp when it has one (JointState), else
    the bag's log time (Float64MultiArray has no header); observation = the latest point cloud and the latest
    state stamped <= t + `stamp_tolerance_s` (at or before t; the tolerance, 1 ms by default, absorbs clocks
    that round differently: an action logged 1 ns before the header stamp of the cloud recorded for it still
    gets that cloud, never the previous one), each at most `max_staleness_s` older than t, else the frame is
    dropped and counted per reason. `time_source: log` uses the bag's log time for every topic instead of header stamps.
    data/timestamp, data/point_cloud_timestamp, data/state_timestamp hold the three times of each frame
    (float64 seconds).

Observations go through the project's one point-cloud pipeline (`mfp.envs.pointcloud`): a depth image is
back-projected with the CameraInfo intrinsics and `camera_to_base` by `depth_to_point_cloud`; a PointCloud2 is
moved into the base frame by `camera_to_base`, then both are cropped to the base-frame box and farthest-point
sampled, exactly as the simulators' clouds. The calibration (intrinsics, camera_to_base) goes into the attrs.

Memory stays bounded: the bag is read twice as a stream (first the small topics: state, action, camera_info;
then the camera topic), a camera message is processed only when an action frame will use it, a PointCloud2 is
decoded, transformed and cropped in blocks of rows, and only the sampled clouds (num_points x 3) are kept.
Every malformed message is an error naming the topic, the message index on that topic and the problem.

Writing: the dataset is created (or appended to: same task, point-cloud settings and calibration) only after the
whole bag was read; each episode is committed by DemoStore (crash-safe per episode), and the import is recorded
in attrs `sources` (path, format, topics, message counts, frames kept and dropped, episodes), updated after each
committed episode. Importing the same file twice into one dataset is refused.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm import tqdm

from .bag_config import BagConfigError, BagImportConfig
from .provenance import package_versions, provenance
from .ros_clouds import camera_model, cloud_from_depth, cloud_from_pointcloud2
from .ros_msgs import RosMessageError, get_field, intrinsics_from_camera_info, stamp_ns, vector_from
from .store import DemoStore, DemoStoreError

__all__ = ["BagConfigError", "BagImportConfig", "BagImportError", "ImportReport", "import_bag"]

ROS1_BAG_MAGIC = b"#ROSBAG V2.0"
MCAP_MAGIC = b"\x89MCAP0\r\n"
# Accepted message types per role (package/Type, without ROS 2's "/msg/").
ROLE_TYPES = {
    "point_cloud": ("sensor_msgs/PointCloud2",),
    "depth": ("sensor_msgs/Image",),
    "camera_info": ("sensor_msgs/CameraInfo",),
    "state": ("sensor_msgs/JointState",),
    "action": ("std_msgs/Float64MultiArray", "std_msgs/Float32MultiArray", "sensor_msgs/JointState"),
}
TIME_ALIGNMENT = ("action t uses the latest cloud and state stamped <= t + stamp_tolerance_s (at or before t, "
                  "within the tolerance for clocks that round differently; never a later sample), each at most "
                  "max_staleness_s older, else the frame is dropped; t = the action message's header stamp when it "
                  "has one, else the bag's log time (with time_source 'log': the log time of every message)")


class BagImportError(ValueError):
    """A bag that cannot be imported; the message names the file, the topic, the message index and the problem."""


@dataclass
class ImportReport:
    path: Path
    bag: Path
    format: str
    task: str
    episodes_added: int = 0
    frames_added: int = 0
    action_messages: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    message_counts: dict[str, int] = field(default_factory=dict)
    episode_lengths: list[int] = field(default_factory=list)
    total_episodes: int = 0

    def summary(self) -> str:
        dropped = {k: v for k, v in self.dropped.items() if v}
        text = (f"{self.path}: +{self.episodes_added} episodes ({self.frames_added} frames, lengths "
                f"{self.episode_lengths}) of {self.task} from {self.bag} ({self.format}); "
                f"{self.total_episodes} episodes in total")
        if dropped:
            text += f"; dropped {sum(dropped.values())} of {self.action_messages} action messages: " + ", ".join(
                f"{v} {k.replace('_', ' ')}" for k, v in dropped.items())
        return text


# --- reading bags ----------------------------------------------------------------------------------------------
def _short_type(msgtype: str) -> str:
    return msgtype.replace("/msg/", "/")


class _Source:
    """One recording: `topics` {topic: (message type, count)} and a time-ordered message stream."""

    format: str
    topics: dict[str, tuple[str, int]]

    def messages(self, topics) -> Iterator[tuple[str, int, Any]]:
        """(topic, log time ns, decoded message) for the given topics, in log-time order."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class _RosbagsSource(_Source):
    """A ROS 1 .bag file, or a ROS 2 bag folder (metadata.yaml + sqlite3 or mcap storage), read by rosbags."""

    def __init__(self, path: Path, ros2: bool = False):
        from rosbags.highlevel import AnyReader, AnyReaderError
        from rosbags.typesys import Stores, get_typestore

        self.path = path
        self.format = "ROS 2 bag" if ros2 else "ROS 1 bag"
        self._error = AnyReaderError
        self._tmp = None
        target = path
        if not ros2 and path.suffix != ".bag":  # rosbags tells ROS 1 from ROS 2 by the ".bag" suffix
            import tempfile

            self._tmp = tempfile.TemporaryDirectory(prefix="mfp-bag-")
            target = Path(self._tmp.name) / "recording.bag"
            target.symlink_to(path.resolve())
        # Bags without stored message definitions (ROS 2 Humble's sqlite3) use the standard ones.
        default = get_typestore(Stores.ROS2_HUMBLE if ros2 else Stores.ROS1_NOETIC)
        try:
            self.reader = AnyReader([target], default_typestore=default)
            self.reader.open()
        except Exception as e:  # rosbags raises its own types, e.g. for an unindexed bag
            self._cleanup()
            hint = " (a recording that was not closed: run `rosbag reindex` on it)" if "index" in str(e).lower() else ""
            raise BagImportError(f"{path}: cannot read the {self.format}: {e}{hint}") from None
        topics: dict[str, tuple[str, int]] = {}
        for conn in self.reader.connections:
            msgtype, count = topics.get(conn.topic, (_short_type(conn.msgtype), 0))
            topics[conn.topic] = (msgtype, count + int(conn.msgcount))
        self.topics = topics

    def messages(self, topics):
        conns = [c for c in self.reader.connections if c.topic in set(topics)]
        if not conns:
            return
        try:
            for conn, t_ns, raw in self.reader.messages(connections=conns):
                yield conn.topic, int(t_ns), self.reader.deserialize(raw, conn.msgtype)
        except self._error as e:
            raise BagImportError(f"{self.path}: cannot decode a message: {e}") from None

    def _cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def close(self) -> None:
        try:
            self.reader.close()
        finally:
            self._cleanup()


class _McapSource(_Source):
    def __init__(self, path: Path):
        from mcap.reader import make_reader

        self.path = path
        self._file = open(path, "rb")
        try:
            reader = make_reader(self._file)
            summary = reader.get_summary()
            if summary is None:
                raise BagImportError(f"{path}: the MCAP file has no summary section (a recording that was not "
                                     f"closed?): recover it with `mcap recover` first")
            counts = summary.statistics.channel_message_counts if summary.statistics else {}
            topics: dict[str, tuple[str, int]] = {}
            encodings = set()
            for cid, channel in summary.channels.items():
                schema = summary.schemas.get(channel.schema_id)
                msgtype = _short_type(schema.name) if schema is not None else "?"
                _, count = topics.get(channel.topic, (msgtype, 0))
                topics[channel.topic] = (msgtype, count + int(counts.get(cid, 0)))
                encodings.add(channel.message_encoding)
        except BagImportError:
            self._file.close()
            raise
        except Exception as e:
            self._file.close()
            raise BagImportError(f"{path}: cannot read the MCAP file: {type(e).__name__}: {e}") from None
        self.topics = topics
        names = {"cdr": "ROS 2", "ros1": "ROS 1"}
        self.format = "MCAP (" + ", ".join(names.get(e, e) for e in sorted(encodings)) + " messages)"

    def messages(self, topics):
        from mcap.reader import make_reader
        from mcap_ros1.decoder import DecoderFactory as Ros1Decoders
        from mcap_ros2.decoder import DecoderFactory as Ros2Decoders

        self._file.seek(0)
        reader = make_reader(self._file, decoder_factories=[Ros2Decoders(), Ros1Decoders()])
        try:
            for _, channel, message, decoded in reader.iter_decoded_messages(topics=list(topics), log_time_order=True):
                yield channel.topic, int(message.log_time), decoded
        except BagImportError:
            raise
        except Exception as e:  # mcap and its decoders raise their own types
            raise BagImportError(f"{self.path}: cannot decode a message: {type(e).__name__}: {e}") from None

    def close(self) -> None:
        self._file.close()


def open_source(path) -> _Source:
    """A ROS 1 .bag or an .mcap file, recognised by its first bytes, or a ROS 2 bag folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such bag")
    if path.is_dir():
        if (path / "metadata.yaml").is_file():
            return _RosbagsSource(path, ros2=True)
        raise BagImportError(f"{path}: is a folder without a metadata.yaml; expected a ROS 1 .bag file, an .mcap "
                             f"file or a ROS 2 bag folder")
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(ROS1_BAG_MAGIC):
        return _RosbagsSource(path)
    if head.startswith(MCAP_MAGIC):
        return _McapSource(path)
    raise BagImportError(f"{path}: neither a ROS 1 bag (starts with '#ROSBAG V2.0') nor an MCAP file; "
                         f"first bytes {head[:12]!r}")


# --- decoding messages: mfp.demos.ros_msgs (rosbags, mcap and genpy objects differ in field names and arrays) ------
def _joint_positions(msg, joints: tuple[str, ...] | None, key: str) -> np.ndarray:
    positions = vector_from(get_field(msg, "position"), what="position")
    if joints is None:
        return positions
    names = list(get_field(msg, "name"))
    if len(names) != len(positions):
        raise RosMessageError(f"has {len(names)} joint names but {len(positions)} positions")
    index = {n: i for i, n in enumerate(names)}
    missing = [j for j in joints if j not in index]
    if missing:
        raise RosMessageError(f"joints {missing} (config key '{key}') are not in the message, which names {names}")
    return positions[[index[j] for j in joints]]


def _multiarray(msg) -> np.ndarray:
    data = vector_from(get_field(msg, "data"), what="data")
    offset = int(getattr(getattr(msg, "layout", None), "data_offset", 0) or 0)
    return data[offset:]


def _hint(config: BagImportConfig) -> str:
    """Where a cloud outside the crop box is fixed (ros_clouds.no_points_in_crop)."""
    return f"check point_cloud.crop_low/crop_high and camera_to_base in {config.source}"


# --- the import ------------------------------------------------------------------------------------------------
@dataclass
class _Series:
    """The messages of one small topic: times (ns), values, and how many times came from header stamps."""

    times: list[int] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)
    header_stamps: int = 0


def _message_time(msg, log_ns: int, config: BagImportConfig, series: _Series | None = None) -> int:
    if config.time_source == "header":
        stamp = stamp_ns(msg)
        if stamp is not None:
            if series is not None:
                series.header_stamps += 1
            return stamp
    return log_ns


def _time_source_text(n_header: int, n: int) -> str:
    if n_header == n:
        return "header.stamp"
    if n_header == 0:
        return "bag log time"
    return f"header.stamp ({n - n_header} of {n} messages without one: bag log time)"


class _Importer:
    def __init__(self, source: _Source, config: BagImportConfig, progress: bool):
        self.source, self.config, self.progress = source, config, progress
        self.bag = getattr(source, "path", "?")

    def fail(self, topic: str, index: int, problem) -> BagImportError:
        return BagImportError(f"{self.bag}: topic '{topic}' message {index}: {problem}")

    def check_topics(self) -> None:
        topics = self.source.topics
        for role, topic in self.config.topics.roles().items():
            if topic not in topics:
                listing = ", ".join(f"{t} ({m}, {c})" for t, (m, c) in sorted(topics.items())) or "none"
                raise BagImportError(f"{self.bag}: topic '{topic}' (topics.{role} in {self.config.source}) is not "
                                     f"in the recording; its topics: {listing}")
            msgtype, count = topics[topic]
            if msgtype not in ROLE_TYPES[role]:
                raise BagImportError(f"{self.bag}: topic '{topic}' (topics.{role}) carries {msgtype}; expected "
                                     f"{' or '.join(ROLE_TYPES[role])}")
            if count == 0:
                raise BagImportError(f"{self.bag}: topic '{topic}' (topics.{role}) has no messages")

    def _bar(self, total: int, desc: str):
        return tqdm(total=total, desc=desc, unit="msg", disable=not self.progress, delay=2.0)

    # pass 1: state, action and camera_info, all small
    def read_small_topics(self) -> None:
        cfg, topics = self.config, self.config.topics
        self.state, self.action = _Series(), _Series()
        self.intrinsics: dict | None = None
        wanted = [topics.state, topics.action] + ([topics.camera_info] if topics.camera_info else [])
        counters = {t: 0 for t in wanted}
        action_is_joints = self.source.topics[topics.action][0] == "sensor_msgs/JointState"
        bar = self._bar(sum(self.source.topics[t][1] for t in wanted), "import-bag: state, action")
        try:
            for topic, log_ns, msg in self.source.messages(wanted):
                index = counters[topic]
                counters[topic] += 1
                bar.update(1)
                try:
                    if topic == topics.camera_info:
                        intrinsics = intrinsics_from_camera_info(msg)
                        if self.intrinsics is None:
                            self.intrinsics = intrinsics
                        elif intrinsics["K"] != self.intrinsics["K"] or (
                                intrinsics["width"], intrinsics["height"]) != (
                                self.intrinsics["width"], self.intrinsics["height"]):
                            raise RosMessageError(
                                f"the camera intrinsics changed (K {intrinsics['K']}, {intrinsics['width']}x"
                                f"{intrinsics['height']}; the first message had K {self.intrinsics['K']}, "
                                f"{self.intrinsics['width']}x{self.intrinsics['height']}): import each calibration "
                                f"separately")
                        continue
                    if topic == topics.state:
                        series, value = self.state, _joint_positions(msg, cfg.state_joints, "state_joints")
                    elif action_is_joints:
                        series, value = self.action, _joint_positions(msg, cfg.action_joints, "action_joints")
                    else:
                        series, value = self.action, _multiarray(msg)
                    if series.values and value.shape != series.values[0].shape:
                        key = "state_joints" if series is self.state else "action_joints"
                        hint = f" (select joints with '{key}')" if action_is_joints or series is self.state else ""
                        raise RosMessageError(f"has {value.size} values, the first message had "
                                              f"{series.values[0].size}{hint}")
                    if value.size == 0:
                        raise RosMessageError("has no values")
                    series.times.append(_message_time(msg, log_ns, cfg, series))
                    series.values.append(value)
                except (RosMessageError, AttributeError, TypeError) as e:
                    raise self.fail(topic, index, e) from None
        finally:
            bar.close()
        self.counts = dict(counters)

    # pass 2: the camera topic, processed only where an action frame will use it
    def read_clouds(self) -> None:
        cfg, topic = self.config, self.config.topics.cloud_topic
        stale_ns = int(round(cfg.max_staleness_s * 1e9))
        tol_ns = int(round(cfg.stamp_tolerance_s * 1e9))
        action_times = np.sort(np.asarray(self.action.times, dtype=np.int64))

        def needed(lo: int, hi_exclusive: int | None) -> bool:
            """Whether a cloud stamped `lo`, the latest until `hi_exclusive`, is the fresh observation of some action:
            an action time a with lo - tolerance <= a <= lo + staleness and a + tolerance < hi_exclusive."""
            hi = lo + stale_ns if hi_exclusive is None else min(hi_exclusive - tol_ns - 1, lo + stale_ns)
            i = int(np.searchsorted(action_times, lo - tol_ns, side="left"))
            return i < len(action_times) and action_times[i] <= hi

        camera = None
        if cfg.uses_depth:
            if self.intrinsics is None:
                raise BagImportError(f"{self.bag}: topic '{cfg.topics.camera_info}' has no CameraInfo message")
            i = self.intrinsics
            camera = camera_model(i, cfg.camera_to_base_array(), name=i["frame_id"] or topic)

        self.cloud_times: list[int] = []
        self.clouds: dict[int, np.ndarray] = {}
        self.cloud_header_stamps = 0
        candidate: tuple[int, int, Any] | None = None  # (index, time, message) of the latest-stamped cloud so far

        def process(index: int, msg) -> None:
            try:
                if cfg.uses_depth:
                    self.clouds[index] = cloud_from_depth(msg, camera, cfg.point_cloud, _hint(cfg))
                else:
                    self.clouds[index] = cloud_from_pointcloud2(msg, cfg.point_cloud, cfg.camera_to_base_array(),
                                                                _hint(cfg))
            except (RosMessageError, AttributeError, TypeError) as e:
                raise self.fail(topic, index, e) from None

        bar = self._bar(self.source.topics[topic][1], f"import-bag: {topic}")
        try:
            index = -1
            for _, log_ns, msg in self.source.messages([topic]):
                index += 1
                bar.update(1)
                try:
                    t = _message_time(msg, log_ns, cfg)
                except (AttributeError, TypeError) as e:
                    raise self.fail(topic, index, e) from None
                self.cloud_header_stamps += int(cfg.time_source == "header" and stamp_ns(msg) is not None)
                self.cloud_times.append(t)
                if candidate is None or t >= candidate[1]:
                    if candidate is not None and needed(candidate[1], t):
                        process(candidate[0], candidate[2])
                    candidate = (index, t, msg)
                elif needed(t, candidate[1]):  # out of order: latest for at most [t, candidate's time)
                    process(index, msg)
            if candidate is not None and needed(candidate[1], None):
                process(candidate[0], candidate[2])
        finally:
            bar.close()
        self.counts[topic] = len(self.cloud_times)

    def frames(self) -> tuple[list[dict[str, np.ndarray]], dict[str, int]]:
        """Episodes of aligned frames, and the number of action messages dropped per reason."""
        cfg = self.config
        stale_ns = int(round(cfg.max_staleness_s * 1e9))
        tol_ns = int(round(cfg.stamp_tolerance_s * 1e9))
        a_times = np.asarray(self.action.times, dtype=np.int64)
        a_order = np.argsort(a_times, kind="stable")
        a_times = a_times[a_order]
        actions = np.stack(self.action.values)[a_order]

        def latest(times: list[int]):
            t = np.asarray(times, dtype=np.int64)
            order = np.argsort(t, kind="stable")
            t_sorted = t[order]
            j = np.searchsorted(t_sorted, a_times + tol_ns, side="right") - 1  # stamped at or before t (+ tolerance)
            found = j >= 0
            idx = np.where(found, order[np.maximum(j, 0)], -1)
            obs_t = np.where(found, t_sorted[np.maximum(j, 0)], 0)
            return idx, obs_t, found, found & (a_times - obs_t <= stale_ns)

        c_idx, c_t, c_found, c_fresh = latest(self.cloud_times)
        s_idx, s_t, s_found, s_fresh = latest(self.state.times)
        states = np.stack(self.state.values)
        keep = c_fresh & s_fresh
        dropped = {
            "with_no_earlier_point_cloud": int((~c_found).sum()),
            "with_a_stale_point_cloud": int((c_found & ~c_fresh).sum()),
            "with_no_earlier_state": int((c_fresh & ~s_found).sum()),
            "with_a_stale_state": int((c_fresh & s_found & ~s_fresh).sum()),
        }
        # Episodes: split where consecutive action messages are further apart than episode_gap_s.
        if cfg.episode_gap_s is not None and len(a_times) > 1:
            cuts = np.flatnonzero(np.diff(a_times) > int(round(cfg.episode_gap_s * 1e9))) + 1
        else:
            cuts = np.zeros(0, dtype=np.int64)
        episodes = []
        for seg in np.split(np.arange(len(a_times)), cuts):
            seg = seg[keep[seg]]
            if not len(seg):
                continue
            missing = [int(c_idx[k]) for k in seg if int(c_idx[k]) not in self.clouds]
            if missing:  # cannot happen: read_clouds processes every cloud a kept frame uses
                raise RuntimeError(f"{self.bag}: internal error: clouds {missing[:5]} were not processed")
            episodes.append({
                "point_cloud": np.stack([self.clouds[int(c_idx[k])] for k in seg]).astype(np.float32),
                "state": states[s_idx[seg]].astype(np.float32),
                "action": actions[seg].astype(np.float32),
                "timestamp": a_times[seg].astype(np.float64) * 1e-9,
                "point_cloud_timestamp": c_t[seg].astype(np.float64) * 1e-9,
                "state_timestamp": s_t[seg].astype(np.float64) * 1e-9,
            })
        return episodes, dropped


def _calibration(config: BagImportConfig, intrinsics: dict | None) -> dict:
    return {
        "camera_to_base": [list(r) for r in config.camera_to_base],
        "camera_frame": "optical (OpenCV: x right, y down, z forward)",
        "base_frame": "robot base: the frame of every point cloud, state-independent",
        "intrinsics": intrinsics,
        "intrinsics_source": config.topics.camera_info,
        "note": ("depth images are back-projected with K only: distortion D is recorded, not corrected "
                 "(use rectified depth)") if intrinsics else "point clouds come from a PointCloud2 topic",
    }


def _camera_description(config: BagImportConfig, intrinsics: dict | None) -> dict:
    """The same shape as CameraModel.to_dict() (what `mfp collect` writes); world = the robot base."""
    if intrinsics is not None:
        return camera_model(intrinsics, config.camera_to_base_array(),
                            name=intrinsics["frame_id"] or config.topics.depth).to_dict()
    return {"name": config.topics.point_cloud, "width": None, "height": None, "K": None,
            "cam_to_world": [list(r) for r in config.camera_to_base]}


def _open_store(out: Path, config: BagImportConfig, attrs: dict, bag_id: dict) -> DemoStore:
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        return DemoStore.create(out, attrs=attrs)
    store = DemoStore.open(out, mode="a")
    have = store.attrs
    for key in ("task", "point_cloud", "calibration"):
        if have.get(key) != attrs[key]:
            raise DemoStoreError(f"{out}: holds {key} {have.get(key)!r}, this import has {attrs[key]!r}: "
                                 f"choose another --out (one dataset = one task, crop box and calibration)")
    for previous in have.get("sources", []):
        if (previous.get("name"), previous.get("size_bytes")) == (bag_id["name"], bag_id["size_bytes"]):
            state = "imported" if previous.get("complete") else "partly imported (interrupted)"
            raise DemoStoreError(f"{out}: {bag_id['name']} ({bag_id['size_bytes']} bytes) was already {state} "
                                 f"into this dataset as episodes {previous.get('episodes')}")
    return store


def import_bag(bag, out, config, progress: bool = True) -> ImportReport:
    """Import the demonstrations of one ROS 1 .bag or .mcap file into the zarr dataset `out` (created or
    appended to). `config`: a BagImportConfig, a dict in the YAML's shape, or the path of the YAML file."""
    if isinstance(config, dict):
        config = BagImportConfig.from_dict(config)
    elif not isinstance(config, BagImportConfig):
        config = BagImportConfig.from_yaml(config)
    bag, out = Path(bag), Path(out)
    source = open_source(bag)
    try:
        importer = _Importer(source, config, progress)
        importer.check_topics()
        importer.read_small_topics()
        importer.read_clouds()
        episodes, dropped = importer.frames()
    finally:
        source.close()
    report = ImportReport(path=out, bag=bag, format=source.format, task=config.task, dropped=dropped,
                          message_counts=importer.counts, action_messages=len(importer.action.times))
    if not episodes:
        raise BagImportError(f"{bag}: no action message has a point cloud and a state at most "
                             f"max_staleness_s={config.max_staleness_s} s older ({report.summary()}); nothing written")
    stat = bag.stat()
    bag_id = {"name": bag.name, "size_bytes": int(stat.st_size)}
    store = _open_store(out, config, _dataset_attrs(config, importer, source, episodes), bag_id)
    entry = _source_entry(bag, bag_id, config, importer, source, episodes, dropped)
    _add_episodes(store, entry, episodes, report)
    return report


def _dataset_attrs(config: BagImportConfig, importer: _Importer, source: _Source, episodes: list[dict]) -> dict:
    """The dataset's attributes (what `mfp collect` writes, for a real robot), written when it is created."""
    intrinsics = importer.intrinsics if config.uses_depth else None
    camera = _camera_description(config, intrinsics)
    point_cloud = config.point_cloud.to_dict()
    topics = config.topics
    return {
        "task": config.task,
        "env": {"task": config.task, "camera": camera, "point_cloud": point_cloud, "robot": "real (imported bag)",
                "agent_dim": int(episodes[0]["state"].shape[1]), "action_dim": int(episodes[0]["action"].shape[1])},
        "camera": camera,
        "point_cloud": point_cloud,
        "calibration": _calibration(config, intrinsics),
        "time_alignment": TIME_ALIGNMENT,
        "timestamps": "data/timestamp (action t), data/point_cloud_timestamp, data/state_timestamp: float64 s",
        "state_recorded": f"sensor_msgs/JointState positions on {topics.state}"
                          + (f", joints {list(config.state_joints)}" if config.state_joints else ""),
        "action_recorded": f"as published on {topics.action} ({source.topics[topics.action][0]})"
                           + (f", joints {list(config.action_joints)}" if config.action_joints else ""),
        "sources": [],
        "provenance": provenance(),
        "format": ("DP3-compatible: data/{point_cloud,state,action} + data/{timestamp,point_cloud_timestamp,"
                   "state_timestamp}, meta/episode_ends"),
    }


def _source_entry(bag: Path, bag_id: dict, config: BagImportConfig, importer: _Importer, source: _Source,
                  episodes: list[dict], dropped: dict) -> dict:
    """The dataset's record of this bag (attrs "sources"): what was read, how, and which episodes it added."""
    topics = config.topics
    return {
        "path": str(bag.resolve()), **bag_id, "format": source.format,
        "imported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "topics": topics.roles(),
        "message_types": {t: source.topics[t][0] for t in topics.roles().values()},
        "message_counts": importer.counts,
        "time_sources": {
            topics.cloud_topic: _time_source_text(importer.cloud_header_stamps, len(importer.cloud_times)),
            topics.state: _time_source_text(importer.state.header_stamps, len(importer.state.times)),
            topics.action: _time_source_text(importer.action.header_stamps, len(importer.action.times)),
        },
        "action_messages": len(importer.action.times), "frames": sum(len(e["action"]) for e in episodes),
        "dropped": dropped, "config": config.to_dict(), "config_file": config.source,
        "readers": package_versions(("rosbags", "mcap", "mcap-ros1-support", "mcap-ros2-support")),
        "episodes": [], "complete": False,
    }


def _add_episodes(store: DemoStore, entry: dict, episodes: list[dict], report: ImportReport) -> None:
    """Commit the episodes one by one; the source entry names each as soon as it is committed, and is marked
    complete at the end (an interrupted import leaves an incomplete entry that says how far it got)."""
    sources = list(store.attrs.get("sources", [])) + [entry]
    store.update_attrs(sources=sources)  # before the data: a committed episode always names its source
    first = store.n_episodes
    for episode in episodes:
        store.add_episode(episode)
        entry["episodes"].append(store.n_episodes - 1)
        store.update_attrs(sources=sources)
        report.episodes_added += 1
        report.frames_added += len(episode["action"])
        report.episode_lengths.append(len(episode["action"]))
    entry["complete"] = True
    store.update_attrs(sources=sources)
    report.total_episodes = store.n_episodes
    assert entry["episodes"] == list(range(first, store.n_episodes))
