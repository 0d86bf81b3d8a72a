"""ROS message contents <-> numpy, without importing ROS: works on rospy messages and on the `rosbags` package's
messages alike (both expose the same field names). Every check names the message and what was wrong.

Input is bounded: a cloud with more than `max_points` points is refused before it is decoded (a camera
misconfigured to send a huge cloud must not exhaust memory); the caller crops and samples it afterwards.
"""

from __future__ import annotations

import numpy as np

# sensor_msgs/PointField datatypes
POINTFIELD_DTYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}
MAX_POINTS = 2_000_000


class RosMessageError(ValueError):
    """A ROS message whose contents cannot be used; the message says which and why."""


def xyz_from_pointcloud2(msg, max_points: int = MAX_POINTS, what: str = "PointCloud2") -> np.ndarray:
    """sensor_msgs/PointCloud2 -> (N, 3) float32 of its finite x, y, z."""
    n = int(msg.width) * int(msg.height)
    if n > max_points:
        raise RosMessageError(f"{what}: {n} points is more than the limit of {max_points}")
    fields = {f.name: f for f in msg.fields}
    missing = [k for k in "xyz" if k not in fields]
    if missing:
        raise RosMessageError(f"{what}: no field(s) {missing} (has {sorted(fields)})")
    step = int(msg.point_step)
    data = bytes(msg.data) if not isinstance(msg.data, np.ndarray) else msg.data.tobytes()
    if n == 0:
        return np.zeros((0, 3), np.float32)
    if step <= 0 or len(data) < n * step:
        raise RosMessageError(f"{what}: {len(data)} data bytes for {n} points of {step} bytes")
    order = ">" if msg.is_bigendian else "<"
    names, formats, offsets = [], [], []
    for k in "xyz":
        f = fields[k]
        if f.datatype not in POINTFIELD_DTYPES:
            raise RosMessageError(f"{what}: field {k} has unknown datatype {f.datatype}")
        names.append(k), formats.append(order + POINTFIELD_DTYPES[f.datatype]), offsets.append(int(f.offset))
    if any(o + np.dtype(fm).itemsize > step for o, fm in zip(offsets, formats)):
        raise RosMessageError(f"{what}: field offsets {offsets} reach beyond the point step {step}")
    dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": step})
    rec = np.frombuffer(data[: n * step], dtype=dtype, count=n)
    xyz = np.stack([rec["x"], rec["y"], rec["z"]], axis=1).astype(np.float32)
    return xyz[np.isfinite(xyz).all(axis=1)]


def pointcloud2_fields_xyz(points: np.ndarray) -> tuple[list[tuple[str, int, int, int]], bytes, int]:
    """(N, 3) -> ([(name, offset, datatype, count)], data bytes, point_step) for a float32 x, y, z cloud."""
    points = np.ascontiguousarray(points, dtype="<f4")
    return [("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1)], points.tobytes(), 12


def depth_from_image(msg, what: str = "depth Image") -> np.ndarray:
    """sensor_msgs/Image (16UC1 in millimetres or 32FC1 in metres) -> (H, W) float32 metres; 0 / NaN = no depth."""
    h, w, enc = int(msg.height), int(msg.width), str(msg.encoding)
    dtypes = {"16UC1": ("u2", 1e-3), "mono16": ("u2", 1e-3), "32FC1": ("f4", 1.0)}
    if enc not in dtypes:
        raise RosMessageError(f"{what}: encoding {enc!r} is not a depth encoding (expected 16UC1 or 32FC1)")
    kind, scale = dtypes[enc]
    itemsize = np.dtype(kind).itemsize
    step = int(msg.step) or w * itemsize
    data = bytes(msg.data) if not isinstance(msg.data, np.ndarray) else msg.data.tobytes()
    if h * w > MAX_POINTS or step < w * itemsize or len(data) < h * step:
        raise RosMessageError(f"{what}: {len(data)} bytes do not hold {h}x{w} {enc} pixels with row step {step}")
    order = ">" if msg.is_bigendian else "<"
    rows = np.frombuffer(data[: h * step], dtype=np.uint8).reshape(h, step)[:, : w * itemsize]
    depth = rows.copy().view(order + kind).reshape(h, w).astype(np.float32) * scale
    depth[~np.isfinite(depth)] = 0.0
    return depth


def intrinsics_from_camera_info(msg, what: str = "CameraInfo") -> tuple[int, int, float, float, float, float]:
    """sensor_msgs/CameraInfo -> (width, height, fx, fy, cx, cy)."""
    k = np.asarray(msg.K if hasattr(msg, "K") else msg.k, np.float64).reshape(-1)
    if k.size != 9 or not np.isfinite(k).all() or k[0] <= 0 or k[4] <= 0:
        raise RosMessageError(f"{what}: K must be 9 finite values with fx, fy > 0, got {k.tolist()}")
    return int(msg.width), int(msg.height), float(k[0]), float(k[4]), float(k[2]), float(k[5])


def vector_from(values, size: int | None, what: str) -> np.ndarray:
    """A list of numbers -> (size,) float32, refusing the wrong size or non-finite values."""
    v = np.asarray(values, np.float64).reshape(-1)
    if size is not None and v.size != size:
        raise RosMessageError(f"{what}: expected {size} values, got {v.size}")
    if not np.isfinite(v).all():
        raise RosMessageError(f"{what}: non-finite values")
    return v.astype(np.float32)
