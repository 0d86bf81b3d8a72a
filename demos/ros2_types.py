"""ROS 2 messages as DDS types (Cyclone DDS's Python binding), wire-compatible with ROS 2 nodes.

A ROS 2 node on the Cyclone DDS middleware (rmw_cyclonedds_cpp) carries `pkg/msg/Type` as the DDS type
`pkg::msg::dds_::Type_`, serialized as plain (XCDR1) CDR in the field order of the .msg definition; each class
here is that layout (uint8[] as sequence<uint8>, read and written as bytes; fixed arrays as `array`). The
field names are ROS 2's, so the decoding in ros_msgs.py (shared with `mfp import-bag`, which reads the same
messages from MCAP files and ROS 2 bags) and the point-cloud code in ros_clouds.py read these objects as they
are: there is nothing to convert.

`msg_definition(cls)` writes the .msg text of a type with its dependencies (the `ros2msg` schema of an MCAP
file), so what a live run saw can be recorded in the ROS 2 bag format and read back by `mfp import-bag`.
"""

import dataclasses
import typing
from dataclasses import dataclass, field

from cyclonedds.idl import IdlStruct
from cyclonedds.idl import types
from cyclonedds.idl._machinery import BytesMachine, PlainCdrV2SequenceOfPrimitiveMachine
from cyclonedds.idl.types import array, float64, int32, sequence, uint8, uint32



# --- builtin_interfaces, std_msgs ----------------------------------------------------------------------------
@dataclass
class Time(IdlStruct, typename="builtin_interfaces::msg::dds_::Time_"):
    sec: int32 = 0
    nanosec: uint32 = 0


@dataclass
class Header(IdlStruct, typename="std_msgs::msg::dds_::Header_"):
    stamp: Time = field(default_factory=Time)
    frame_id: str = ""


@dataclass
class Bool(IdlStruct, typename="std_msgs::msg::dds_::Bool_"):
    data: bool = False


@dataclass
class Empty(IdlStruct, typename="std_msgs::msg::dds_::Empty_"):
    structure_needs_at_least_one_member: uint8 = 0   # IDL has no empty struct; ROS 2 adds this member


@dataclass
class MultiArrayDimension(IdlStruct, typename="std_msgs::msg::dds_::MultiArrayDimension_"):
    label: str = ""
    size: uint32 = 0
    stride: uint32 = 0


@dataclass
class MultiArrayLayout(IdlStruct, typename="std_msgs::msg::dds_::MultiArrayLayout_"):
    dim: sequence[MultiArrayDimension] = field(default_factory=list)
    data_offset: uint32 = 0


@dataclass
class Float64MultiArray(IdlStruct, typename="std_msgs::msg::dds_::Float64MultiArray_"):
    layout: MultiArrayLayout = field(default_factory=MultiArrayLayout)
    data: sequence[float64] = field(default_factory=list)


# --- sensor_msgs ---------------------------------------------------------------------------------------------
@dataclass
class PointField(IdlStruct, typename="sensor_msgs::msg::dds_::PointField_"):
    name: str = ""
    offset: uint32 = 0
    datatype: uint8 = 0
    count: uint32 = 0


@dataclass
class PointCloud2(IdlStruct, typename="sensor_msgs::msg::dds_::PointCloud2_"):
    header: Header = field(default_factory=Header)
    height: uint32 = 0
    width: uint32 = 0
    fields: sequence[PointField] = field(default_factory=list)
    is_bigendian: bool = False
    point_step: uint32 = 0
    row_step: uint32 = 0
    data: sequence[uint8] = b""
    is_dense: bool = False


@dataclass
class JointState(IdlStruct, typename="sensor_msgs::msg::dds_::JointState_"):
    header: Header = field(default_factory=Header)
    name: sequence[str] = field(default_factory=list)
    position: sequence[float64] = field(default_factory=list)
    velocity: sequence[float64] = field(default_factory=list)
    effort: sequence[float64] = field(default_factory=list)


@dataclass
class Image(IdlStruct, typename="sensor_msgs::msg::dds_::Image_"):
    header: Header = field(default_factory=Header)
    height: uint32 = 0
    width: uint32 = 0
    encoding: str = ""
    is_bigendian: uint8 = 0
    step: uint32 = 0
    data: sequence[uint8] = b""


