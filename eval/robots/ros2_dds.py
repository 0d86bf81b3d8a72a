"""ROS 2 over plain DDS (the Cyclone DDS Python binding), without rclpy: what the ROS 2 robot and the ROS 2
simulated-robot node share.

A ROS 2 topic `/x` is the DDS topic `rt/x` (the message types are in mfp.demos.ros2_types); the DDS domain is
ROS 2's ROS_DOMAIN_ID. QoS per stream, as ROS 2 names them:

    SENSOR_QOS   clouds, images, joint states: best effort, keep the last 5, volatile (rclpy's sensor-data
                 profile; a best-effort reader also matches a reliable publisher)
    COMMAND_QOS  actions and hold: reliable, keep the last 10, volatile (ROS 2's default profile)
    ESTOP_QOS    the e-stop: reliable, transient-local, keep the last 1, so that a node that joins late still
                 gets a stop published before it existed. A transient-local reader does not match a volatile
                 writer, so e-stop subscriptions add a reliable volatile reader beside it (`subscribe_estop`).

Received samples are dispatched on one thread per node (a WaitSet, not DDS listener callbacks: callbacks may
then publish). A sample that cannot be deserialized is dropped and reported to the subscription's `on_error`;
an exception in a callback is logged; neither ends the thread.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable

from cyclonedds.builtin import BuiltinDataReader, BuiltinTopicDcpsSubscription
from cyclonedds.core import GuardCondition, InstanceState, Policy, Qos, ReadCondition, SampleState, ViewState, WaitSet
from cyclonedds.domain import DomainParticipant
from cyclonedds.pub import DataWriter
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic
from cyclonedds.util import duration

log = logging.getLogger("mfp.ros2")

_BLOCKING = duration(milliseconds=100)   # how long a reliable write may wait for room in a full queue
SENSOR_QOS = Qos(Policy.Reliability.BestEffort, Policy.Durability.Volatile, Policy.History.KeepLast(5))
COMMAND_QOS = Qos(Policy.Reliability.Reliable(_BLOCKING), Policy.Durability.Volatile, Policy.History.KeepLast(10))
ESTOP_QOS = Qos(Policy.Reliability.Reliable(_BLOCKING), Policy.Durability.TransientLocal, Policy.History.KeepLast(1))
_ESTOP_VOLATILE_QOS = Qos(Policy.Reliability.Reliable(_BLOCKING), Policy.Durability.Volatile,
                          Policy.History.KeepLast(10))
MAX_DOMAIN_ID = 232   # the largest domain id whose RTPS ports fit (ROS 2 documents 0..101 and 215..232 as safe)


def dds_topic(ros_name: str) -> str:
    """'/mfp/action' -> 'rt/mfp/action' (rmw's prefix for ROS topics)."""
    return "rt/" + ros_name.lstrip("/")


def domain_id(configured: int | None = None) -> int:
    """The DDS domain: `configured` (the topics YAML's domain_id), else $ROS_DOMAIN_ID, else 0."""
    value = configured if configured is not None else os.environ.get("ROS_DOMAIN_ID", "0") or "0"
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"ROS 2 domain id must be an integer, got {value!r}") from None
    if not 0 <= number <= MAX_DOMAIN_ID:
        raise ValueError(f"ROS 2 domain id must be in 0..{MAX_DOMAIN_ID}, got {number}")
    return number


def _delete(entity) -> None:
    """Delete a DDS entity now (and its children), not whenever Python collects it."""
    entity.__del__()


