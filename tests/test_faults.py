"""Crash and disk-full faults, for real: `mfp` in subprocesses on real files, killed with SIGKILL or limited with
RLIMIT_FSIZE, then checked and resumed.

- kill -9 during `mfp train` (checkpoint every step; killed while a checkpoint is being written, or at a random
  moment between writes): every checkpoint file on disk reads back whole, temporary files are never taken for
  checkpoints (and are cleared by the next run), `--resume` continues from the newest checkpoint, loses at most
  the steps since it and finishes with the very weights of an uninterrupted run.
- a full disk while writing a checkpoint (a file size limit in the child, SIGXFSZ ignored, so the write fails
  with EFBIG): `mfp train` exits with a one-line error naming the file, the previous checkpoint is unchanged,
  no temporary file is left, and once there is room again `--resume` finishes.
- kill -9 during `mfp control --record` in the second episode: the store opens, holds the committed episodes
  unchanged, and the next `mfp control --record` appends to it.
(kill -9 during `mfp collect` and during `mfp bench suite`: tests/test_collect.py and tests/test_suite.py.)

With MFP_RELIABILITY_OUT set, each test adds its figures (trials, survived, data lost beyond the documented
interval) to $MFP_RELIABILITY_OUT/faults.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import resource
import signal
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mfp.demos.store import DemoStore
from mfp.policies.training import read_checkpoint

ENV = {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1"}
STEPS = 20                 # optimiser steps of every training run here
N_POINTS = 64
TRAIN_FLAGS = ["--preset", "tiny", "--head", "meanflow", "--steps", str(STEPS), "--batch-size", "8", "--warmup", "0",
               "--val-every", "0", "--val-ratio", "0.25", "--log-every", "5", "--threads", "1", "--device", "cpu",
               "--no-progress"]


def mfp(*args) -> list[str]:
    return [sys.executable, "-m", "mfp.eval.cli", *map(str, args)]


def record_figures(fault: str, figures: dict) -> None:
    """Merge one fault's figures into $MFP_RELIABILITY_OUT/faults.json (nothing when the variable is unset)."""
    out = os.environ.get("MFP_RELIABILITY_OUT")
    if not out:
        return
    from mfp.demos.atomic import atomic_write_json

    path = Path(out) / "faults.json"
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc.setdefault("faults", {})[fault] = figures
    doc["columns"] = {"trials": "faults injected", "survived": "files readable and the next run resumed / "
                      "appended and finished", "data_lost": "steps or episodes lost beyond the documented "
                      "interval (a checkpoint interval; the episode in progress)"}
    atomic_write_json(path, doc)


def record_trials(what: str, trials: list[dict], problems: list[str], lost: str, unit: str, interval: str) -> None:
    """A fault test's end: each trial survived when neither it nor the run afterwards had a problem; the figures
    (trials, survived, data lost in `unit` from each trial's `lost` count, the documented loss interval) are
    recorded, and no problem may remain."""
    for t in trials:
        t["survived"] = not t["problems"] and not problems
    record_figures(what, {
        "trials": len(trials), "survived": sum(t["survived"] for t in trials),
        "data_lost": sum(t[lost] for t in trials), "unit": unit,
        "documented_interval": interval, "trials_detail": trials})
    assert not problems, "\n".join(problems)


# --- data ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store_path(tmp_path_factory, synthetic_store):
    """A small synthetic dataset (4 episodes of 16 steps, 64-point clouds): training steps take milliseconds."""
    return synthetic_store(tmp_path_factory.mktemp("data") / "synthetic.zarr", n_points=N_POINTS)


