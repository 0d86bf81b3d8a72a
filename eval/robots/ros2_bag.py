"""What a ROS 2 robot saw and sent, recorded as an MCAP file in the ROS 2 bag format: profile `ros2`, one
`ros2msg` schema per message type (mfp.demos.ros2_types.msg_definition) and the messages as CDR, the bytes a
ROS 2 node puts on the wire. `mfp import-bag` reads it back into a dataset, as it reads `ros2 bag record`'s MCAP.

Log time = when the message was received here (or sent from here); publish time = its header stamp when it has
one. The file is written as `<name>.part` and renamed when closed: a process killed mid-episode leaves a .part
file that no importer mistakes for a complete recording.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from mfp.demos.ros2_types import msg_definition, ros_type_name
from mfp.demos.ros_msgs import stamp_ns


def bag_path(record, seed: int) -> Path:
    """Where `mfp control --record runs/x.zarr` puts an episode's ROS 2 recording: beside the store,
    runs/x.seed<seed>.<UTC time>.mcap."""
    record = Path(record)
    when = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return record.parent / f"{record.stem}.seed{seed}.{when}.mcap"


class McapRecorder:
    def __init__(self, path):
        from mcap.writer import Writer

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._part = self.path.with_name(self.path.name + ".part")
        self._file = open(self._part, "wb")
        self._writer = Writer(self._file)
        self._writer.start(profile="ros2", library="mfp")
        self._schemas: dict[type, int] = {}
        self._channels: dict[tuple[str, type], int] = {}
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self._closed = False

    def _channel(self, topic: str, msg_type) -> int:
        if msg_type not in self._schemas:
            self._schemas[msg_type] = self._writer.register_schema(
                ros_type_name(msg_type), "ros2msg", msg_definition(msg_type).encode())
        key = (topic, msg_type)
        if key not in self._channels:
            self._channels[key] = self._writer.register_channel(topic, "cdr", self._schemas[msg_type])
        return self._channels[key]

    def write(self, topic: str, msg) -> None:
        """Record `msg` (a mfp.demos.ros2_types message) on `topic` now."""
        data = msg.serialize()
        log_time = time.time_ns()
        with self._lock:
            if self._closed:
                return
            self._writer.add_message(self._channel(topic, type(msg)), log_time=log_time, data=data,
                                     publish_time=stamp_ns(msg) or log_time)
            self.counts[topic] = self.counts.get(topic, 0) + 1

    def close(self) -> Path:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._writer.finish()
                self._file.close()
                os.replace(self._part, self.path)
        return self.path
