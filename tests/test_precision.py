"""Precision and threads (policies/training/precision.py): `--amp auto` picks bf16 only where the CPU computes it
natively, a training step really runs in the chosen dtype, the choice and its reason land in the checkpoint and
survive a resume, a forced bf16 on a CPU without it warns; the thread rule, and that train / eval / suite apply it.
CPU capabilities are injected (real flag sets as /proc/cpuinfo lists them), so both branches run on any machine."""

from __future__ import annotations

import argparse
import json
import os
import warnings

import pytest
import torch
from torch import nn

from mfp.policies import PolicyConfig
from mfp.policies.training import TrainConfig, read_checkpoint, train
from mfp.policies.training import precision
from mfp.policies.training.precision import (INFERENCE_THREADS, PrecisionWarning, available_cores, cpu_info,
                                             default_threads, read_cpu_flags, resolve_amp)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Flags of real CPUs, as /proc/cpuinfo lists them (abridged to the relevant ones).
AVX2_LAPTOP = {"fpu", "sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"}                      # no native bf16
COOPER_LAKE = AVX2_LAPTOP | {"avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16"}
SAPPHIRE_RAPIDS = COOPER_LAKE | {"amx_tile", "amx_int8", "amx_bf16"}
SKYLAKE_X = AVX2_LAPTOP | {"avx512f", "avx512bw", "avx512vl", "avx512dq"}                 # AVX-512, no bf16

NO_BF16 = cpu_info(capability="AVX2", flags=AVX2_LAPTOP)
BF16 = cpu_info(capability="AVX512", flags=COOPER_LAKE)


# --- detection -----------------------------------------------------------------------------------------------
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    assert not cpu_info("AVX2", AVX2_LAPTOP).bf16_native
    assert not cpu_info("AVX512", SKYLAKE_X).bf16_native                # AVX-512 alone emulates bf16
    assert cpu_info("AVX512", COOPER_LAKE).bf16_native
    assert cpu_info("AVX512", SAPPHIRE_RAPIDS).bf16_native
    assert "no native bfloat16" in NO_BF16.reason and "AVX2" in NO_BF16.reason
    assert "AVX-512 BF16" in BF16.reason and BF16.to_dict()["cpu_capability"] == "AVX512"
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu avx2 fma avx512_bf16\n\n")
    assert read_cpu_flags(str(cpuinfo)) == {"fpu", "avx2", "fma", "avx512_bf16"}
    assert read_cpu_flags(str(tmp_path / "missing")) is None
    unknown = precision._decide("DEFAULT", None, "nowhere")               # no flags readable: never native
    assert unknown.bf16_native is False and "not known to be native" in unknown.reason
    here = cpu_info()                                                     # this machine: torch's own probe
    assert here.cpu_capability == torch.backends.cpu.get_cpu_capability()
    assert here.bf16_native == bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def test_auto_resolves_by_capability_and_forced_bf16_warns():
    assert resolve_amp("auto", "cpu", cpu=NO_BF16).amp == "none"
    assert resolve_amp("auto", "cpu", cpu=BF16).amp == "bf16"
    assert resolve_amp("auto", "cuda", cuda_bf16=True).amp == "bf16"
    assert resolve_amp("auto", "cuda", cuda_bf16=False).amp == "none"
    with pytest.warns(PrecisionWarning, match="will be slow"):
        forced = resolve_amp("bf16", "cpu", cpu=NO_BF16)
    assert forced.amp == "bf16" and not forced.bf16_native
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                    # no warning where bf16 is native
        assert resolve_amp("bf16", "cpu", cpu=BF16).amp == "bf16"
        assert resolve_amp("none", "cpu", cpu=NO_BF16).amp == "none"
    with pytest.raises(ValueError, match="amp must be one of"):
        resolve_amp("fp16", "cpu", cpu=BF16)


# --- training runs in the resolved dtype, and records it ----------------------------------------------------
N_POINTS = 32


@pytest.fixture(scope="module")
def store_path(tmp_path_factory, synthetic_store):
    return synthetic_store(tmp_path_factory.mktemp("data") / "synthetic.zarr", n_eps=3, T=12, n_points=N_POINTS,
                           attrs={"task": "synthetic/line", "point_cloud": {"num_points": N_POINTS}})