@pytest.fixture(scope="module")
def reference(store_path, tmp_path_factory):
    """The final checkpoint of an uninterrupted `mfp train` run: what every interrupted run must end with."""
    run = tmp_path_factory.mktemp("reference") / "run"
    r = subprocess.run(mfp("train", "--data", store_path, "--out", run, "--ckpt-every", STEPS, *TRAIN_FLAGS),
                       env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return weights(run / "last.safetensors")


def weights(path) -> dict[str, torch.Tensor]:
    ckpt = read_checkpoint(path)
    return {**{f"model/{k}": v for k, v in ckpt.tensors("model/").items()},
            **{f"ema/{k}": v for k, v in ckpt.tensors("ema/").items()}}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- run-folder inspection -----------------------------------------------------------------------------------
STEP_FILE = re.compile(r"step_(\d{8})\.safetensors")


def checkpoint_files(run: Path) -> list[Path]:
    return sorted(p for p in run.iterdir() if p.name == "last.safetensors" or STEP_FILE.fullmatch(p.name))


def temp_files(run: Path) -> list[Path]:
    """Temporary files of checkpoint writes (.last.safetensors.XXXXXXXX.partial, .step_...partial)."""
    return sorted(p for p in run.iterdir() if is_checkpoint_temp(p.name))


def is_checkpoint_temp(name: str) -> bool:
    return name.endswith(".partial") and (name.startswith(".last.safetensors.") or name.startswith(".step_"))


def step_in_temp_file(path: Path) -> int | None:
    """The step a killed checkpoint write was saving, from its safetensors header when that got to disk."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        return int(json.loads(header["__metadata__"]["meta"])["step"])
    except Exception:
        return None


def check_checkpoints(run: Path) -> tuple[dict[str, int], list[str]]:
    """{file name: step} of every checkpoint file, each read back whole; and the problems found."""
    steps, problems = {}, []
    for path in checkpoint_files(run):
        try:
            ckpt = read_checkpoint(path)
            ckpt.tensors("")                      # every tensor, not only the header
            steps[path.name] = ckpt.step
        except Exception as e:
            problems.append(f"{path.name} is not a readable checkpoint: {e}")
            continue
        m = STEP_FILE.fullmatch(path.name)
        if m and int(m.group(1)) != ckpt.step:
            problems.append(f"{path.name} holds step {ckpt.step}")
    return steps, problems


def inodes(run: Path) -> dict[str, int]:
    return {p.name: p.stat().st_ino for p in checkpoint_files(run)}


# --- kill -9 during mfp train ----------------------------------------------------------------------------------
# One run folder, killed again and again: each kill's next run (a resume, or a fresh start when no checkpoint
# was written yet) is the next kill's victim, and the last one trains to the end. A kill waits for the
# checkpoint of step `at` - 1 (a new one, for a resumed run), then lands either the moment the next checkpoint's
# temporary file appears ("write": inside a checkpoint write) or after a random pause ("random"; checkpoint
# writes take most of the time here, so these land inside one too, or between two). The random pause is cut
# short by the checkpoint of step `at` appearing: the run then still has steps to go, however fast the machine.
KILL_MOMENTS = [(1, "write"), (6, "random"), (11, "write"), (16, "random")]


def _newest_step_file(names) -> int:
    return max((int(m.group(1)) for n in names if (m := STEP_FILE.fullmatch(n))), default=0)


def _kill_train(cmd, run: Path, at: int, how: str, rng: random.Random) -> None:
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline and at > 1:
            if run.exists() and _newest_step_file(os.listdir(run)) >= at - 1:
                break
            time.sleep(0.002)
        if how == "write":
            while proc.poll() is None and time.monotonic() < deadline:
                if run.exists() and any(map(is_checkpoint_temp, os.listdir(run))):
                    break
        else:
            pause_until = time.monotonic() + rng.uniform(0.0, 0.15)
            while proc.poll() is None and time.monotonic() < pause_until:
                if run.exists() and _newest_step_file(os.listdir(run)) >= at:
                    break
                time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"training ended before the kill (exit {proc.returncode})"


def _started_from(before: dict[str, int], run: Path) -> int:
    """The step a run started from: it rewrote (new inode) every periodic checkpoint after that step."""
    rewritten = [int(m.group(1)) for name, ino in inodes(run).items()
                 if (m := STEP_FILE.fullmatch(name)) and before.get(name) != ino]
    return min(rewritten, default=STEPS + 1) - 1


@pytest.mark.slow
def test_kill_during_training_and_checkpoint_writes_then_resume(store_path, reference, tmp_path):
    rng = random.Random(0)
    run = tmp_path / "run"
    fresh = mfp("train", "--data", store_path, "--out", run, "--ckpt-every", 1, *TRAIN_FLAGS)
    resume = mfp("train", "--data", store_path, "--out", run, "--resume", "--no-progress", "--threads", "1")  # same threads: same sums
    trials, problems, cmd, before = [], [], fresh, {}

    def next_run_started(trial: dict) -> None:  # the run after `trial`'s kill has written checkpoints now
        started = _started_from(before, run)
        trial.update(resumed_from=started, lost_steps=trial["reached"] - started)
        if started != trial["newest_checkpoint"]:
            trial["problems"].append(f"the next run started from step {started}, not from the newest checkpoint "
                                     f"(step {trial['newest_checkpoint']})")
        if trial["lost_steps"] > 1:  # the documented loss: the steps since the last checkpoint (every step here)
            trial["problems"].append(f"{trial['lost_steps']} steps lost")

    for at, how in KILL_MOMENTS:
        newest_before = max(_newest_step_file(os.listdir(run)) if run.exists() else 0, trials[-1]["newest_checkpoint"]
                            if trials else 0)
        _kill_train(cmd, run, max(at, newest_before + 2 if cmd is resume else at), how, rng)  # after a new one
        if trials:
            next_run_started(trials[-1])
        trial = {"kill": f"from step {at}, {how}", "run": "fresh" if cmd is fresh else "resumed", "problems": []}
        left = temp_files(run)
        steps, read_problems = check_checkpoints(run)
        trial["problems"] += read_problems
        newest = max(steps.values(), default=0)
        in_flight = [s for s in map(step_in_temp_file, left) if s is not None]
        trial.update(inside_a_write=bool(left), newest_checkpoint=newest, reached=max([newest, *in_flight]))
        if steps and steps.get("last.safetensors") != newest:
            trial["problems"].append(f"last.safetensors holds step {steps.get('last.safetensors')}, older than the "
                                     f"newest checkpoint on disk (step {newest})")
        if "last.safetensors" in steps:
            cmd = resume
        else:  # killed inside the first checkpoint write: --resume says there is nothing, a fresh start works
            cmd = fresh
            r = subprocess.run(resume, env=ENV, capture_output=True, text=True, timeout=600)
            if r.returncode != 2 or "nothing to resume" not in r.stderr or "Traceback" in r.stderr:
                trial["problems"].append(f"--resume without a checkpoint: exit {r.returncode}, {r.stderr[-500:]!r}")
        before = inodes(run)
        trials.append(trial)

    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    if r.returncode != 0 or f"to step {STEPS}" not in r.stdout:
        problems.append(f"the last run failed: exit {r.returncode}: {r.stderr[-1500:]}")
    next_run_started(trials[-1])
    final_steps, final_problems = check_checkpoints(run)
    problems += final_problems
    periodic = {int(m.group(1)) for name in final_steps if (m := STEP_FILE.fullmatch(name))}
    # allowed gaps: a kill after last.safetensors of a step and before its periodic file
    if final_steps.get("last.safetensors") != STEPS or not (
            set(range(1, STEPS + 1)) - periodic <= {t["newest_checkpoint"] for t in trials}):
        problems.append(f"checkpoints after the runs: {sorted(final_steps.items())}")
    if temp_files(run):  # every temporary file a kill left was cleared by the runs after it
        problems.append(f"temporary files left after the last run: {[p.name for p in temp_files(run)]}")
    finished = not problems and same_weights(weights(run / "last.safetensors"), reference)
    if not problems and not finished:
        problems.append("after the kills and resumes, the final weights differ from an uninterrupted run's")
    for i, trial in enumerate(trials):
        trial["survived"] = finished and not trial["problems"]
        problems += [f"kill {i} ({trial['kill']}): {p}" for p in trial["problems"]]

    record_figures("kill -9 during mfp train (checkpoint every step)", {
        "trials": len(trials), "survived": sum(t["survived"] for t in trials),
        "data_lost": sum(max(0, t["lost_steps"] - 1) for t in trials), "unit": "optimiser steps",
        "documented_interval": "the steps since the last checkpoint (--ckpt-every 1: at most 1)",
        "killed_inside_a_checkpoint_write": sum(t["inside_a_write"] for t in trials), "trials_detail": trials})
    assert not problems, "\n".join(problems)


# --- disk full while writing a checkpoint ------------------------------------------------------------------------
def _file_size_limit(n_bytes: int):
    def limit():  # in the child, before exec: the limit and the ignored SIGXFSZ survive exec
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, n_bytes))
    return limit


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_disk_full_while_writing_a_checkpoint(store_path, reference, tmp_path):
    run = tmp_path / "run"
    last = run / "last.safetensors"
    cmd = mfp("train", "--data", store_path, "--out", run, "--ckpt-every", 1, *TRAIN_FLAGS)
    # A run stopped with Ctrl-C after its first checkpoint: the disk fills up while it is stopped. The run is
    # frozen (SIGSTOP) the moment its first checkpoint is seen, so Ctrl-C lands before it can train to the end
    # however slowly this process is scheduled; a checkpoint every step keeps it from racing ahead meanwhile.
    # A shell job started with `&` (nohup, a CI runner's background step) passes SIGINT on ignored, and Python then
    # never turns Ctrl-C into KeyboardInterrupt: the child gets the default disposition back, as a terminal has it.
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        proc.send_signal(signal.SIGSTOP)
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "mfp: interrupted" in err and "Traceback" not in err, err[-2000:]
    size, digest, step = last.stat().st_size, sha256(last), read_checkpoint(last).step
    assert 0 < step < STEPS and not temp_files(run)

    trials, problems = [], []
    resume = mfp("train", "--data", store_path, "--out", run, "--resume", "--no-progress", "--threads", "1")  # same threads: same sums
    for limit in (size // 2, 64 * 1024):  # the disk fills up in the middle of the data / of the header
        r = subprocess.run(resume, env=ENV, capture_output=True, text=True, timeout=600,
                           preexec_fn=_file_size_limit(limit))
        lines = r.stderr.strip().splitlines()
        message = lines[-1] if lines else ""
        bad = []
        # One line: "mfp train: error: cannot write <path>: file too large (...) (EFBIG); the previous file ..."
        if (r.returncode != 2 or "Traceback" in r.stderr
                or sum(line.startswith("mfp train: error") for line in lines) != 1
                or not message.startswith(f"mfp train: error: cannot write {last}: file too large")
                or "EFBIG" not in message or "previous file is unchanged" not in message):
            bad.append(f"exit {r.returncode}, stderr: {r.stderr[-3000:]}")
        intact = sha256(last) == digest                     # the previous checkpoint, byte for byte
        if not intact:
            bad.append(f"{last} changed")
        _, read_problems = check_checkpoints(run)          # and every checkpoint file reads back whole
        bad += read_problems
        if temp_files(run):                                 # no temporary file beside it
            bad.append(f"temporary files left: {[p.name for p in temp_files(run)]}")
        trials.append({"limit_bytes": limit, "exit": r.returncode, "message": message, "problems": bad,
                       "lost_steps": 0 if intact else step})
        problems += [f"limit {limit} bytes: {p}" for p in bad]

    # Room again: the run resumes from the intact checkpoint and ends as if nothing had happened.
    r = subprocess.run(resume, env=ENV, capture_output=True, text=True, timeout=600)
    if r.returncode != 0 or f"to step {STEPS}" not in r.stdout:
        problems.append(f"the run after the disk-full failures failed: exit {r.returncode}: {r.stderr[-3000:]}")
    elif not same_weights(weights(last), reference):
        problems.append("after the disk-full failures, the resumed run's final weights differ from an "
                        "uninterrupted run's")
    record_trials("disk full while writing a checkpoint (EFBIG from a file size limit)", trials, problems,
                  lost="lost_steps", unit="optimiser steps",
                  interval="the steps since the last checkpoint (the failed write's)")


# --- kill -9 during mfp control --record -------------------------------------------------------------------------
CONTROL = ["control", "--robot", "sim", "--expert", "--task", "metaworld/reach", "--rate", "20", "--max-steps", "40"]


def _committed(path: Path, default: int) -> int:
    try:
        with warnings.catch_warnings():  # read while an episode is being committed: warns, fine
            warnings.simplefilter("ignore")
            return DemoStore.open(path).n_episodes
    except Exception:  # not created yet
        return default


def _kill_control(path: Path, base: int, rng: random.Random) -> int:
    """`mfp control --episodes 3 --record path` killed in its second episode (a random moment after the first was
    committed, cut short by the second's commit: then at the start of the third, so the run is always still going,
    however fast the machine); the episodes it had committed."""
    proc = subprocess.Popen(mfp(*CONTROL, "--episodes", 3, "--record", path), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    committed = base
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline and committed < base + 1:
            committed = _committed(path, committed)
            time.sleep(0.05)
        pause_until = time.monotonic() + rng.uniform(0.2, 1.5)
        while proc.poll() is None and time.monotonic() < pause_until and committed < base + 2:
            committed = _committed(path, committed)
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"control ended before the kill (exit {proc.returncode})"
    return committed - base


def _check_store(path: Path, expected: list[dict], problems: list[str]) -> list[dict]:
    """The store opens and holds `expected` (the episodes committed before) unchanged; its episodes."""
    store = DemoStore.open(path)
    episodes = [store.get_episode(i) for i in range(store.n_episodes)]
    if len(episodes) < len(expected):
        problems.append(f"{len(episodes)} episodes, {len(expected)} were committed before")
    for k, ep in enumerate(episodes):
        if not (len(ep["action"]) == len(ep["state"]) == len(ep["point_cloud"]) > 0
                and ep["point_cloud"].shape[1:] == (512, 3) and np.isfinite(ep["action"]).all()):
            problems.append(f"episode {k} is damaged: { {key: v.shape for key, v in ep.items()} }")
        if k < len(expected) and not all(np.array_equal(ep[key], expected[k][key], equal_nan=True) for key in ep):
            problems.append(f"episode {k} changed")
    return episodes


@pytest.mark.slow
def test_kill_during_control_recording_keeps_committed_episodes_and_appends(tmp_path):
    """Two kills in the second episode of `mfp control --record` (the second run appends to the first's store),
    then a run that appends one more episode."""
    rng = random.Random(1)
    path = tmp_path / "control.zarr"
    trials, problems, episodes = [], [], []
    for i in range(2):
        bad: list[str] = []
        committed = _kill_control(path, len(episodes), rng)
        before = len(episodes)
        episodes = _check_store(path, episodes, bad)
        added = len(episodes) - before
        if not committed <= added < 3:  # every episode committed before the kill is kept; the kill came before the 3rd
            bad.append(f"run {i} added {added} episodes; it had committed {committed} before the kill")
        trials.append({"committed_before_kill": committed, "episodes_after_kill": added, "problems": bad,
                       "lost_committed": max(0, committed - added)})
        problems += [f"kill {i}: {p}" for p in bad]

    r = subprocess.run(mfp(*CONTROL, "--episodes", 1, "--record", path), env=ENV, capture_output=True, text=True,
                       timeout=300)
    if r.returncode != 0:
        problems.append(f"appending failed: exit {r.returncode}: {r.stderr[-1500:]}")
    n = len(episodes)
    after = _check_store(path, episodes, problems)
    if len(after) != n + 1:
        problems.append(f"{len(after)} episodes after appending one to {n}")
    runs = DemoStore.open(path).attrs.get("control_runs", [])
    if not runs or runs[-1].get("episode") != n or (
            len(after) > n and runs[-1].get("steps") != len(after[n]["action"])):
        problems.append(f"the appended run's report does not name episode {n}: {runs[-1:]}")
    if list(path.rglob("*.partial")):
        problems.append(f"temporary files left in the store: {list(path.rglob('*.partial'))}")
    record_trials("kill -9 during mfp control --record (second episode)", trials, problems,
                  lost="lost_committed", unit="episodes", interval="the episode in progress")


def test_failed_write_keeps_the_old_file_and_names_it(tmp_path):
    """Fast: atomic_write_bytes under a file size limit (EFBIG), in a child; and what stale-file cleanup removes."""
    target = tmp_path / "last.safetensors"
    target.write_bytes(b"old")
    code = ("import sys\nfrom mfp.demos.atomic import atomic_write_bytes\n"
            "try:\n    atomic_write_bytes(sys.argv[1], b'x' * 100000)\n"
            "except OSError as e:\n    print(type(e).__name__, e.errno, e.filename, e, sep='|')\n")
    r = subprocess.run([sys.executable, "-c", code, str(target)], env=ENV, capture_output=True, text=True,
                       timeout=120, preexec_fn=_file_size_limit(50000))
    name, code_, filename, message = r.stdout.strip().split("|")
    assert (name, int(code_), filename) == ("AtomicWriteError", 27, str(target)), r.stdout + r.stderr
    assert message.startswith(f"cannot write {target}: file too large") and "EFBIG" in message
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["last.safetensors"]

    from mfp.demos.atomic import remove_stale_temp_files
    from mfp.policies.training.checkpoint import _CHECKPOINT_NAMES, write_checkpoint

    stale = [".last.safetensors.ab_cd123.partial", ".step_00000007.safetensors.x1y2z3w4.partial",
             ".last.safetensors.0123456789abcdef.partial"]
    kept = [".config.json.abcdefgh.partial", ".last.safetensors.bak.abcdefgh.partial", ".0.1c2d.partial",
            "step_00000007.safetensors"]
    for n in stale + kept:
        (tmp_path / n).write_bytes(b"x")
    write_checkpoint([tmp_path / "step_00000008.safetensors", tmp_path / "last.safetensors"], b"new")
    assert remove_stale_temp_files(tmp_path, _CHECKPOINT_NAMES) == []
    written = ["last.safetensors", "step_00000008.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + written)
    assert all((tmp_path / n).read_bytes() == b"new" for n in written)


def test_ctrl_c_at_any_line_of_an_atomic_write_leaves_the_old_or_new_file_and_no_temporary_file(tmp_path):
    """KeyboardInterrupt raised at the k-th executed Python line of atomic_write_bytes (its callees included:
    the temporary name, the open, the write, the rename), for every k until the write runs to its end."""
    from mfp.demos.atomic import atomic_write_bytes

    target = tmp_path / "last.safetensors"
    k, interrupted = 1, 0
    while True:
        target.write_bytes(b"old")
        lines = 0

        def interrupt_at_line_k(frame, event, arg):
            nonlocal lines
            if event == "line":
                lines += 1
                if lines == k:
                    raise KeyboardInterrupt
            return interrupt_at_line_k

        sys.settrace(interrupt_at_line_k)
        try:
            atomic_write_bytes(target, b"new")
            finished = True
        except KeyboardInterrupt:
            finished = False
        finally:
            sys.settrace(None)
        assert os.listdir(tmp_path) == ["last.safetensors"], f"interrupted at line {k}: {os.listdir(tmp_path)}"
        assert target.read_bytes() in (b"old", b"new")
        if finished:
            break
        interrupted += 1
        k += 1
    assert target.read_bytes() == b"new" and interrupted >= 10   # the interrupts did land inside the write
