"""Pictures a user looks at: a point cloud from three viewpoints (what the policy saw)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def save_point_cloud_png(points: np.ndarray, path, title: str = "", crop_low=None, crop_high=None) -> Path:
    """points (N, 3) -> a PNG with a 3-D view and top (x-y) and front (x-z) projections, coloured by height."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mfp.demos.atomic import atomic_write_bytes

    points = np.asarray(points)[:, :3]
    fig = plt.figure(figsize=(12, 4))
    ax = fig.add_subplot(1, 3, 1, projection="3d")
    ax.scatter(points[:, 0], points[:, 1], points[:, 2], c=points[:, 2], s=2, cmap="viridis")
    ax.set_xlabel("x"), ax.set_ylabel("y"), ax.set_zlabel("z")
    ax.view_init(elev=25, azim=-60)
    for i, (a, b, name) in enumerate(((0, 1, "top (x-y)"), (0, 2, "front (x-z)")), start=2):
        ax2 = fig.add_subplot(1, 3, i)
        ax2.scatter(points[:, a], points[:, b], c=points[:, 2], s=2, cmap="viridis")
        if crop_low is not None and crop_high is not None:
            lo, hi = np.asarray(crop_low), np.asarray(crop_high)
            ax2.add_patch(plt.Rectangle((lo[a], lo[b]), hi[a] - lo[a], hi[b] - lo[b], fill=False, ls="--", color="r"))
        ax2.set_title(name)
        ax2.set_aspect("equal", adjustable="datalim")
    fig.suptitle(title or f"{len(points)} points")
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
