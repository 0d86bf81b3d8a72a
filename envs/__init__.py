"""Simulators and robots -> observations in one format: {point_cloud (N, 3), agent_pos (d,)}."""

from .base import EPISODE_STEPS, PointCloudEnv
from .pointcloud import CameraModel, PointCloudConfig, backproject, crop, depth_to_point_cloud, farthest_point_sample
from .registry import ADROIT_TASKS, check_task_name, default_pc_config, make_env, task_names

__all__ = [
    "ADROIT_TASKS", "EPISODE_STEPS", "CameraModel", "PointCloudConfig", "PointCloudEnv", "backproject",
    "check_task_name", "crop", "default_pc_config", "depth_to_point_cloud", "farthest_point_sample", "make_env", "task_names",
]
