import os

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
