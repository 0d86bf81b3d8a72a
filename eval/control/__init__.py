"""The real-time control path: loop.py (ControlLoop: observation alignment, chunk scheduling, blending),
safety.py (the action filter, watchdog limits and e-stop), recorder.py (every run recorded in the demonstration
layout), session.py (`mfp control` as a function: actor + robot + loop + recorder per episode). Robots are in
mfp.eval.robots."""