def tiny() -> PolicyConfig:
    return PolicyConfig(head="meanflow", n_points=N_POINTS, unet={"preset": "tiny"})


def quick(**kw) -> TrainConfig:
    return TrainConfig(**{**dict(steps=2, batch_size=4, val_every=0, ckpt_every=1, log_every=1, warmup_steps=0,
                                 val_ratio=0.0), **kw})


@pytest.fixture
def step_dtypes(monkeypatch):
    """The dtypes of every Conv1d / Linear output inside the training steps (forward hooks set per step)."""
    from mfp.policies.training import trainer

    seen: list[torch.dtype] = []
    forward = trainer._LossModule.forward

    def recording_forward(self, batch):
        hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
                 for m in self.policy.modules() if isinstance(m, (nn.Conv1d, nn.Linear))]
        try:
            return forward(self, batch)
        finally:
            for h in hooks:
                h.remove()

    monkeypatch.setattr(trainer._LossModule, "forward", recording_forward)
    return seen


def on_cpu(monkeypatch, info):
    """Make this machine's CPU probe report `info` (what train() and the commands consult)."""
    monkeypatch.setattr(precision, "_this_cpu", lambda: info)


@pytest.mark.parametrize("cpu,amp,dtype", [(NO_BF16, "none", torch.float32), (BF16, "bf16", torch.bfloat16)])
def test_auto_trains_in_the_native_dtype_and_saves_the_choice(store_path, tmp_path, monkeypatch, step_dtypes, capsys,
                                                              cpu, amp, dtype):
    on_cpu(monkeypatch, cpu)
    train(store_path, tiny(), quick(amp="auto", device="cpu"), tmp_path / "run", progress=False)
    # the networks ran in that dtype (under bf16 the MeanFlow JVP alone stays float32, by design)
    assert (torch.bfloat16 in step_dtypes) == (dtype == torch.bfloat16) and torch.float32 in step_dtypes
    saved = read_checkpoint(tmp_path / "run").train_config
    assert saved.amp == amp and saved.amp_reason.startswith("auto: ") and cpu.reason in saved.amp_reason
    on_disk = json.loads((tmp_path / "run" / "config.json").read_text())["train_config"]
    assert (on_disk["amp"], on_disk["amp_reason"]) == (amp, saved.amp_reason)
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("precision:")]
    assert len(printed) == 1 and cpu.reason in printed[0]                 # said once, with the reason


def test_a_resumed_run_keeps_its_precision_on_another_cpu(store_path, tmp_path, monkeypatch, step_dtypes):
    on_cpu(monkeypatch, NO_BF16)

    def interrupt_at_2(policy, step):
        if step == 2:
            raise KeyboardInterrupt
        return {}

    with pytest.raises(KeyboardInterrupt):
        train(store_path, tiny(), quick(steps=4, amp="auto", device="cpu"), tmp_path / "run", eval_fn=interrupt_at_2,
              eval_every=1, progress=False)
    started = read_checkpoint(tmp_path / "run").train_config
    assert started.amp == "none"
    on_cpu(monkeypatch, BF16)                                             # resumed on a bf16 machine
    step_dtypes.clear()
    result = train(store_path, tiny(), quick(steps=4, amp="auto", device="cpu"), tmp_path / "run", resume=True,
                   progress=False)
    assert result["step"] == 4 and step_dtypes and set(step_dtypes) == {torch.float32}
    resumed = read_checkpoint(tmp_path / "run").train_config
    assert (resumed.amp, resumed.amp_reason) == ("none", started.amp_reason)


def test_forced_bf16_training_warns_on_a_cpu_without_it(store_path, tmp_path, monkeypatch, step_dtypes):
    on_cpu(monkeypatch, NO_BF16)
    with pytest.warns(PrecisionWarning, match="will be slow"):
        train(store_path, tiny(), quick(amp="bf16", device="cpu"), tmp_path / "run", progress=False)
    assert torch.bfloat16 in step_dtypes                                  # still runs what was asked for
    assert read_checkpoint(tmp_path / "run").train_config.amp == "bf16"


