"""The one ROS message decoder (mfp.demos.ros_msgs) on plain Python objects with the messages' field names."""

from types import SimpleNamespace as NS

import numpy as np
import pytest

from mfp.demos.ros_msgs import (RosMessageError, depth_from_image, intrinsics_from_camera_info, pointcloud2_fields_xyz,
                                vector_from, xyz_blocks_from_pointcloud2, xyz_from_pointcloud2)


def _cloud(points: np.ndarray) -> NS:
    """A PointCloud2 as the ROS sim node publishes it."""
    fields, data, step = pointcloud2_fields_xyz(points)
    return NS(height=1, width=len(points), fields=[NS(name=n, offset=o, datatype=d, count=c) for n, o, d, c in fields],
              is_bigendian=False, point_step=step, row_step=step * len(points), data=data, is_dense=True)


def test_pointcloud2_round_trip():
    points = np.random.default_rng(0).uniform(-2, 2, (257, 3)).astype(np.float32)
    fields, data, step = pointcloud2_fields_xyz(points)
    assert [f[0] for f in fields] == ["x", "y", "z"] and step == 12 and len(data) == 257 * 12
    decoded = xyz_from_pointcloud2(_cloud(points))
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, points)
    # in blocks of at most 100 points: the same points, in order
    blocks = list(xyz_blocks_from_pointcloud2(_cloud(points), block_points=100))
    assert [len(b) for b in blocks] == [100, 100, 57]
    np.testing.assert_array_equal(np.concatenate(blocks), points)


def test_pointcloud2_padding_extra_fields_big_endian_and_non_finite_points():
    """2 rows of 3 points: float64 z before x, y; an intensity field; 4 bytes of row padding; one NaN point."""
    xyz = np.arange(18, dtype=np.float64).reshape(2, 3, 3)
    xyz[1, 1, 2] = np.nan
    point = np.dtype({"names": ["z", "x", "y", "i"], "formats": [">f8", ">f4", ">f4", ">f4"],
                      "offsets": [0, 8, 12, 16], "itemsize": 24})
    rows = np.zeros((2, 3 * 24 + 4), np.uint8)
    rec = rows[:, :72].copy().view(point).reshape(2, 3)
    rec["x"], rec["y"], rec["z"], rec["i"] = xyz[..., 0], xyz[..., 1], xyz[..., 2], 7.0
    rows[:, :72] = rec.view(np.uint8).reshape(2, 72)
    msg = NS(height=2, width=3, is_bigendian=True, point_step=24, row_step=76, data=rows.reshape(-1),
             fields=[NS(name="x", offset=8, datatype=7), NS(name="y", offset=12, datatype=7),
                     NS(name="z", offset=0, datatype=8), NS(name="intensity", offset=16, datatype=7)])
    expected = xyz.reshape(-1, 3)[[0, 1, 2, 3, 5]].astype(np.float32)
    np.testing.assert_array_equal(xyz_from_pointcloud2(msg), expected)


def test_a_cloud_above_the_point_limit_is_refused_before_decoding():
    msg = _cloud(np.zeros((11, 3), np.float32))
    msg.data = None  # decoding would fail with a different error: the limit is checked first
    with pytest.raises(RosMessageError, match=r"^PointCloud2 on /pts: 11 points is more than the limit of 10$"):
        xyz_from_pointcloud2(msg, max_points=10, what="PointCloud2 on /pts")
    assert len(xyz_from_pointcloud2(_cloud(np.zeros((10, 3), np.float32)), max_points=10)) == 10


def test_wrong_pointcloud2_data_length_is_refused():
    msg = _cloud(np.ones((5, 3), np.float32))
    msg.data = msg.data[:-1]
    with pytest.raises(RosMessageError, match=r"data holds 59 bytes, expected row_step x height = 60 x 1 = 60"):
        xyz_from_pointcloud2(msg)
    msg.data += b"\0\0"  # too long is refused too
    with pytest.raises(RosMessageError, match=r"data holds 61 bytes"):
        xyz_from_pointcloud2(msg)
    msg = _cloud(np.ones((5, 3), np.float32))
    msg.fields = msg.fields[:2]
    with pytest.raises(RosMessageError, match=r"has no field\(s\) \['z'\]"):
        xyz_from_pointcloud2(msg)


