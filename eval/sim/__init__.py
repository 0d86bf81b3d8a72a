"""Simulation evaluation: rollouts (rollout.py: the policy runner and its history / chunk queue, episodes), the
evaluator (fixed evaluation seeds, worker processes, videos), point-cloud plots, and the hook that evaluates a
policy while it trains (training_eval.py)."""