def test_checkpoints_from_before_auto_still_load():
    old = {k: v for k, v in TrainConfig(amp="bf16").to_dict().items() if k != "amp_reason"}
    assert TrainConfig.from_dict(old).amp == "bf16" and TrainConfig.from_dict(old).amp_reason == ""


# --- threads --------------------------------------------------------------------------------------------------
def test_thread_rule_from_affinity_workers_and_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "load_at_start", lambda: 0.0)               # an idle machine
    four = {0, 1, 2, 3}
    assert default_threads(affinity=four) == 4
    assert default_threads(workers_beside=1, affinity=four) == 3
    assert default_threads(workers_beside=8, affinity=four) == 1                # never below one
    assert default_threads(peers=2, affinity=four) == 2                         # two DDP ranks share the cores
    assert default_threads(affinity=four, cpu_limit=2) == 2                     # a cgroup quota (docker --cpus 2)
    assert default_threads(affinity={5}) == 1
    with pytest.raises(ValueError):
        default_threads(workers_beside=-1)
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")
    assert precision._cgroup_cpu_limit(str(quota)) == 2
    quota.write_text("max 100000\n")
    assert precision._cgroup_cpu_limit(str(quota)) is None
    import os

    assert available_cores() <= len(os.sched_getaffinity(0))


def test_thread_rule_lowers_the_count_by_the_load_of_other_processes():
    two, four = {0, 1}, {0, 1, 2, 3}
    # idle (the load of a quiet machine, below half a core): every usable core
    assert default_threads(affinity=two, load=0.0) == 2
    assert default_threads(affinity=two, load=0.4) == 2
    assert default_threads(affinity=four, load=0.3) == 4
    # busy: threads + other load <= usable cores, the free cores rounded to the nearest whole core
    assert default_threads(affinity=two, load=0.6) == 1
    assert default_threads(affinity=two, load=1.8) == 1
    assert default_threads(affinity=four, load=1.0) == 3
    assert default_threads(affinity=four, load=1.6) == 2
    assert default_threads(affinity=four, load=2.4) == 2                        # 1.6 free rounds to 2
    # never below one, however busy
    assert default_threads(affinity=two, load=5.9) == 1
    assert default_threads(affinity=four, load=40.0, workers_beside=3) == 1
    # workers beside it are still subtracted, from the cores the load leaves free
    assert default_threads(affinity=four, load=0.0, workers_beside=1) == 3
    assert default_threads(affinity=four, load=1.0, workers_beside=1) == 2
    assert default_threads(affinity=four, load=2.0, workers_beside=1) == 1
    # peers share what the load leaves: 4 cores, load 2, two ranks -> 1 each
    assert default_threads(affinity=four, load=2.0, peers=2) == 1
    assert default_threads(affinity=four, load=0.0, peers=2) == 2
    # the load never raises the count above the cores / workers rule
    assert default_threads(affinity=four, cpu_limit=2, load=0.0) == 2
    # a container (2 usable cores) on a 64-CPU host whose load average is 30: 34 CPUs are free, so both cores
    assert default_threads(affinity=two, load=30.0, machine_cpus=64) == 2
    assert default_threads(affinity=two, load=63.0, machine_cpus=64) == 1
    # unknown load (no os.getloadavg; a negative value): the cores / workers rule alone
    assert default_threads(affinity=four, load=-1.0, workers_beside=1) == 3