class DdsNode:
    """One DDS participant with its topics, writers and readers, and the thread that dispatches samples."""

    def __init__(self, domain: int, name: str):
        self.domain, self.name = domain, name
        self.participant = DomainParticipant(domain)
        self._topics: dict[tuple[str, type], Topic] = {}
        self._readers: list[tuple[DataReader, ReadCondition, Callable, Callable | None]] = []
        self._lock = threading.Lock()
        self._waitset = WaitSet(self.participant)
        self._wake = GuardCondition(self.participant)
        self._waitset.attach(self._wake)
        self._closing = False
        self._thread = threading.Thread(target=self._spin, name=f"dds {name}", daemon=True)
        self._thread.start()

    def _topic(self, ros_name: str, msg_type) -> Topic:
        key = (dds_topic(ros_name), msg_type)
        if key not in self._topics:
            self._topics[key] = Topic(self.participant, key[0], msg_type)
        return self._topics[key]

    def writer(self, ros_name: str, msg_type, qos: Qos) -> DataWriter:
        return DataWriter(self.participant, self._topic(ros_name, msg_type), qos)

    def subscribe(self, ros_name: str, msg_type, callback: Callable, qos: Qos,
                  on_error: Callable[[Exception], None] | None = None) -> DataReader:
        """callback(message) for each sample on `ros_name`, on the node's thread."""
        reader = DataReader(self.participant, self._topic(ros_name, msg_type), qos)
        condition = ReadCondition(reader, SampleState.NotRead | ViewState.Any | InstanceState.Any)
        with self._lock:
            self._readers.append((reader, condition, callback, on_error))
            self._waitset.attach(condition)
        self._wake.set(True)
        return reader

    def subscribe_estop(self, ros_name: str, msg_type, callback: Callable) -> None:
        """The e-stop from transient-local writers (history included) and from volatile ones."""
        self.subscribe(ros_name, msg_type, callback, ESTOP_QOS)
        self.subscribe(ros_name, msg_type, callback, _ESTOP_VOLATILE_QOS)

    def _spin(self) -> None:
        while not self._closing:
            self._waitset.wait(duration(seconds=1))
            self._wake.take()
            with self._lock:
                readers = list(self._readers)
            for reader, _, callback, on_error in readers:
                if self._closing:
                    return
                self._drain(reader, callback, on_error)

    @staticmethod
    def _drain(reader: DataReader, callback: Callable, on_error: Callable | None, most: int = 1000) -> None:
        for _ in range(most):   # bounded: a flood on one topic does not starve the others
            try:
                samples = reader.take(N=1)
            except Exception as e:   # could not be deserialized (a writer with another layout): dropped
                if on_error is not None:
                    on_error(e)
                else:
                    log.warning("ROS 2: dropped an undecodable sample on %s: %s", reader.topic.name, e)
                continue
            if not samples:
                return
            sample = samples[0]
            if not sample.sample_info.valid_data:   # a writer went away (dispose / unregister): no data
                continue
            try:
                callback(sample)
            except Exception:
                log.exception("ROS 2: callback on %s failed", reader.topic.name)

    def wait_delivered(self, writer: DataWriter, timeout_s: float) -> bool:
        """Wait until every reader of `writer`'s topic known in the domain is matched with it and has
        acknowledged what it wrote (a node that was slow to connect still gets the last e-stop)."""
        deadline = time.monotonic() + timeout_s
        known = BuiltinDataReader(self.participant, BuiltinTopicDcpsSubscription)
        try:
            name = writer.topic.name
            while True:
                alive = {s.key for s in known.read(N=1024)
                         if s.sample_info.valid_data and s.sample_info.instance_state == InstanceState.Alive
                         and s.topic_name == name}
                matched = len(writer.get_matched_subscriptions())
                left = deadline - time.monotonic()
                if matched >= len(alive):
                    return writer.wait_for_acks(duration(seconds=max(left, 0.0)))
                if left <= 0:
                    log.warning("ROS 2: %d of the %d readers of %s matched within %g s", matched, len(alive), name,
                                timeout_s)
                    return False
                time.sleep(0.02)
        finally:
            _delete(known)

    def close(self) -> None:
        self._closing = True
        self._wake.set(True)
        self._thread.join(timeout=10)
        _delete(self.participant)
