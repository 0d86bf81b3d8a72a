"""The policy's point cloud from ROS messages, one implementation for recorded bags (`mfp import-bag`) and the live
ROS adapter (mfp.eval.robots.ros): a PointCloud2, or a depth Image with its CameraInfo, moved into the robot's base
frame (camera_to_base), cropped to the box and farthest-point sampled with the project's point-cloud settings.

A message that cannot be used raises RosMessageError with the reason: a depth image whose size disagrees with
its CameraInfo, or a cloud with no point inside the crop box (the error gives the span of its points in the base
frame and `hint`, where to look: the config file that sets the crop box and camera_to_base).
"""

from __future__ import annotations

import numpy as np

from mfp.envs import CameraModel, crop, depth_to_point_cloud, farthest_point_sample
from mfp.envs.pointcloud import backproject

from .ros_msgs import BLOCK_POINTS, RosMessageError, depth_from_image, xyz_blocks_from_pointcloud2


def camera_model(intrinsics: dict, camera_to_base, name: str) -> CameraModel:
    """The depth camera of a CameraInfo (intrinsics_from_camera_info's dict) placed in the base frame."""
    return CameraModel(K=np.asarray(intrinsics["K"]), cam_to_world=camera_to_base, width=intrinsics["width"],
                       height=intrinsics["height"], name=name)


def no_points_in_crop(pc_config, n_points: int, low, high, hint: str) -> RosMessageError:
    where = (f"its {n_points} finite points span {np.round(low, 3).tolist()} .. {np.round(high, 3).tolist()} "
             f"in the base frame" if n_points else "it has no finite point with positive depth")
    return RosMessageError(f"no point lies inside the crop box low={list(pc_config.crop_low)} "
                           f"high={list(pc_config.crop_high)}: {where} ({hint})")


def cloud_from_pointcloud2(msg, pc_config, camera_to_base=None, hint: str = "", what: str = "",
                           max_points: int | None = None) -> np.ndarray:
    """PointCloud2 -> base frame (camera_to_base, 4x4; None: the cloud is in the base frame already) -> crop ->
    farthest-point sampling: (num_points, 3) float32. Read in blocks, so a large cloud is never copied whole;
    more than `max_points` points are refused before anything is decoded."""
    if camera_to_base is not None:
        T = np.asarray(camera_to_base)
        R, t = T[:3, :3].astype(np.float32), T[:3, 3].astype(np.float32)
    kept, n_finite = [], 0
    low, high = np.full(3, np.inf), np.full(3, -np.inf)
    for xyz in xyz_blocks_from_pointcloud2(msg, BLOCK_POINTS, what=what, max_points=max_points):  # finite points
        base = xyz if camera_to_base is None else xyz @ R.T + t
        n_finite += len(base)
        low, high = np.minimum(low, base.min(axis=0)), np.maximum(high, base.max(axis=0))
        inside = crop(base, pc_config.crop_low, pc_config.crop_high)
        if len(inside):
            kept.append(inside)
    if not kept:
        raise no_points_in_crop(pc_config, n_finite, low, high, hint)
    return farthest_point_sample(np.concatenate(kept), pc_config.num_points, pc_config.max_points_before_fps)


def cloud_from_depth(msg, camera: CameraModel, pc_config, hint: str = "", what: str = "",
                     max_pixels: int | None = None) -> np.ndarray:
    """A depth Image seen by `camera` (camera_model(): its CameraInfo, placed in the base frame) -> back-projection
    -> crop -> farthest-point sampling: (num_points, 3) float32. The image's size must be the CameraInfo's; more
    than `max_pixels` pixels are refused before anything is decoded."""
    depth = depth_from_image(msg, what=what, max_pixels=max_pixels)
    if depth.shape != (camera.height, camera.width):
        raise RosMessageError(f"image is {depth.shape[1]}x{depth.shape[0]} but the camera_info is "
                              f"{camera.width}x{camera.height}")
    try:
        return depth_to_point_cloud(depth, camera, pc_config)
    except ValueError:
        points = backproject(depth, camera.K, camera.cam_to_world)
        low = points.min(axis=0) if len(points) else None
        high = points.max(axis=0) if len(points) else None
        raise no_points_in_crop(pc_config, len(points), low, high, hint) from None
