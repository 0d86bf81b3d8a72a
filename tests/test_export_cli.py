"""`mfp export` and `--runtime onnx`: a tiny run trained on real reach demonstrations, exported from the command line,
evaluated with ONNX Runtime on fixed seeds gives the same episodes as with torch; `mfp control` runs the exported
file; bad requests are one line and exit status 2, and write nothing."""

from __future__ import annotations

import json
import re

import pytest

from mfp.eval.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EVAL = ["--episodes", "2", "--seeds", "1", "--workers", "1", "--videos", "0", "--no-progress"]


@pytest.fixture(scope="module")
def run(reach_demos, tmp_path_factory):
    """A tiny MeanFlow run (4 steps) on reach demonstrations, exported by `mfp export --ckpt RUN`: {"run", "onnx"}."""
    run = tmp_path_factory.mktemp("export-cli") / "run"
    assert main(["train", "--data", str(reach_demos), "--out", str(run), "--preset", "tiny", "--steps", "4",
                 "--batch-size", "8", "--val-every", "0", "--no-progress", "--threads", "1"]) == 0
    assert main(["export", "--ckpt", str(run)]) == 0
    return {"run": run, "onnx": run / "last.onnx"}


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"mfp {command}: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_export_writes_beside_the_checkpoint_and_prints_parity(run, tmp_path, capsys):
    assert run["onnx"].is_file()                                     # the default: beside the checkpoint
    out_path = tmp_path / "sub" / "policy.onnx"
    assert main(["export", "--ckpt", str(run["run"] / "last.safetensors"), "--out", str(out_path)]) == 0
    out = capsys.readouterr().out
    assert out_path.is_file() and f"-> {out_path}" in out and "meanflow, ema weights, 1 network evaluation" in out
    diff = float(re.search(r"max \|onnx - torch\| action difference (\S+)", out).group(1))
    assert diff < 1e-4


def test_onnx_eval_gives_the_same_episodes_as_torch(run, tmp_path, capsys):
    """The same seeds under both runtimes: the same success per episode (the requirement), and the same steps and
    returns (the trajectories themselves), from the exported file and from the run exported in memory."""
    results = {}
    for name, args in {"torch": ["--ckpt", str(run["run"])],
                       "onnx-file": ["--ckpt", str(run["onnx"]), "--runtime", "onnx"],
                       "onnx-memory": ["--ckpt", str(run["run"]), "--runtime", "onnx"]}.items():
        out = tmp_path / f"{name}.json"
        assert main(["eval", *args, *EVAL, "--out", str(out)]) == 0, name
        results[name] = json.loads(out.read_text())
    assert f"onnx: exported {run['run'] / 'last.safetensors'} in memory" in capsys.readouterr().out
    torch_eps = results["torch"]["episodes"]
    for name, result in results.items():
        print(name, [(e["seed"], e["success"], round(e["episode_return"], 4)) for e in result["episodes"]])
    assert [e["seed"] for e in torch_eps] == [1010000, 1010001]
    for name in ("onnx-file", "onnx-memory"):
        assert results[name]["checkpoint"]["runtime"] == "onnx" and results[name]["task"] == "metaworld/reach"
        assert results[name]["checkpoint"]["step"] == 4 and results[name]["checkpoint"]["weights"] == "ema"
        for a, b in zip(torch_eps, results[name]["episodes"], strict=True):
            assert (a["seed"], a["success"], a["steps"], a["first_success_step"]) == \
                   (b["seed"], b["success"], b["steps"], b["first_success_step"]), name
            assert a["episode_return"] == pytest.approx(b["episode_return"], rel=1e-3), name
    assert results["torch"]["checkpoint"]["runtime"] == "torch"


def test_onnx_policy_keeps_the_task_check_and_runs_under_control(run, tmp_path, capsys):
    onnx = str(run["onnx"])
    assert main(["eval", "--ckpt", onnx, "--runtime", "onnx", "--task", "metaworld/drawer-open", *EVAL,
                 "--out", str(tmp_path / "x.json")]) == 2
    assert "trained on metaworld/reach, not metaworld/drawer-open" in _one_line_error(capsys, "eval")
    assert not (tmp_path / "x.json").exists()
    report = tmp_path / "control.json"
    assert main(["control", "--ckpt", onnx, "--runtime", "onnx", "--robot", "sim", "--rate", "20", "--max-steps", "6",
                 "--warmup", "1", "--out", str(report)]) == 0
    (episode,) = json.loads(report.read_text())
    assert episode["stop_reason"] == "step_limit" and episode["steps"] == 6


def test_export_refuses_bad_requests_in_one_line(run, synthetic_store, tmp_path, capsys):
    from mfp.policies import PolicyConfig
    from mfp.policies.training import TrainConfig, train

    assert main(["export", "--ckpt", str(tmp_path / "missing")]) == 2
    assert "missing: no such checkpoint" in _one_line_error(capsys, "export")
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["export", "--ckpt", str(run["run"]), "--out", str(blocker / "policy.onnx")]) == 2
    assert "--out" in _one_line_error(capsys, "export")
    assert main(["export", "--ckpt", str(run["run"]), "--out", str(tmp_path)]) == 2
    assert "is a folder" in _one_line_error(capsys, "export")
    assert main(["export", "--ckpt", str(run["run"]), "--sample-steps", "0", "--out", str(tmp_path / "a.onnx")]) == 2
    assert "--sample-steps must be >= 1" in _one_line_error(capsys, "export")
    data = synthetic_store(tmp_path / "data.zarr", n_eps=2)
    dp3 = tmp_path / "dp3"
    train(data, PolicyConfig(head="dp3", n_points=64, unet={"preset": "tiny"}),
          TrainConfig(steps=1, batch_size=4, val_every=0, ckpt_every=100, log_every=100, warmup_steps=0), dp3,
          progress=False)
    assert main(["export", "--ckpt", str(dp3)]) == 2
    assert "head 'dp3' cannot be exported" in _one_line_error(capsys, "export")
    assert main(["eval", "--ckpt", str(dp3), "--runtime", "onnx", *EVAL]) == 2
    assert "head 'dp3' cannot be exported" in _one_line_error(capsys, "eval")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.zarr", "dp3", "file"]      # nothing written
    assert not list(dp3.glob("*.onnx")) and not list(dp3.glob("eval-*"))


def test_runtime_refusals_name_the_flag(run, capsys):
    onnx = str(run["onnx"])
    assert main(["eval", "--ckpt", onnx, *EVAL]) == 2
    assert "exported ONNX policy: run it with --runtime onnx" in _one_line_error(capsys, "eval")
    assert main(["eval", "--ckpt", onnx, "--runtime", "onnx", "--no-ema", *EVAL]) == 2
    assert "mfp export --no-ema" in _one_line_error(capsys, "eval")
    assert main(["eval", "--ckpt", onnx, "--runtime", "onnx", "--device", "cuda", *EVAL]) == 2
    assert "runs on the CPU" in _one_line_error(capsys, "eval")
    assert main(["eval", "--expert", "--task", "metaworld/reach", "--runtime", "onnx", *EVAL]) == 2
    assert "not to the expert" in _one_line_error(capsys, "eval")
