"""Everything that runs a policy or measures one, one sub-package per job:

    cli/       `mfp`: one module per command, its parser beside its handler (cli/__init__.py lists them)
    sim/       simulation evaluation: rollouts (rollout.py), the evaluator, plots, the training-time eval hook
    suite/     the success suite: runner, report, published numbers, results file, variants
    bench/     speed benchmarks (collect, train, latency, control) and their shared helpers
    control/   the real-time loop (loop.py), the safety filter and e-stop (safety.py), the run recorder,
               and `mfp control`'s session (session.py)
    robots/    the robot interface, the simulated and ROS 1 robots, the ROS sim node, and the make_robot registry
    stats.py   percentiles; datasets.py: the policy shapes of a recorded dataset
"""
