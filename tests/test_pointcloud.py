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


# --- the fast path (issue 16): crop on the depth image, cached rays, bucket FPS ---------------------------------
from scipy.spatial import cKDTree  # noqa: E402
from scipy.spatial.distance import pdist  # noqa: E402

from mfp.envs.pointcloud import backproject_cropped  # noqa: E402
from mfp.envs.pointcloud_bench import (bench_preprocessing, open3d_farthest_point_sample,  # noqa: E402
                                       reference_backproject, reference_depth_to_point_cloud)

SCENE_BOX = ((-0.1, -0.5, 0.05), (0.5, 0.1, 0.3))       # cuts through the box and leaves the floor out


def _rendered(scene, **camera_kwargs):
    model, data = scene
    cam = MujocoCamera(model, data, 96, 80, **camera_kwargs)
    depth, K, pose = cam.render_depth(), cam.K, cam.cam_to_world()
    cam.close()
    return depth, K, pose


def _holes(depth):
    """The depth image with the invalid values a real camera gives: NaN, +inf, 0 and a negative reading."""
    depth = depth.copy()
    depth[0, :4] = [np.nan, np.inf, 0.0, -1.0]
    depth[40, 40:44] = [np.nan, np.inf, 0.0, -1.0]
    return depth


@pytest.mark.parametrize("camera_kwargs", [{"name": "cam"}, {"pos": (1.0, 0.8, 0.9), "lookat": (0.2, -0.1, 0.05)}],
                         ids=["named", "free"])
def test_cropping_on_the_depth_image_keeps_exactly_the_points_of_the_box(scene, camera_kwargs):
    depth, K, pose = _rendered(scene, **camera_kwargs)
    depth = _holes(depth)
    for low, high in (SCENE_BOX, ((-2, -2, -0.01), (2, 2, 0.001)), ((-9, -9, -9), (9, 9, 9))):  # part, floor, all
        fast = backproject_cropped(depth, K, pose, low, high)
        full = crop(backproject(depth, K, pose), low, high)
        np.testing.assert_array_equal(fast, full)          # the same points, bit for bit, in the same order
        assert len(fast) > 100
    # ... and those are the earlier implementation's points, up to float rounding of the rotation.
    ref = crop(reference_backproject(depth, K, pose), *SCENE_BOX)
    fast = backproject_cropped(depth, K, pose, *SCENE_BOX)
    assert fast.shape == ref.shape
    np.testing.assert_allclose(fast, ref, atol=2e-6)


def test_points_on_the_crop_faces_are_decided_like_the_world_frame_crop():
    """Boxes whose faces pass exactly through back-projected points (random tilted cameras, random depth): the
    depth window must never drop a point the world-frame crop keeps, nor keep one it drops."""
    rng = np.random.default_rng(3)
    K = intrinsics_from_fovy(60.0, 40, 30)
    for _ in range(20):
        q = np.linalg.qr(rng.normal(size=(3, 3)))[0]
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = q * np.sign(np.linalg.det(q)), rng.uniform(-1, 1, 3)
        depth = rng.uniform(0.2, 3.0, (30, 40)).astype(np.float32)
        pts = backproject(depth, K, T)
        i, j = rng.choice(len(pts), 2, replace=False)
        low, high = np.minimum(pts[i], pts[j]), np.maximum(pts[i], pts[j])   # faces through two points
        if _ % 2:
            low[0] = T[0, 3]                                   # the camera centre on a face: rays nearly flat
        fast = backproject_cropped(depth, K, T, low, high)
        np.testing.assert_array_equal(fast, crop(pts, low, high))
        assert len(fast) >= (0 if _ % 2 else 2)


def test_rays_are_cached_per_camera_pose():
    K = intrinsics_from_fovy(45.0, 16, 12)
    depth = np.random.default_rng(0).uniform(0.5, 2.0, (12, 16)).astype(np.float32)
    for angle in (0.0, 0.3, 0.0, 0.6):                         # the same K and shape, moving poses
        T = np.eye(4)
        T[:3, :3] = [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
        T[:3, 3] = [angle, 0.1, 1.0]
        np.testing.assert_allclose(backproject(depth, K, T), reference_backproject(depth, K, T), atol=2e-6)


def _clouds():
    rng = np.random.default_rng(0)
    blobs = np.concatenate([rng.normal(c, 0.05, (600, 3)) for c in rng.uniform(-1, 1, (4, 3))])
    return {"cube": rng.uniform(-1, 1, (3000, 3)), "blobs": blobs,
            "plane": np.c_[rng.uniform(0, 1, (2500, 2)), np.zeros(2500)]}


@pytest.mark.parametrize("n", [64, 512])
def test_fps_covers_the_cloud_as_well_as_open3d(n):
    """Coverage (distance from each input point to its nearest sample): mean within 5 % and worst case within
    10 % of open3d's; and the greedy farthest-point property: no two samples are closer than the farthest any
    input point is from the samples (random or grid subsampling fail it)."""
    for name, cloud in _clouds().items():
        cloud = cloud.astype(np.float32)
        ours, theirs = farthest_point_sample(cloud, n), open3d_farthest_point_sample(cloud, n)
        d_ours, d_theirs = cKDTree(ours).query(cloud)[0], cKDTree(theirs).query(cloud)[0]
        assert d_ours.mean() <= 1.05 * d_theirs.mean(), name
        assert d_ours.max() <= 1.10 * d_theirs.max(), name
        assert pdist(ours).min() >= d_ours.max() - 1e-6, name
        assert len(np.unique(ours, axis=0)) == n, name
        random = cloud[np.random.default_rng(1).choice(len(cloud), n, replace=False)]
        assert pdist(random).min() < cKDTree(random).query(cloud)[0].max()   # the property test has teeth


def test_pipeline_matches_the_earlier_one_on_a_rendered_scene(scene):
    depth, K, pose = _rendered(scene, name="cam")
    camera = CameraModel(K=K, cam_to_world=pose, width=96, height=80, name="cam")
    cfg = PointCloudConfig(num_points=128, crop_low=SCENE_BOX[0], crop_high=SCENE_BOX[1], max_points_before_fps=4096)
    new, old = depth_to_point_cloud(depth, camera, cfg), reference_depth_to_point_cloud(depth, camera, cfg)
    assert new.shape == old.shape == (128, 3) and new.dtype == np.float32
    inside = crop(backproject(depth, K, pose), *SCENE_BOX)
    assert cKDTree(inside).query(new)[0].max() == 0.0                   # every sample is a point of the crop
    d_new, d_old = cKDTree(new).query(inside)[0], cKDTree(old).query(inside)[0]
    assert d_new.mean() <= 1.05 * d_old.mean() and d_new.max() <= 1.10 * d_old.max()
    np.testing.assert_array_equal(new, depth_to_point_cloud(depth, camera, cfg))     # deterministic


def test_preprocessing_benchmark_reports_both_paths(scene):
    depth, K, pose = _rendered(scene, name="cam")
    camera = CameraModel(K=K, cam_to_world=pose, width=96, height=80, name="cam")
    cfg = PointCloudConfig(num_points=64, crop_low=SCENE_BOX[0], crop_high=SCENE_BOX[1], max_points_before_fps=4096)
    stats = bench_preprocessing(depth, camera, cfg, calls=3, warmup=1)
    assert stats["old_ms"]["p50"] > 0 and stats["new_ms"]["p50"] > 0 and stats["speedup_p50"] > 0
    assert stats["image"] == [80, 96] and stats["calls"] == 3 and stats["cpu_capability"]
