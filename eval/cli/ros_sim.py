"""`mfp ros-sim`: a simulated robot served over ROS topics (for `mfp control --robot ros`)."""

from __future__ import annotations

from mfp.demos.seeds import EVAL_SEED_START
from mfp.envs import EPISODE_STEPS


def ros_sim_parser(sub) -> None:
    p = sub.add_parser(
        "ros-sim", help="serve a simulated robot over ROS topics (for `mfp control --robot ros`)",
        description="A ROS node that runs a MuJoCo task in real time: publishes its point cloud (PointCloud2, base "
                    "frame) and state (JointState), executes actions received as JointState at their header "
                    "stamps, holds on /hold or when actions stop coming, stops on the e-stop topic. Writes a JSON "
                    "summary when the episode ends. ROS 1 needs a running roscore (ROS_MASTER_URI); ROS 2 talks "
                    "DDS in the domain of the config's domain_id or $ROS_DOMAIN_ID.")
    p.add_argument("--task", required=True, help="task, e.g. metaworld/reach")
    p.add_argument("--ros", type=int, choices=(1, 2), default=1,
                   help="ROS 1 (rospy, for --robot ros) or ROS 2 (DDS, for --robot ros2) (default: 1)")
    p.add_argument("--rate", type=float, default=10.0, help="robot step rate in Hz (default: 10)")
    p.add_argument("--seed", type=int, default=EVAL_SEED_START, help=f"episode seed (default: {EVAL_SEED_START})")
    p.add_argument("--ros-config", default=None, help="YAML of topic names (see eval/robots/ros_topics.py)")
    p.add_argument("--publish-full-state", action="store_true",
                   help="also publish the privileged simulator state (for scripted experts in tests)")
    p.add_argument("--max-steps", type=int, default=EPISODE_STEPS,
                   help=f"simulator steps in the episode (default: {EPISODE_STEPS})")
    p.add_argument("--result", default=None, help="JSON summary written when the episode ends")
    p.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds (default: 120)")
    p.set_defaults(run=_ros_sim_run)


def _ros_sim_run(args) -> int:
    from .output_paths import Output, check_outputs

    check_outputs([Output("--result", args.result, what="episode summary JSON")])
    from mfp.eval.robots.ros_topics import RosTopics

    if args.ros == 2:
        from mfp.eval.robots.ros2_sim_node import serve_sim
    else:
        from mfp.eval.robots.ros_sim_node import serve_sim

    topics = RosTopics.from_yaml(args.ros_config) if args.ros_config else RosTopics()
    if args.publish_full_state:
        topics = topics.with_full_state()
    summary = serve_sim(args.task, topics, rate_hz=args.rate, seed=args.seed, result_path=args.result,
                        timeout_s=args.timeout, max_steps=args.max_steps)
    print(summary)
    return 0 if not summary["timed_out"] else 1
