"""Speed benchmarks (`mfp bench collect|train|latency|control`): collect.py (environment steps/s), train.py (training
step time), latency.py (observation -> action latency), control.py (control-loop timing, e-stop, blending); shared
helpers: untrained.py (random-weight policies), save.py (save the figures as JSON and print them)."""
