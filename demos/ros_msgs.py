"""ROS message contents <-> numpy, without importing ROS: one implementation for the bag importer (rosbags and
mcap-decoded messages, ROS 1 and ROS 2) and the live ROS adapter in mfp.eval (rospy messages). Field names are
looked up in both spellings where they differ (`K` / `k`, `secs` / `sec`, ...).

Every refusal is a RosMessageError whose text names the problem, prefixed with `what` (e.g. "PointCloud2 on
/points") when the caller gives one; the bag importer gives none and adds the file, topic and message index itself.

Memory stays bounded: a PointCloud2 is read through a strided view of its bytes (row padding and extra fields are
skipped, nothing is copied whole) and decoded in blocks of at most about `BLOCK_POINTS` points; the caller that
wants the whole cloud at once (`xyz_from_pointcloud2`) gets a `max_points` bound checked before any decoding.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

POINTFIELD_DTYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}  # PointField datatypes
DEPTH_ENCODINGS = {"16uc1": ("u2", 1e-3), "mono16": ("u2", 1e-3), "32fc1": ("f4", 1.0)}  # (dtype, to metres)
MAX_POINTS = 2_000_000  # default bound on the points of a cloud decoded whole, and on a depth image's pixels
BLOCK_POINTS = 1 << 18  # PointCloud2 points decoded at a time


class RosMessageError(ValueError):
    """A ROS message whose contents cannot be used; the text says which and why."""


def _error(what: str, problem: str) -> RosMessageError:
    return RosMessageError(f"{what}: {problem}" if what else problem)


def get_field(msg, *names: str, what: str = ""):
    """The first of `names` the message has (rospy and ROS 2 spellings differ, e.g. "K" / "k")."""
    for name in names:
        if hasattr(msg, name):
            return getattr(msg, name)
    raise _error(what, f"message has none of the fields {list(names)}")


def stamp_ns(msg) -> int | None:
    """The header stamp in ns; None when the message has no header or an unset (zero) stamp."""
    header = getattr(msg, "header", None)
    if header is None:
        return None
    stamp = header.stamp
    ns = int(get_field(stamp, "sec", "secs")) * 1_000_000_000 + int(get_field(stamp, "nanosec", "nsecs"))
    return ns or None


def stamp_seconds(msg) -> float:
    """The header stamp in seconds since the epoch (0.0 when unset: such a sample is as stale as can be)."""
    return (stamp_ns(msg) or 0) / 1e9


def as_bytes(data) -> memoryview:
    """A uint8[] field (bytes from rospy / mcap, a numpy array from rosbags, or a list) as bytes, not copied."""
    if isinstance(data, np.ndarray):
        return memoryview(np.ascontiguousarray(data).view(np.uint8).reshape(-1))
    if isinstance(data, (bytes, bytearray, memoryview)):
        return memoryview(data).cast("B")
    return memoryview(bytes(data))


def vector_from(values, size: int | None = None, what: str = "values", dtype=np.float64) -> np.ndarray:
    """A list of numbers -> (size,) array of `dtype`, refusing non-numbers, the wrong size and non-finite values
    (checked after the cast: 1e300 is not finite as float32)."""
    try:
        v = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise RosMessageError(f"{what} is not a list of numbers ({e})") from None
    if size is not None and v.size != size:
        raise RosMessageError(f"{what} has {v.size} values, expected {size}")
    with np.errstate(over="ignore"):  # an overflow becomes inf, refused below
        v = v.astype(dtype, copy=False)
    if not np.isfinite(v).all():
        raise RosMessageError(f"{what} holds non-finite values {v.tolist()[:12]}")
    return v


# --- sensor_msgs/CameraInfo, Image ---------------------------------------------------------------------------
def intrinsics_from_camera_info(msg, what: str = "") -> dict:
    """CameraInfo -> {"K": 3x3 nested list, "width", "height", "D", "distortion_model", "frame_id"}."""
    K = vector_from(get_field(msg, "k", "K", what=what), what=f"{what}: K" if what else "K")
    if K.shape != (9,):
        raise _error(what, f"K has {K.size} values, expected 9 (row-major 3x3)")
    K = K.reshape(3, 3)
    if not (K[0, 0] > 0 and K[1, 1] > 0):
        raise _error(what, f"K has non-positive focal lengths fx={K[0, 0]}, fy={K[1, 1]} (an uncalibrated camera?)")
    width, height = int(get_field(msg, "width", what=what)), int(get_field(msg, "height", what=what))
    if width < 1 or height < 1:
        raise _error(what, f"image size {width}x{height} is empty")
    return {"K": K.tolist(), "width": width, "height": height,
            "D": np.asarray(get_field(msg, "d", "D", what=what), dtype=float).reshape(-1).tolist(),
            "distortion_model": str(get_field(msg, "distortion_model", what=what)),
            "frame_id": str(get_field(get_field(msg, "header", what=what), "frame_id", what=what))}


def depth_from_image(msg, what: str = "", max_pixels: int | None = MAX_POINTS) -> np.ndarray:
    """A depth Image (16UC1 / mono16 in millimetres, 32FC1 in metres) -> (H, W) float32 metres; 0 or a non-finite
    value = no reading. Row padding (step > width x pixel size) is skipped."""
    encoding = str(get_field(msg, "encoding", what=what))
    if encoding.lower() not in DEPTH_ENCODINGS:
        raise _error(what, f"depth encoding '{encoding}' is not supported: expected 16UC1 (millimetres) or "
                           f"32FC1 (metres)")
    code, scale = DEPTH_ENCODINGS[encoding.lower()]
    dtype = np.dtype((">" if get_field(msg, "is_bigendian", what=what) else "<") + code)
    h, w = int(get_field(msg, "height", what=what)), int(get_field(msg, "width", what=what))
    step = int(get_field(msg, "step", what=what))
    if max_pixels is not None and h * w > max_pixels:
        raise _error(what, f"{w}x{h} pixels is more than the limit of {max_pixels}")
    if step < w * dtype.itemsize:
        raise _error(what, f"step {step} is smaller than width x {dtype.itemsize} bytes = {w * dtype.itemsize}")
    data = as_bytes(get_field(msg, "data", what=what))
    if len(data) != step * h:
        raise _error(what, f"data holds {len(data)} bytes, expected step x height = {step} x {h} = {step * h}")
    image = np.ndarray((h, w), dtype=dtype, buffer=data, strides=(step, dtype.itemsize))
    depth = image.astype(np.float32)
    if scale != 1.0:
        depth *= np.float32(scale)
    return depth


# --- sensor_msgs/PointCloud2 ---------------------------------------------------------------------------------
def _pointcloud2_view(msg, what: str, max_points: int | None) -> np.ndarray:
    """A (height, width) structured view of the cloud's x, y, z in its data bytes, after checking the layout."""
    h, w = int(get_field(msg, "height", what=what)), int(get_field(msg, "width", what=what))
    if max_points is not None and h * w > max_points:
        raise _error(what, f"{h * w} points is more than the limit of {max_points}")
    fields = {str(f.name): f for f in get_field(msg, "fields", what=what)}
    missing = [n for n in "xyz" if n not in fields]
    if missing:
        raise _error(what, f"has no field(s) {missing} (fields: {list(fields)}); expected x, y, z")
    point_step, row_step = int(get_field(msg, "point_step", what=what)), int(get_field(msg, "row_step", what=what))
    order = ">" if get_field(msg, "is_bigendian", what=what) else "<"
    formats, offsets = [], []
    for n in "xyz":
        f = fields[n]
        code = POINTFIELD_DTYPES.get(int(f.datatype))
        if code is None:
            raise _error(what, f"field '{n}' has datatype {int(f.datatype)}; expected a sensor_msgs/PointField "
                               f"datatype 1..8 (7 = FLOAT32)")
        if int(f.offset) < 0 or int(f.offset) + np.dtype(code).itemsize > point_step:
            raise _error(what, f"field '{n}' at offset {int(f.offset)} does not fit in point_step {point_step}")
        formats.append(order + code)
        offsets.append(int(f.offset))
    if row_step < w * point_step:
        raise _error(what, f"row_step {row_step} is smaller than width x point_step = {w} x {point_step}")
    data = as_bytes(get_field(msg, "data", what=what))
    if len(data) != row_step * h:
        raise _error(what, f"data holds {len(data)} bytes, expected row_step x height = {row_step} x {h} = "
                           f"{row_step * h}")
    dtype = np.dtype({"names": list("xyz"), "formats": formats, "offsets": offsets, "itemsize": point_step})
    return np.ndarray((h, w), dtype=dtype, buffer=data, strides=(row_step, point_step))


