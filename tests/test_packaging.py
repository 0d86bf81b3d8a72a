"""The four folders install as one import package, mfp.{envs,demos,policies,eval}, with nothing left out."""

import importlib.util
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"envs": "mfp.envs", "demos": "mfp.demos", "policies": "mfp.policies", "eval": "mfp.eval"}


def _config():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_source_folder_is_an_installed_package():
    cfg = _config()
    listed = set(cfg["packages"])
    for folder, package in FOLDERS.items():
        for init in (ROOT / folder).rglob("*.py"):
            sub = init.parent.relative_to(ROOT / folder)
            name = ".".join([package, *sub.parts]) if sub.parts else package
            assert name in listed, f"{init.parent} holds Python files but {name} is not in pyproject's packages"
            assert cfg["package-dir"][name] == str(Path(folder, *sub.parts)), f"{name} maps to the wrong folder"


def test_no_top_level_modules_named_like_the_folders():
    for folder in FOLDERS:
        spec = importlib.util.find_spec(folder)
        assert spec is None or "site-packages" not in str(spec.origin), f"a top-level module '{folder}' is installed"


def test_console_script_and_expert_weights_are_packaged():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert data["project"]["scripts"]["mfp"] == "mfp.eval.cli:main"
    assert "*.npz" in _config()["package-data"]["mfp.demos.experts.weights"]
