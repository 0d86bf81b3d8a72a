"""`mfp import-bag`: the parser and a thin handler over mfp.demos.bag_import.import_bag."""

from __future__ import annotations

import argparse

CONFIG_EXAMPLE = """\
topics YAML (--config), every key:
  task: real/arm-pick                        # dataset task name (required)
  topics:
    depth: /camera/depth/image_rect_raw      # sensor_msgs/Image: 16UC1 (mm) or 32FC1 (m), rectified ...
    camera_info: /camera/depth/camera_info   # ... + sensor_msgs/CameraInfo (intrinsics K, stored in the dataset)
    # point_cloud: /camera/depth/points      # or a sensor_msgs/PointCloud2 instead of depth + camera_info
    state: /joint_states                     # sensor_msgs/JointState: positions -> data/state
    action: /arm/command                     # std_msgs/Float64MultiArray (or Float32MultiArray, JointState positions)
  state_joints: [j1, j2, j3, j4, j5, j6, j7] # optional: joints to select, in this order (default: all, as published)
  action_joints: null                        # optional: the same when the action topic is a JointState
  camera_to_base:                            # required, 4x4: camera optical frame (OpenCV: x right, y down,
    - [0.0, -0.5, 0.866, 0.1]                #   z forward) -> robot base frame; also applied to point_cloud
    - [-1.0, 0.0, 0.0, 0.0]                  #   messages (use the identity when they are already in the base frame)
    - [0.0, -0.866, -0.5, 0.6]
    - [0.0, 0.0, 0.0, 1.0]
  point_cloud:                               # base-frame crop box and points per cloud (defaults: the simulator's)
    crop_low: [0.2, -0.4, 0.01]
    crop_high: [0.9, 0.4, 0.6]
    num_points: 512
  max_staleness_s: 0.1                       # an action is kept only if its cloud and state are at most this old
  stamp_tolerance_s: 0.001                   # optional: a sample stamped up to this much after an action still
                                             #   counts as at or before it (clocks that round differently; >= 0,
                                             #   default 1 ms; 0: strictly <= t)
  episode_gap_s: 2.0                         # optional: a longer pause between actions starts a new episode
                                             #   (default: the whole file is one episode)
  time_source: header                        # header: header.stamp where a message has one, else the log time;
                                             #   log: the bag's log (receive) time for every topic

Time alignment: one frame per action message at time t; its observation is the latest point cloud and the
latest state stamped <= t + stamp_tolerance_s (at or before t; never a later one), each at most
max_staleness_s old, else the frame is dropped and counted per reason. data/timestamp,
data/point_cloud_timestamp and data/state_timestamp hold the three times (float64 s; an observation's may
lie up to stamp_tolerance_s after the action's); the dataset's attrs record the calibration, the topics, the
message counts and the frames dropped per reason.
"""


def import_bag_parser(sub) -> None:
    p = sub.add_parser(
        "import-bag", help="convert a ROS 1 .bag or an .mcap recording into a training dataset",
        description="Convert demonstrations recorded on a robot (a ROS 1 .bag, or an .mcap file with ROS 1 or ROS 2 "
                    "messages; no ROS installation needed) into the zarr dataset layout of `mfp collect`, so that "
                    "`mfp train --data OUT` trains on it. Point clouds go through the same back-projection, crop box "
                    "and farthest-point sampling as the simulators'. Run it once per recording: an existing --out "
                    "is appended to when task, crop box and calibration match.",
        epilog=CONFIG_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bag", help="the recording: a ROS 1 .bag file or an .mcap file (recognised by its first bytes), "
                               "or a ROS 2 bag folder (metadata.yaml + sqlite3 or mcap storage)")
    p.add_argument("--out", required=True,
                   help="zarr dataset to write (created; appended to when it exists and holds the same task, "
                        "point-cloud settings and calibration; the same recording is never imported twice)")
    p.add_argument("--config", required=True,
                   help="topics YAML: task, topics, camera_to_base, crop box, staleness, episode split (keys below)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (shown after 2 s otherwise)")
    p.set_defaults(run=_import_bag_run)


def _import_bag_run(args) -> int:
    from .output_paths import FOLDER, Output, check_outputs

    check_outputs([Output("--out", args.out, FOLDER, "zarr dataset")])
    from mfp.demos.bag_import import import_bag

    report = import_bag(args.bag, args.out, args.config, progress=not args.no_progress)
    print(report.summary())
    return 0