def xyz_blocks_from_pointcloud2(msg, block_points: int = BLOCK_POINTS, what: str = "",
                                max_points: int | None = None) -> Iterator[np.ndarray]:
    """A PointCloud2's finite x, y, z as float32 (M, 3) blocks of at most about `block_points` points (blocks of
    whole rows, or of columns of a row wider than a block); the cloud is never decoded or copied whole.
    The message is checked completely before the first block."""
    cloud = _pointcloud2_view(msg, what, max_points)
    h, w = cloud.shape
    rows = max(1, block_points // max(w, 1))
    for r0 in range(0, h, rows):
        for c0 in range(0, w, block_points):
            block = cloud[r0:r0 + rows, c0:c0 + block_points]
            xyz = np.empty(block.shape + (3,), dtype=np.float32)
            for i, n in enumerate("xyz"):
                xyz[..., i] = block[n]
            xyz = xyz.reshape(-1, 3)
            xyz = xyz[np.isfinite(xyz).all(axis=1)]
            if len(xyz):
                yield xyz


def xyz_from_pointcloud2(msg, max_points: int | None = MAX_POINTS, what: str = "PointCloud2") -> np.ndarray:
    """A PointCloud2 -> (N, 3) float32 of its finite x, y, z; more than `max_points` points are refused before
    anything is decoded (a camera misconfigured to send a huge cloud must not exhaust memory)."""
    blocks = list(xyz_blocks_from_pointcloud2(msg, what=what, max_points=max_points))
    return np.concatenate(blocks) if blocks else np.zeros((0, 3), np.float32)


def pointcloud2_fields_xyz(points: np.ndarray) -> tuple[list[tuple[str, int, int, int]], bytes, int]:
    """(N, 3) -> ([(name, offset, datatype, count)], data bytes, point_step) of a little-endian float32 x, y, z
    cloud, to fill a PointCloud2 (height 1, width N, row_step = N x point_step)."""
    points = np.ascontiguousarray(points, dtype="<f4").reshape(-1, 3)
    return [("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1)], points.tobytes(), 12
