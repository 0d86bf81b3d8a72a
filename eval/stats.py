"""Small statistics shared by the evaluator, the control loop's report, the benchmarks and the simulated ROS node."""

from __future__ import annotations

import numpy as np


def percentile(values, q: float) -> float | None:
    """The q-th percentile of `values`, or None when there are none (JSON-friendly)."""
    return float(np.percentile(values, q)) if len(values) else None
