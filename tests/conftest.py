import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # tests/procs.py: child processes shared by the node tests
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def reach_demos(tmp_path_factory):
    """A real dataset: 3 expert episodes of metaworld/reach recorded with `collect` (about 6 s)."""
    from mfp.demos.collect import collect

    path = tmp_path_factory.mktemp("demos") / "reach.zarr"
    collect("metaworld/reach", 3, path, progress=False)
    return path


@pytest.fixture
def one_torch_thread():
    """Tiny networks on a shared 2-core machine: one torch thread is faster than two (per-op overhead)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def jvp_matches_finite_differences():
    """The MeanFlow JVP check shared by the MeanFlow and prediction tests: check(net) draws a float64 batch for a
    two-time backbone (action_dim 3, condition 5, horizon 4), takes du/dt of u = net(z, t, r) along (v, 0, 1) with
    jvp_dudt, asserts it matches central finite differences, and returns the problem (z, v, cond, t, r, u, dudt,
    fd, h) for the test's own checks."""
    from types import SimpleNamespace

    import torch

    from mfp.policies.meanflow import jvp_dudt

    def check(net) -> SimpleNamespace:
        B = 4
        z, v = torch.randn(B, 4, 3, dtype=torch.float64), torch.randn(B, 4, 3, dtype=torch.float64)
        cond = torch.randn(B, 5, dtype=torch.float64)
        t = torch.tensor([0.9, 0.5, 0.3, 0.7], dtype=torch.float64)
        r = torch.tensor([0.1, 0.5, 0.0, 0.2], dtype=torch.float64)

        def u_fn(z_, r_, t_):
            return net(z_, t_, r_, cond=cond, return_features=True)

        u, dudt, _ = jvp_dudt(u_fn, z, r, t, v)
        h = 1e-6
        fd = (net(z + h * v, t + h, r, cond=cond) - net(z - h * v, t - h, r, cond=cond)) / (2 * h)  # dr/dt = 0
        torch.testing.assert_close(dudt, fd, rtol=1e-5, atol=1e-6 * max(1.0, fd.abs().max().item()))
        return SimpleNamespace(z=z, v=v, cond=cond, t=t, r=r, u=u, dudt=dudt, fd=fd, h=h)

    return check


@pytest.fixture(scope="session")
def synthetic_store():
    """make(path, n_eps=4, T=16, n_points=64, agent_dim=9, action_dim=4, attrs=None) -> path: a tiny synthetic
    dataset, actions a smooth function of the state, clouds around the end effector (training steps take
    milliseconds). attrs default to a synthetic task, camera and point-cloud description."""
    import numpy as np

    from mfp.demos.store import DemoStore

    def make(path, n_eps: int = 4, T: int = 16, n_points: int = 64, agent_dim: int = 9, action_dim: int = 4,
             attrs: dict | None = None):
        if attrs is None:
            attrs = {"task": "synthetic/line", "camera": {"name": "synthetic"},
                     "point_cloud": {"num_points": n_points, "crop_low": [-1, -1, -1]}}
        rng = np.random.default_rng(0)
        store = DemoStore.create(path, attrs=attrs)
        for e in range(n_eps):
            t = np.linspace(0, 1, T, dtype=np.float32)[:, None]
            pos = (t * rng.uniform(-1, 1, (1, agent_dim))).astype(np.float32)
            act = np.tile(np.sin(3 * t + e), (1, action_dim)).astype(np.float32)
            pc = (rng.normal(size=(T, n_points, 3)) * 0.1 + pos[:, None, :3]).astype(np.float32)
            store.add_episode({"point_cloud": pc, "state": pos, "action": act})
        return path

    return make
