"""The benchmark suite: a results file that survives crashes, a suite that resumes without redoing or losing a job,
and a report whose figures are the results' means and spreads."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from mfp.eval.suite.results_file import ResultsFile
from mfp.eval.suite.runner import SuiteConfig, run_suite
from mfp.eval.suite.report import render_markdown


def test_results_file_skips_a_line_cut_by_a_crash_and_keeps_appending(tmp_path):
    results = ResultsFile(tmp_path / "r.jsonl")
    results.append({"a": 1})
    with open(results.path, "ab") as f:
        f.write(b'{"a": 2, "cut sho')  # a writer killed mid-line
    with pytest.warns(UserWarning, match="line 2 is not valid JSON"):
        assert results.rows() == [{"a": 1}]
    results.append({"a": 3})
    with pytest.warns(UserWarning):
        assert results.rows() == [{"a": 1}, {"a": 3}]


def _row(task, head, seed, rate, group="easy", kind="policy", ms=5.0):
    budget = {"steps": 10, "batch_size": 4, "preset": "tiny", "amp": "none", "demos": 2, "eval_episodes": 20}
    return {"kind": kind, "task": task, "group": group, "head": head, "seed": seed, "success_rate": rate,
            "budget": budget if kind == "policy" else {"eval_episodes": 20}, "inference_ms_p50": ms}


def test_report_shows_means_spreads_expert_and_labelled_published_numbers():
    rows = [_row("metaworld/reach", "meanflow", 0, 0.5), _row("metaworld/reach", "meanflow", 1, 1.0),
            _row("metaworld/reach", "dp3", 0, 0.25, ms=40.0), _row("metaworld/reach", "dp3", 1, 0.25, ms=42.0),
            _row("metaworld/reach", None, None, 0.95, kind="expert"),
            # a task only one head has finished: listed, but kept out of the averages
            _row("metaworld/hammer", "meanflow", 0, 0.0, group="medium")]
    md = render_markdown(rows)
    lines = md.splitlines()
    reach = next(line for line in lines if line.startswith("| metaworld/reach"))
    assert reach == "| metaworld/reach | easy | 95 | 75 ± 25 (2) | 25 ± 0 (2) |"
    hammer = next(line for line in lines if line.startswith("| metaworld/hammer"))
    assert hammer == "| metaworld/hammer | medium | – | 0 (1) | – |"
    suite_avg = next(line for line in lines if line.startswith("| **suite average**"))
    assert suite_avg == "| **suite average** | 1 tasks | 95 | 75 ± 25 (2) | 25 ± 0 (2) |"
    assert not any(line.startswith("| **medium average**") for line in lines)
    assert "| inference ms p50 (batch 1, this machine) | | | 5.0 | 41.0 |" in lines
    assert "**not our measurements**" in md and "| MP1 (MeanFlow 1 step) | 100 | 69 | 58 |" in md


def test_report_reads_rows_written_before_the_kind_field_as_policy_rows():
    rows = [_row("metaworld/reach", "meanflow", 0, 0.5), _row("metaworld/reach", None, None, 0.95, kind="expert")]
    legacy = {k: v for k, v in _row("metaworld/reach", "meanflow", 1, 1.0).items() if k != "kind"}
    reach = next(line for line in render_markdown(rows + [legacy]).splitlines()
                 if line.startswith("| metaworld/reach"))
    assert reach == "| metaworld/reach | easy | 95 | 75 ± 25 (2) |"


def test_report_columns_put_plain_heads_in_registry_order_then_variants_alphabetically():
    heads = ["mf-z", "dp3", "mf-a", "meanflow"]
    header = [line for line in render_markdown([_row("metaworld/reach", h, 0, 0.5) for h in heads]).splitlines()
              if line.startswith("| task")][0]
    again = [line for line in render_markdown([_row("metaworld/reach", h, 0, 0.5) for h in reversed(heads)])
             .splitlines() if line.startswith("| task")][0]
    assert header == again
    order = [header.index(h) for h in ("| MeanFlow 1-NFE |", "| DP3 DDIM-10 |", "| mf-a |", "| mf-z |")]
    assert order == sorted(order)


@pytest.mark.slow
def test_suite_killed_mid_run_resumes_without_redoing_or_losing_jobs(reach_demos, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    shutil.copytree(reach_demos, data_dir / "metaworld_reach.zarr")
    results = tmp_path / "results.jsonl"
    args = ["--tasks", "metaworld/reach", "--heads", "meanflow,dp3", "--seeds", "0", "--budget", "2",
            "--batch-size", "4", "--preset", "tiny", "--amp", "none", "--demos", "2", "--eval-episodes", "1",
            "--videos", "0", "--data-dir", str(data_dir), "--runs-dir", str(tmp_path / "runs"),
            "--results", str(results), "--no-progress", "--no-report", "--threads", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "mfp.eval.cli", "bench", "suite", *args],
                            env={**os.environ, "MUJOCO_GL": "egl"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while len(ResultsFile(results).rows()) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # no chance to clean up
    finally:
        proc.wait()
    before = ResultsFile(results).rows()
    assert len(before) >= 2, "the suite should have finished the expert and the first head before the kill"

    cfg = SuiteConfig(tasks=("metaworld/reach",), heads=("meanflow", "dp3"), seeds=(0,), steps=2, batch_size=4,
                      preset="tiny", amp="none", demos=2, eval_episodes=1, videos=0, threads=1,
                      data_dir=str(data_dir), runs_dir=str(tmp_path / "runs"), results=str(results))
    report = run_suite(cfg, progress=False, log=lambda *a: None)
    after = ResultsFile(results).rows()
    names = ["metaworld/reach expert", "metaworld/reach meanflow seed 0", "metaworld/reach dp3 seed 0"]
    assert report.skipped == names[:len(before)]           # nothing finished is redone
    assert len(report.done) == 3 - len(before)
    assert after[:len(before)] == before                    # nothing written is lost or rewritten
    assert sorted((r["kind"], r["head"]) for r in after) == [("expert", None), ("policy", "dp3"),
                                                              ("policy", "meanflow")]
    assert all(r["episodes"][0][0] >= 1_000_000 for r in after if r["kind"] == "policy")