def _depth(values: np.ndarray, encoding: str, pad: int = 0) -> NS:
    rows = np.zeros((values.shape[0], values.nbytes // values.shape[0] + pad), np.uint8)
    rows[:, :values.nbytes // values.shape[0]] = values.view(np.uint8).reshape(values.shape[0], -1)
    return NS(height=values.shape[0], width=values.shape[1], encoding=encoding, is_bigendian=False,
              step=rows.shape[1], data=rows.tobytes())


def test_depth_16uc1_millimetres_become_metres():
    mm = np.array([[0, 1000, 1500], [250, 65535, 7]], "<u2")
    depth = depth_from_image(_depth(mm, "16UC1", pad=2))  # rows padded by 2 bytes
    assert depth.dtype == np.float32 and depth.shape == (2, 3)
    np.testing.assert_allclose(depth, mm.astype(np.float64) / 1000, rtol=1e-6)
    metres = np.array([[0.5, np.nan]], "<f4")
    np.testing.assert_array_equal(depth_from_image(_depth(metres, "32FC1")), metres)


def test_wrong_depth_encoding_and_size_are_refused():
    with pytest.raises(RosMessageError, match=r"^Image on /d: depth encoding 'rgb8' is not supported: expected "
                                              r"16UC1 \(millimetres\) or 32FC1"):
        depth_from_image(_depth(np.zeros((2, 2), "<u2"), "rgb8"), what="Image on /d")
    msg = _depth(np.zeros((2, 2), "<u2"), "16UC1")
    msg.data = msg.data[:-1]
    with pytest.raises(RosMessageError, match=r"data holds 7 bytes, expected step x height = 4 x 2 = 8"):
        depth_from_image(msg)
    with pytest.raises(RosMessageError, match=r"3x2 pixels is more than the limit of 5"):
        depth_from_image(_depth(np.zeros((2, 3), "<u2"), "16UC1"), max_pixels=5)


def _camera_info(K, k_name="K", width=640, height=480) -> NS:
    return NS(**{k_name: K, "D" if k_name == "K" else "d": [0.1, 0, 0, 0, 0]}, width=width, height=height,
              distortion_model="plumb_bob", header=NS(frame_id="cam"))


def test_camera_info_intrinsics_in_both_spellings():
    K = [600.0, 0, 320, 0, 610.0, 240, 0, 0, 1]
    for name in ("K", "k"):  # rospy / ROS 2 and rosbags
        info = intrinsics_from_camera_info(_camera_info(K, name))
        assert info["K"] == [[600, 0, 320], [0, 610, 240], [0, 0, 1]]
        assert (info["width"], info["height"], info["D"][0], info["frame_id"]) == (640, 480, 0.1, "cam")


def test_camera_info_with_non_positive_focal_length_is_refused():
    with pytest.raises(RosMessageError, match=r"^CameraInfo on /i: K has non-positive focal lengths fx=0.0, "
                                              r"fy=610.0"):
        intrinsics_from_camera_info(_camera_info([0.0, 0, 320, 0, 610.0, 240, 0, 0, 1]), what="CameraInfo on /i")
    with pytest.raises(RosMessageError, match=r"K has 8 values, expected 9"):
        intrinsics_from_camera_info(_camera_info([600.0, 0, 320, 0, 610.0, 240, 0, 0]))


def test_vector_of_the_wrong_size_or_non_finite_is_refused():
    np.testing.assert_array_equal(vector_from([1, 2, 3], 3, "q"), [1.0, 2.0, 3.0])
    with pytest.raises(RosMessageError, match=r"^JointState on /js: position has 2 values, expected 3$"):
        vector_from([1.0, 2.0], 3, "JointState on /js: position")
    with pytest.raises(RosMessageError, match=r"q holds non-finite values"):
        vector_from([1.0, float("inf"), 3.0], 3, "q")
    with pytest.raises(RosMessageError, match=r"q holds non-finite values"):  # finite in float64, not in float32
        vector_from([1e300], 1, "q", np.float32)
    assert vector_from([1e300], 1, "q").dtype == np.float64