def test_thread_reason_says_when_the_load_lowered_the_count(monkeypatch):
    busy = precision.thread_choice(affinity={0, 1}, load=1.8)
    assert busy.threads == 1 and busy.lowered_by_load and busy.load == 1.8 and busy.free_cores == 0.2
    assert "1 torch thread (default: 2 cores usable, load 1.8 from other processes" in busy.reason
    idle = precision.thread_choice(affinity={0, 1}, load=0.1)
    assert idle.threads == 2 and not idle.lowered_by_load
    assert "2 torch threads (default: the 2 cores this process may use; load 0.1" in idle.reason
    assert "load" not in precision.thread_choice(affinity={0}, load=-1).reason.split(";")[0]
    assert precision.thread_choice(affinity={0}, load=-1).load is None
    # threads_reason (what train / suite print) reads the same start-time load as default_threads
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(precision, "_cgroup_cpu_limit", lambda path="": None)
    monkeypatch.setattr(precision, "load_at_start", lambda: 1.8)
    assert default_threads() == 1
    assert "load 1.8 from other processes" in precision.threads_reason(1)
    assert precision.threads_reason(2, given=True) == "threads: 2 torch threads (--threads)"


def test_the_load_is_read_once_per_process(monkeypatch):
    loads = iter([(0.2, 0.0, 0.0), (7.0, 0.0, 0.0)])
    monkeypatch.setattr(os, "getloadavg", lambda: next(loads))
    precision.load_at_start.cache_clear()
    try:
        assert precision.load_at_start() == 0.2
        assert precision.load_at_start() == 0.2       # later reads would count this process's own threads
    finally:
        precision.load_at_start.cache_clear()
    monkeypatch.setattr(os, "getloadavg", lambda: (_ for _ in ()).throw(OSError("no load average")))
    try:
        assert precision.load_at_start() is None
    finally:
        precision.load_at_start.cache_clear()


def _train_threads_seen(monkeypatch, store_path, tmp_path, cases) -> list[int]:
    """Run `mfp train`'s handler (training itself faked) with each case's extra flags and assert the torch thread
    count training would run with; returns the counts seen, in order."""
    import mfp.policies.training as training
    from mfp.eval.cli.train import train_parser

    seen = []

    def fake_train(*args, **kw):
        seen.append(torch.get_num_threads())
        return {"step": 0, "train_loss": None, "val_loss": None, "val_loss_ema": None, "nonfinite_steps": 0,
                "last_checkpoint": "-", "world_size": 1}

    monkeypatch.setattr(training, "train", fake_train)
    parser = argparse.ArgumentParser()
    train_parser(parser.add_subparsers())
    base = ["train", "--data", str(store_path), "--out", str(tmp_path / "r"), "--no-progress"]
    for extra, expected in cases:
        args = parser.parse_args(base + extra)
        args.run(args)
        assert seen[-1] == expected, extra
    return seen


