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