@dataclass
class RegionOfInterest(IdlStruct, typename="sensor_msgs::msg::dds_::RegionOfInterest_"):
    x_offset: uint32 = 0
    y_offset: uint32 = 0
    height: uint32 = 0
    width: uint32 = 0
    do_rectify: bool = False


@dataclass
class CameraInfo(IdlStruct, typename="sensor_msgs::msg::dds_::CameraInfo_"):
    header: Header = field(default_factory=Header)
    height: uint32 = 0
    width: uint32 = 0
    distortion_model: str = ""
    d: sequence[float64] = field(default_factory=list)
    k: array[float64, 9] = field(default_factory=lambda: [0.0] * 9)
    r: array[float64, 9] = field(default_factory=lambda: [0.0] * 9)
    p: array[float64, 12] = field(default_factory=lambda: [0.0] * 12)
    binning_x: uint32 = 0
    binning_y: uint32 = 0
    roi: RegionOfInterest = field(default_factory=RegionOfInterest)


def _uint8_sequences_as_bytes(cls, *names: str) -> None:
    """Decode and encode these sequence<uint8> members as bytes, not lists of ints (a 5 MB cloud: a copy instead
    of 0.1 s of Python). The bytes on the wire are the same (uint32 length, then the octets); the XTypes type
    information still says sequence<uint8>. Should the binding's internals change, the list path stays."""
    cls.__idl__.populate()
    for machine in (cls.__idl__.v1_machine, cls.__idl__.v2_machine):
        members = getattr(machine, "members_machines", {})
        for name in names:
            if isinstance(members.get(name), PlainCdrV2SequenceOfPrimitiveMachine):
                members[name] = BytesMachine()


_uint8_sequences_as_bytes(PointCloud2, "data")
_uint8_sequences_as_bytes(Image, "data")


# --- names, stamps, .msg definitions -------------------------------------------------------------------------
def ros_type_name(cls) -> str:
    """'sensor_msgs::msg::dds_::PointCloud2_' -> 'sensor_msgs/msg/PointCloud2'."""
    pkg, msg, _, name = cls.__idl_typename__.replace(".", "::").split("::")
    return f"{pkg}/{msg}/{name.rstrip('_')}"


def to_stamp(t: float) -> Time:
    """Seconds since the epoch -> builtin_interfaces/Time (nanoseconds rounded)."""
    ns = round(t * 1e9)
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


# IDL member annotation -> .msg primitive
_PRIMITIVES = {"int8": "int8", "uint8": "uint8", "int16": "int16", "uint16": "uint16", "int32": "int32",
               "uint32": "uint32", "int64": "int64", "uint64": "uint64", "float32": "float32",
               "float64": "float64"}


def _msg_field_type(hint, deps: list) -> str:
    if hint is str:
        return "string"
    if hint is bool:
        return "bool"
    if isinstance(hint, type) and issubclass(hint, IdlStruct):
        deps.append(hint)
        return ros_type_name(hint).replace("/msg/", "/")
    meta = getattr(hint, "__metadata__", ())
    for m in meta:
        if isinstance(m, str) and m in _PRIMITIVES:
            return _PRIMITIVES[m]
        if isinstance(m, types.sequence):
            return _msg_field_type(m.subtype, deps) + "[]"
        if isinstance(m, types.array):
            return _msg_field_type(m.subtype, deps) + f"[{m.length}]"
    raise TypeError(f"no .msg spelling for {hint!r}")


def _msg_fields(cls, deps: list) -> str:
    hints = typing.get_type_hints(cls, include_extras=True)
    return "\n".join(f"{_msg_field_type(hints[f.name], deps)} {f.name}" for f in dataclasses.fields(cls)) + "\n"


def msg_definition(cls) -> str:
    """The .msg text of `cls` followed by each type it uses (`MSG: pkg/Type` sections): the `ros2msg` schema
    of ROS 2 MCAP files."""
    deps: list = []
    text, seen = _msg_fields(cls, deps), set()
    while deps:
        dep = deps.pop(0)
        if dep in seen:
            continue
        seen.add(dep)
        text += "=" * 80 + f"\nMSG: {ros_type_name(dep).replace('/msg/', '/')}\n" + _msg_fields(dep, deps)
    return text