def test_an_explicit_thread_count_wins_over_the_load(store_path, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(precision, "_cgroup_cpu_limit", lambda path="": None)
    monkeypatch.setattr(precision, "load_at_start", lambda: 2.0)              # other jobs take two cores
    _train_threads_seen(monkeypatch, store_path, tmp_path, (([], 2), (["--threads", "3"], 3)))
    out = capsys.readouterr().out
    assert "threads: 2 torch threads (default: 4 cores usable, load 2.0 from other processes" in out
    assert "threads: 3 torch threads (--threads)" in out


@pytest.fixture
def three_cores(monkeypatch):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    monkeypatch.setattr(precision, "_cgroup_cpu_limit", lambda path="": None)
    monkeypatch.setattr(precision, "load_at_start", lambda: 0.0)               # idle: the load lowers nothing


def test_evaluating_in_this_process_uses_the_worker_thread_rule(monkeypatch):
    from mfp.eval.sim import evaluator

    seen = []
    run = evaluator.EpisodeWorker.run

    def recording_run(self, seed):
        seen.append(torch.get_num_threads())
        return run(self, seed)

    monkeypatch.setattr(evaluator.EpisodeWorker, "run", recording_run)
    torch.set_num_threads(2)                              # what the caller had (e.g. training); restored by fixture
    evaluator.evaluate(None, "metaworld/reach", [0], progress=False, workers=1)
    assert seen == [INFERENCE_THREADS] and torch.get_num_threads() == 2    # restored afterwards
    evaluator.evaluate(None, "metaworld/reach", [1], progress=False, workers=1, threads=2)
    assert seen[-1] == 2


def test_mfp_train_applies_the_thread_rule(store_path, tmp_path, monkeypatch, three_cores, capsys):
    _train_threads_seen(monkeypatch, store_path, tmp_path,
                        (([], 3), (["--num-workers", "1"], 2), (["--threads", "1"], 1)))
    assert "threads: 2 torch threads (default: the 3 cores this process may use less 1 worker process" in \
        capsys.readouterr().out


def test_the_suite_trains_with_the_default_threads_and_records_the_resolved_precision(monkeypatch, three_cores):
    from mfp.eval.suite import runner as suite

    seen = []
    monkeypatch.setattr(suite, "_run_jobs", lambda cfg, progress, log: seen.append(torch.get_num_threads()))
    torch.set_num_threads(1)
    suite.run_suite(suite.SuiteConfig(tasks=("metaworld/reach",)), progress=False, log=lambda *a: None)
    assert seen == [3] and torch.get_num_threads() == 1
    on_cpu(monkeypatch, NO_BF16)
    assert suite.SuiteConfig(tasks=("metaworld/reach",)).budget()["amp"] == "none"
    on_cpu(monkeypatch, BF16)                # same key as results recorded with --amp bf16 on such a machine
    assert suite.SuiteConfig(tasks=("metaworld/reach",)).budget()["amp"] == "bf16"


def test_every_command_documents_threads_and_amp():
    from mfp.eval.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    bench = next(a for a in sub.choices["bench"]._actions if isinstance(a, argparse._SubParsersAction))
    commands = {"train": sub.choices["train"], "eval": sub.choices["eval"], "bench suite": bench.choices["suite"],
                "bench train": bench.choices["train"], "bench latency": bench.choices["latency"]}
    for name, p in commands.items():
        flags = {o: a for a in p._actions for o in a.option_strings}
        assert "--threads" in flags and "default" in flags["--threads"].help, name
    for name in ("train", "bench suite"):
        amp = next(a for a in commands[name]._actions if "--amp" in a.option_strings)
        assert "auto" in amp.choices and "default: auto" in amp.help, name


# --- benchmarks record the CPU ---------------------------------------------------------------------------------
def test_bench_train_records_the_cpu_and_times_precisions_and_threads_together(tmp_path):
    from mfp.eval.bench.train import bench_train

    bench_train(heads=("meanflow",), preset="tiny", batch_size=4, n_points=16, steps=2, warmup=0,
                amps=("none", "bf16"), threads=(1, 2), out=tmp_path / "t.json", verbose=False)
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["cpu"] == cpu_info().to_dict()
    assert sorted((r["amp"], r["threads"]) for r in saved["rows"]) == [("bf16", 1), ("bf16", 2), ("none", 1),
                                                                        ("none", 2)]
    assert set(saved["bf16_speedup"]) == {"meanflow, 1 threads", "meanflow, 2 threads"}
    assert set(saved["thread_ratio"]) == {"none, meanflow: 1 threads over 2", "bf16, meanflow: 1 threads over 2"}


def test_bench_latency_records_the_cpu(tmp_path):
    from mfp.eval.bench.latency import bench_latency

    bench_latency(heads=("meanflow",), presets=("tiny",), calls=2, warmup=0, devices=("cpu",),
                  out=tmp_path / "lat.json", verbose=False)
    saved = json.loads((tmp_path / "lat.json").read_text())
    assert saved["settings"]["cpu"] == cpu_info().to_dict() and saved["settings"]["threads"] == [INFERENCE_THREADS]


@pytest.mark.slow
def test_two_runs_at_once_are_timed_against_one_alone():
    from mfp.eval.bench.train import concurrent_cost

    res = concurrent_cost("meanflow", "tiny", batch_size=4, n_points=16, steps=2, warmup=0, thread_counts=(1, 2),
                          rounds=1, verbose=False)
    assert [r["threads"] for r in res["rows"]] == [1, 2]
    for r in res["rows"]:
        assert len(r["concurrent_step_ms_median_per_process"]) == 2 and r["alone_step_ms_median"] > 0
        assert r["slowdown"] == pytest.approx(r["concurrent_step_ms_median"] / r["alone_step_ms_median"], rel=0.02)
    assert "threads_1_over_2_concurrent" in res
