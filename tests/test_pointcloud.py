"""Back-projection, crop and farthest-point sampling, checked against known geometry."""

import mujoco
import numpy as np
import pytest

from mfp.envs import CameraModel, PointCloudConfig, backproject, crop, depth_to_point_cloud, farthest_point_sample
from mfp.envs.camera import MujocoCamera
from mfp.envs.pointcloud import intrinsics_from_fovy

SCENE = """
<mujoco>
  <worldbody>
    <geom name="floor" type="plane" size="2 2 0.1"/>
    <geom name="box" type="box" pos="0.3 -0.2 0.1" size="0.1 0.1 0.1"/>
    <camera name="cam" pos="1.2 -1.0 1.0" xyaxes="0.64 0.77 0 -0.4 0.33 0.85"/>
  </worldbody>
</mujoco>
"""


def _on_scene_surface(p, tol=4e-3):
    """True where a point lies on the floor (z = 0) or on the surface of the box."""
    on_floor = np.abs(p[:, 2]) < tol
    q = np.abs(p - np.array([0.3, -0.2, 0.1])) - 0.1
    on_box = (q.max(axis=1) > -tol) & (q.max(axis=1) < tol)
    return on_floor | on_box


@pytest.fixture(scope="module")
def scene():
    model = mujoco.MjModel.from_xml_string(SCENE)
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    return model, data


@pytest.mark.parametrize("camera_kwargs", [
    {"name": "cam"},
    {"pos": (1.0, 0.8, 0.9), "lookat": (0.2, -0.1, 0.05)},
], ids=["named", "free"])
def test_rendered_depth_backprojects_onto_the_scene(scene, camera_kwargs):
    model, data = scene
    cam = MujocoCamera(model, data, 96, 80, **camera_kwargs)
    depth = cam.render_depth()
    points = backproject(depth, cam.K, cam.cam_to_world())
    cam.close()
    near = points[np.linalg.norm(points, axis=1) < 1.5]  # far floor pixels carry larger depth quantisation
    assert len(near) > 1000
    assert _on_scene_surface(near).mean() > 0.99
    # The box is seen: some points on its top face.
    top = (np.abs(near[:, 2] - 0.2) < 4e-3) & (np.abs(near[:, 0] - 0.3) < 0.1) & (np.abs(near[:, 1] + 0.2) < 0.1)
    assert top.sum() > 20


def test_backproject_plane_with_known_pose():
    # A camera 2 m above the origin looking straight down (OpenCV axes: z forward = world -z).
    K = intrinsics_from_fovy(60.0, 40, 30)
    T = np.eye(4)
    T[:3, :3] = np.diag([1.0, -1.0, -1.0])
    T[:3, 3] = [0.0, 0.0, 2.0]
    depth = np.full((30, 40), 2.0, dtype=np.float32)
    depth[0, 0] = np.nan  # invalid pixels are dropped
    depth[0, 1] = 0.0
    pts = backproject(depth, K, T)
    assert pts.shape == (30 * 40 - 2, 3) and pts.dtype == np.float32
    np.testing.assert_allclose(pts[:, 2], 0.0, atol=1e-6)
    half_height = 2.0 * np.tan(np.deg2rad(30.0)) * (29 / 2) / (30 / 2)  # centre of the last row
    assert pts[:, 1].max() == pytest.approx(half_height, rel=1e-4)


def test_crop_keeps_exactly_the_box():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1, 1, (5000, 3)).astype(np.float32)
    kept = crop(pts, (-0.5, -0.2, 0.0), (0.5, 0.3, 1.0))
    inside = np.all((pts >= [-0.5, -0.2, 0.0]) & (pts <= [0.5, 0.3, 1.0]), axis=1)
    assert len(kept) == inside.sum()
    np.testing.assert_array_equal(kept, pts[inside])


def test_fps_picks_spread_out_input_points():
    rng = np.random.default_rng(1)
    # Dense cluster plus a few outliers: FPS must pick the outliers, random sampling would not.
    cluster = rng.normal(0, 0.01, (3000, 3))
    outliers = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0]], dtype=float)
    pts = np.concatenate([cluster, outliers]).astype(np.float32)
    out = farthest_point_sample(pts, 64)
    assert out.shape == (64, 3) and out.dtype == np.float32
    for o in outliers:
        assert np.min(np.linalg.norm(out - o, axis=1)) < 1e-6
    # Every output is an input point.
    d = np.linalg.norm(out[:, None] - pts[None], axis=2).min(axis=1)
    assert d.max() < 1e-6
    # Deterministic.
    np.testing.assert_array_equal(out, farthest_point_sample(pts, 64))


def test_fps_pads_small_clouds_and_refuses_empty_ones():
    pts = np.arange(15, dtype=np.float32).reshape(5, 3)
    out = farthest_point_sample(pts, 12)
    assert out.shape == (12, 3)
    assert {tuple(r) for r in out} == {tuple(r) for r in pts}
    with pytest.raises(ValueError, match="no points"):
        farthest_point_sample(np.zeros((0, 3), np.float32), 8)


def test_pipeline_reports_an_empty_crop_box():
    cam = CameraModel(K=intrinsics_from_fovy(45, 8, 8), cam_to_world=np.eye(4), width=8, height=8, name="test")
    depth = np.ones((8, 8), np.float32)
    cfg = PointCloudConfig(num_points=4, crop_low=(5, 5, 5), crop_high=(6, 6, 6), max_points_before_fps=16)
    with pytest.raises(ValueError, match="crop box"):
        depth_to_point_cloud(depth, cam, cfg)


def test_point_cloud_config_validation():
    with pytest.raises(ValueError, match="empty"):
        PointCloudConfig(crop_low=(0, 0, 1), crop_high=(1, 1, 0))
    with pytest.raises(ValueError, match="num_points"):
        PointCloudConfig(num_points=0)
    cfg = PointCloudConfig(num_points=256)
    assert PointCloudConfig.from_dict(cfg.to_dict()) == cfg
