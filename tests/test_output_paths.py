"""Every command checks its output paths before any work: a folder where a file is meant, a file where a folder
is meant, a path under a file and a read-only folder are refused with one line (`mfp CMD: error: FLAG PATH ...`,
exit status 2). "Before any work" is checked directly: the function that does the command's work (collect,
train, evaluate, control, ...) is replaced by one that records its call, and the test asserts it was never
called and that nothing on disk changed.

The read-only case runs in a child process (this file, run as a script: see the bottom): a chmod 555 folder for
a normal user; as root, who writes into those anyway, a read-only tmpfs mounted in the child's own namespaces
(`unshare -rm`). It is skipped only when neither is possible.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# (command, flag, kind of output, argv for an output path P and a folder of valid inputs, path the error names,
#  work functions that must not run)
FILE, FOLDER = "file", "folder"


def _suite(flag):
    def argv(p, inp):
        paths = {"--data-dir": str(inp / "fresh" / "data"), "--runs-dir": str(inp / "fresh" / "runs"),
                 "--results": str(inp / "fresh" / "results.jsonl"), flag: p}
        return ["bench", "suite", "--tasks", "metaworld/reach", "--heads", "meanflow", "--seeds", "0",
                "--no-progress"] + [x for k, v in paths.items() for x in (k, v)]
    return argv


CASES = [
    ("collect", "--out", FOLDER, lambda p, inp: ["collect", "--task", "metaworld/reach", "--out", p],
     None, [("mfp.demos.collect", "collect")]),
    ("train", "--out", FOLDER, lambda p, inp: ["train", "--data", str(inp / "data.zarr"), "--out", p],
     None, [("mfp.policies.training", "train")]),
    ("eval", "--out", FILE, lambda p, inp: ["eval", "--expert", "--task", "metaworld/reach", "--out", p + ".json"],
     lambda p: p + ".json", [("mfp.eval.sim.evaluator", "evaluate")]),
    ("eval", "--out", FOLDER, lambda p, inp: ["eval", "--expert", "--task", "metaworld/reach", "--out", p],
     None, [("mfp.eval.sim.evaluator", "evaluate")]),
    ("export", "--out", FILE, lambda p, inp: ["export", "--ckpt", str(inp / "last.safetensors"), "--out", p],
     None, [("mfp.policies.export", "export_onnx")]),
    ("control", "--out", FILE, lambda p, inp: ["control", "--expert", "--task", "metaworld/reach", "--out", p],
     None, [("mfp.eval.control.session", "control")]),
    ("control", "--record", FOLDER,
     lambda p, inp: ["control", "--expert", "--task", "metaworld/reach", "--record", p],
     None, [("mfp.eval.control.session", "control")]),
    ("control", "--picture", FILE,
     lambda p, inp: ["control", "--expert", "--task", "metaworld/reach", "--picture", p],
     None, [("mfp.eval.control.session", "control")]),
    ("ros-sim", "--result", FILE, lambda p, inp: ["ros-sim", "--task", "metaworld/reach", "--result", p],
     None, [("mfp.eval.robots.ros_sim_node", "serve_sim")]),
    ("import-bag", "--out", FOLDER,
     lambda p, inp: ["import-bag", str(inp / "rec.mcap"), "--config", str(inp / "topics.yaml"), "--out", p],
     None, [("mfp.demos.bag_import", "import_bag")]),
    ("bench collect", "--out", FILE, lambda p, inp: ["bench", "collect", "--out", p],
     None, [("mfp.eval.bench.collect", "bench_collect")]),
    ("bench train", "--out", FILE, lambda p, inp: ["bench", "train", "--out", p],
     None, [("mfp.eval.bench.train", "bench_train")]),
    ("bench latency", "--out", FILE, lambda p, inp: ["bench", "latency", "--out", p],
     None, [("mfp.eval.bench.latency", "bench_latency")]),
    ("bench control", "--out", FILE, lambda p, inp: ["bench", "control", "--out", p],
     None, [("mfp.eval.bench.control", "bench_control")]),
    ("bench suite", "--data-dir", FOLDER, _suite("--data-dir"), None, [("mfp.eval.suite.runner", "run_suite")]),
    ("bench suite", "--runs-dir", FOLDER, _suite("--runs-dir"), None, [("mfp.eval.suite.runner", "run_suite")]),
    ("bench suite", "--results", FILE, _suite("--results"), None, [("mfp.eval.suite.runner", "run_suite")]),
    ("bench report", "--out", FILE, lambda p, inp: ["bench", "report", str(inp / "results.jsonl"), "--out", p],
     lambda p: p + ".md", [("mfp.eval.suite.report", "write_report")]),
]
IDS = [f"{c[0]} {c[1]} ({c[2]})" for c in CASES]

REASONS = {
    "wrong_kind_file": "is a folder, but a file is meant here",
    "wrong_kind_folder": "is a file, but a folder is meant here",
    "under_file": "is a file, not a folder",
    "read_only": ("permission denied (EACCES)", "read-only file system (EROFS)"),
}


def make_inputs(folder: Path) -> Path:
    """Valid inputs for the commands that read something (never opened: the output check comes first)."""
    inp = folder / "inputs"
    (inp / "data.zarr").mkdir(parents=True)
    (inp / "fresh").mkdir()  # where the outputs not under test go (left as they are: only checked)
    (inp / "rec.mcap").write_bytes(b"\x89MCAP0\r\n")
    (inp / "topics.yaml").write_text("task: real/x\n")
    (inp / "results.jsonl").write_text("")
    (inp / "last.safetensors").write_bytes(b"")
    return inp


def snapshot(folder: Path) -> dict:
    """Every path under `folder` with its size (files) or None (folders)."""
    return {str(p.relative_to(folder)): (p.stat().st_size if p.is_file() else None) for p in folder.rglob("*")}


def attempt(argv: list[str], work: list[tuple[str, str]]) -> dict:
    """Run `mfp ARGV` through the CLI's main with each work function replaced by a recorder: the exit status,
    stderr, and the work functions that were called."""
    from mfp.eval.cli import main

    called, saved = [], []
    for module, name in work:
        mod = importlib.import_module(module)
        saved.append((mod, name, getattr(mod, name)))
        setattr(mod, name, lambda *a, _n=f"{module}.{name}", **k: called.append(_n))
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            rc = main(argv)
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)
    return {"rc": rc, "err": err.getvalue(), "called": called}


def check_refused(result: dict, command: str, flag: str, shown: str, reason) -> None:
    err = result["err"]
    assert result["called"] == [], f"mfp {command}: work started before the output check: {result['called']}"
    assert result["rc"] == 2, (result["rc"], err)
    assert err.count("\n") == 1 and err.endswith("\n") and "Traceback" not in err, err
    assert err.startswith(f"mfp {command}: error: {flag} {shown}"), err
    reasons = reason if isinstance(reason, tuple) else (reason,)
    assert any(r in err for r in reasons), (err, reasons)


# --- the shared helper ------------------------------------------------------------------------------------------
def test_a_passing_check_changes_nothing(tmp_path):
    from mfp.eval.cli.output_paths import FILE as F, FOLDER as D, Output, check_outputs

    (tmp_path / "run").mkdir()
    (tmp_path / "old.json").write_text("{}")
    before = snapshot(tmp_path)
    check_outputs([Output("--out", tmp_path / "new" / "deep" / "x.json", F), Output("--out", tmp_path / "run", D),
                   Output("--out", tmp_path / "old.json", F), Output("--x", tmp_path / "new2", D),
                   Output("--y", None, F), Output("--z", "", D)])
    assert snapshot(tmp_path) == before  # no folder made, no test file left


def test_the_helper_refuses_with_flag_path_and_reason(tmp_path):
    from mfp.eval.cli.output_paths import FILE as F, FOLDER as D, Output, OutputPathError, check_outputs

    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    for out, message in [
        (Output("--out", tmp_path / "dir", F, "results JSON"), f"--out {tmp_path / 'dir'} (results JSON): is a folder"),
        (Output("--rec", tmp_path / "file", D), f"--rec {tmp_path / 'file'}: is a file, but a folder is meant"),
        (Output("--out", tmp_path / "file" / "a" / "b.json", F),
         f"--out {tmp_path / 'file/a/b.json'}: cannot be created: {tmp_path / 'file'} is a file, not a folder"),
        (Output("--out", tmp_path / "file", F, may_exist=False), f"--out {tmp_path / 'file'}: already exists"),
    ]:
        with pytest.raises(OutputPathError) as e:
            check_outputs([Output("--ok", tmp_path / "fine.json", F), out])
        assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)
    assert issubclass(OutputPathError, ValueError)  # the CLI prints it as one line, exit status 2


def test_resumable_state_is_accepted(tmp_path):
    """What a resumed suite or training run finds on disk (datasets, their locks, run folders with checkpoints and
    logs, a results file and its report) passes the check untouched."""
    from mfp.eval.cli.bench_suite import suite_outputs
    from mfp.eval.cli.output_paths import check_outputs, run_folder_outputs
    from mfp.eval.suite.runner import SuiteConfig, dataset_path, run_dir

    cfg = SuiteConfig(tasks=("metaworld/reach",), heads=("meanflow",), seeds=(0,), data_dir=str(tmp_path / "data"),
                      runs_dir=str(tmp_path / "runs"), results=str(tmp_path / "results.jsonl"), top5_every=2)
    data = dataset_path(cfg, "metaworld/reach")
    (data / "data").mkdir(parents=True)
    data.with_name(data.name + ".lock").write_text("")
    run = run_dir(cfg, "metaworld/reach", "meanflow", 0)
    (run / "tb").mkdir(parents=True)
    (run / "videos").mkdir()
    for name in ("last.safetensors", "config.json", "eval.json"):
        (run / name).write_bytes(b"x")
    for name in ("results.jsonl", "report.md", "report.png"):
        (tmp_path / name).write_text("{}\n")
    outputs = suite_outputs(cfg, report=True)
    assert {o.path for o in outputs} >= {data, run, run / "last.safetensors", run / "videos", tmp_path / "report.md"}
    before = snapshot(tmp_path)
    check_outputs(outputs)
    check_outputs(run_folder_outputs("--out", run, eval_history=True))
    assert snapshot(tmp_path) == before


# --- every command, before any work -----------------------------------------------------------------------------
def refused_before_any_work(case, tmp_path, p: str, reason) -> None:
    """The case's command, with its output flag at `p`, is refused naming the flag, the path as shown and `reason`,
    before it changes anything under tmp_path."""
    command, flag, kind, argv, shown, work = case
    shown = shown or (lambda path: path)
    inp = make_inputs(tmp_path)
    before = snapshot(tmp_path)
    result = attempt(argv(p, inp), work)
    check_refused(result, command, flag, shown(p), reason)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_wrong_kind_is_refused_before_any_work(case, tmp_path):
    kind, shown = case[2], case[4] or (lambda p: p)
    p = str(tmp_path / "taken")
    target = Path(shown(p))
    if kind == FILE:
        target.mkdir()  # a folder where the file should go
    else:
        target.write_text("x")  # a file where the folder should go
    refused_before_any_work(case, tmp_path, p, REASONS[f"wrong_kind_{kind}"])


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_path_under_a_file_is_refused_before_any_work(case, tmp_path):
    (tmp_path / "plain").write_text("x")
    refused_before_any_work(case, tmp_path, str(tmp_path / "plain" / "sub" / "out"),
                            f"{tmp_path / 'plain'} is a file, not a folder")


def _read_only_runner(ro: Path) -> list[str] | None:
    """The command prefix under which the folder `ro` is read-only for the child; None when that is impossible.

    Not root: `ro` is made chmod 555 (no prefix). Root writes into such a folder anyway, so as root the child runs
    in its own user and mount namespace (`unshare -rm`) with a read-only tmpfs mounted on `ro` (EROFS); the mount
    ends with the child."""
    if os.geteuid() != 0:
        return []
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    prefix = [unshare, "-rm", "sh", "-c", 'mount -t tmpfs -o ro,size=4k mfp-readonly "$0" && exec "$@"', str(ro)]
    probe = subprocess.run(prefix + ["sh", "-c", 'touch "$0/x"', str(ro)], capture_output=True, text=True)
    if probe.returncode == 0 or "Read-only file system" not in probe.stderr:
        return None
    return prefix


def test_a_read_only_folder_is_refused_before_any_work():
    base = Path(tempfile.mkdtemp(prefix="mfp-readonly-"))
    ro = base / "readonly"
    ro.mkdir()
    try:
        prefix = _read_only_runner(ro)
        if prefix is None:
            pytest.skip("running as root, which writes into chmod 555 folders, and `unshare -rm` cannot mount a "
                        "read-only tmpfs here; the read-only case needs one of the two")
        if not prefix:
            ro.chmod(0o555)
        inp = make_inputs(base)
        spec = [{"argv": case[3](str(ro / "out"), inp), "work": case[5]} for case in CASES]
        before = snapshot(base)
        child = subprocess.run(prefix + [sys.executable, __file__, json.dumps(spec)], capture_output=True,
                               text=True, timeout=600)
        assert child.returncode == 0, child.stderr[-3000:]
        results = json.loads(child.stdout.strip().splitlines()[-1])
        assert len(results) == len(CASES)
        for case, result in zip(CASES, results):
            command, flag, _, _, shown, _ = case
            check_refused(result, command, flag, (shown or (lambda p: p))(str(ro / "out")), REASONS["read_only"])
        assert snapshot(base) == before and not any(ro.iterdir())
    finally:
        ro.chmod(0o755)
        shutil.rmtree(base)


# --- mfp eval --out: a .json file, or a folder ------------------------------------------------------------------
def test_eval_out_rule():
    from mfp.eval.cli.evaluate import eval_output_paths

    assert eval_output_paths("runs/x/eval.json") == (Path("runs/x/eval.json"), Path("runs/x/eval"))
    assert eval_output_paths("runs/x/b.JSON") == (Path("runs/x/b.JSON"), Path("runs/x/b"))
    assert eval_output_paths("runs/x/eval") == (Path("runs/x/eval/eval.json"), Path("runs/x/eval"))
    assert eval_output_paths("runs/x/eval.json/") == (Path("runs/x/eval.json/eval.json"), Path("runs/x/eval.json"))
    assert eval_output_paths(None, Path("runs/r/last.safetensors")) == (Path("runs/r/eval-last.json"),
                                                                       Path("runs/r/eval-last"))
    assert eval_output_paths(None, None, "metaworld/reach") == (Path("runs/eval/metaworld_reach-expert.json"),
                                                               Path("runs/eval/metaworld_reach-expert"))
    with pytest.raises(ValueError, match="needs a name before .json"):
        eval_output_paths("runs/.json")


@pytest.mark.parametrize("out, results, side", [("ev", "ev/eval.json", "ev"), ("r/ev.json", "r/ev.json", "r/ev")])
def test_eval_writes_where_the_rule_says(out, results, side, tmp_path, monkeypatch, capsys):
    """The issue's case: --out without .json used to collect videos in a folder of that name, then fail to write
    the results file over it. The rollouts are replaced by a stub: this checks where the outputs go."""
    from mfp.eval.sim import evaluator

    seen = {}

    def fake_evaluate(policy, task, seeds, video_dir=None, n_videos=0, **kw):
        seen["video_dir"] = video_dir
        video_dir.mkdir(parents=True)
        (video_dir / "seed1000000.mp4").write_bytes(b"v")
        return {"episodes": [{"seed": 1000000}], "actor": "expert", "success_rate": 1.0, "n_episodes": 1,
                "inference_ms_p50": None, "videos": [str(video_dir / "seed1000000.mp4")]}

    def fake_picture(task, point_cloud, seed, path):
        path.write_bytes(b"png")
        return path

    monkeypatch.setattr(evaluator, "evaluate", fake_evaluate)
    monkeypatch.setattr(evaluator, "save_observation_picture", fake_picture)
    monkeypatch.chdir(tmp_path)
    from mfp.eval.cli import main

    assert main(["eval", "--expert", "--task", "metaworld/reach", "--episodes", "1", "--out", out]) == 0, \
        capsys.readouterr().err
    assert seen["video_dir"] == Path(side) / "videos"
    assert json.loads((tmp_path / results).read_text())["point_cloud_picture"] == str(Path(side) / "point_cloud.png")
    assert (tmp_path / side / "point_cloud.png").is_file() and (tmp_path / side / "videos").is_dir()


# --- the read-only child: `python tests/test_output_paths.py SPEC` ----------------------------------------------
if __name__ == "__main__":
    os.environ.setdefault("MUJOCO_GL", "egl")
    cases = json.loads(sys.argv[1])
    print(json.dumps([attempt(c["argv"], [tuple(w) for w in c["work"]]) for c in cases]))
