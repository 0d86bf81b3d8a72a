"""Training: the loss goes down, checkpoints round-trip and resume exactly, bad inputs and bad checkpoints are
refused with clear errors, non-finite losses stop training without harming earlier checkpoints, `mfp train`
documents its flags, the benchmarks run, two DDP processes agree."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from mfp.demos.store import DemoStore
from mfp.policies import PolicyConfig
from mfp.policies.training import (CheckpointError, NonFiniteLossError, TrainConfig, load_policy, read_checkpoint,
                                   train)

N_POINTS = 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store_path(tmp_path_factory, synthetic_store):
    return synthetic_store(tmp_path_factory.mktemp("data") / "synthetic.zarr", n_points=N_POINTS)


def tiny(head: str = "meanflow", **kw) -> PolicyConfig:
    kw.setdefault("unet", {"preset": "tiny"})
    return PolicyConfig(head=head, n_points=N_POINTS, **kw)


def quick(**kw) -> TrainConfig:
    base = dict(steps=4, batch_size=8, val_every=0, ckpt_every=2, log_every=1, warmup_steps=0, val_ratio=0.25)
    base.update(kw)
    return TrainConfig(**base)


def obs_of(store_path, n: int = 2):
    store = DemoStore.open(store_path)
    pc = torch.as_tensor(np.asarray(store.read("point_cloud"))[:n])[None]
    pos = torch.as_tensor(np.asarray(store.read("state"))[:n])[None]
    return {"point_cloud": pc, "agent_pos": pos}


def params_of(policy) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in policy.named_parameters()}


# --- learning ----------------------------------------------------------------------------------------------
def test_loss_decreases_on_recorded_reach_demos(reach_demos, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = PolicyConfig.mp1(unet={"preset": "tiny"})           # MeanFlow + dispersive 0.5, 512 real points
    result = train(reach_demos, cfg, TrainConfig(steps=30, batch_size=16, lr=1e-3, val_every=30, ckpt_every=100,
                                                 log_every=1, val_ratio=0.34), tmp_path / "run", progress=False)
    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/flow_loss", "train/dispersive", "lr", "val/loss", "val/loss_ema"} <= tags
    loss = np.array([e.value for e in events.Scalars("train/loss")])
    assert len(loss) == 30 and np.isfinite(loss).all()
    assert loss[-10:].mean() < 0.8 * loss[:5].mean(), loss.round(2)
    assert np.isfinite(result["val_loss"]) and result["nonfinite_steps"] == 0
    lr = [e.value for e in events.Scalars("lr")]
    assert lr[2] > lr[0] and lr[-1] < max(lr)                 # warm-up (clamped to 3 steps), then cosine decay


# --- checkpoints -------------------------------------------------------------------------------------------
def test_checkpoint_round_trip_gives_identical_actions(store_path, tmp_path):
    result = train(store_path, tiny("meanflow"), quick(), tmp_path / "run", progress=False)
    obs = obs_of(store_path)
    for use_ema, trained in ((True, result["ema_policy"]), (False, result["policy"])):
        loaded = load_policy(tmp_path / "run" / "last.safetensors", use_ema=use_ema)
        a = trained.eval().predict_action(obs, generator=torch.Generator().manual_seed(3))["action"]
        b = loaded.predict_action(obs, generator=torch.Generator().manual_seed(3))["action"]
        assert torch.equal(a, b)
    assert not torch.equal(params_of(result["ema_policy"])["net.final.1.weight"],
                           params_of(result["policy"])["net.final.1.weight"])       # EMA weights are their own
    info = load_policy(tmp_path / "run").checkpoint_info
    assert info["step"] == 4 and info["weights"] == "ema"
    assert info["data"]["point_cloud"] == {"num_points": N_POINTS, "crop_low": [-1, -1, -1]}   # from the dataset
    assert info["data"]["task"] == "synthetic/line" and len(info["data"]["fingerprint"]) == 64
    assert sorted(p.name for p in (tmp_path / "run").glob("*.safetensors")) == [
        "last.safetensors", "step_00000002.safetensors", "step_00000004.safetensors"]


def test_resume_after_interruption_continues_the_same_trajectory(store_path, tmp_path):
    cfg = tiny("meanflow", dispersive={"weight": 0.5})
    tc = quick(steps=8, ckpt_every=3, warmup_steps=2)       # 48 windows / batch 8: an epoch is 6 steps
    straight = train(store_path, cfg, tc, tmp_path / "a", progress=False)

    def interrupt_at_7(policy, step):
        if step == 7:
            raise KeyboardInterrupt                            # Ctrl-C between checkpoints
        return {"score": float(step)}

    with pytest.raises(KeyboardInterrupt):
        train(store_path, cfg, tc, tmp_path / "b", eval_fn=interrupt_at_7, eval_every=1, progress=False)
    ckpt = read_checkpoint(tmp_path / "b")
    assert (ckpt.step, ckpt.meta["epoch"], ckpt.meta["batch_in_epoch"]) == (6, 0, 6)   # resumes at an epoch's end
    resumed = train(store_path, cfg, tc, tmp_path / "b", resume=True, progress=False)
    assert resumed["step"] == 8
    for key in ("policy", "ema_policy"):
        a, b = params_of(straight[key]), params_of(resumed[key])
        assert all(torch.equal(a[k], b[k]) for k in a), f"{key} differs after resume"
    # the eval hook's results up to the checkpoint survive the interruption (and never moved the RNGs)
    assert [e["step"] for e in json.loads((tmp_path / "b" / "eval.json").read_text())] == [1, 2, 3, 4, 5, 6]
    assert [e["step"] for e in resumed["eval"]] == [1, 2, 3, 4, 5, 6]


def test_bad_checkpoints_and_mismatched_resumes_are_refused(store_path, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    run = tmp_path / "run"
    same = dict(steps=2, lr=2e-4)  # explicit lr: the message below must not depend on TrainConfig's default
    train(store_path, tiny("meanflow"), quick(**same), run, progress=False)
    last = run / "last.safetensors"

    with pytest.raises(CheckpointError, match="head 'meanflow'.*'flowpolicy'"):
        train(store_path, tiny("flowpolicy"), quick(**same), run, resume=True, progress=False)
    with pytest.raises(CheckpointError, match="unet.down_dims"):
        train(store_path, tiny("meanflow", unet={"preset": "tiny", "down_dims": (16, 32)}), quick(**same), run,
              resume=True, progress=False)
    with pytest.raises(CheckpointError, match="lr: checkpoint 0.0002 vs asked 0.001"):
        train(store_path, tiny("meanflow"), quick(steps=2, lr=1e-3), run, resume=True, progress=False)
    with pytest.raises(FileExistsError, match="already holds a training run"):
        train(store_path, tiny("meanflow"), quick(steps=2), run, progress=False)

    # another format version
    with safe_open(str(last), "pt") as f:
        header, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(tmp_path / "v2.safetensors"), metadata={**header, "format_version": "2"})
    with pytest.raises(CheckpointError, match="format version 2, this code reads version 1"):
        load_policy(tmp_path / "v2.safetensors")
    # truncated
    (tmp_path / "cut.safetensors").write_bytes(last.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_policy(tmp_path / "cut.safetensors")
    # not a checkpoint: a pickle, a text file, a safetensors file from elsewhere
    torch.save({"a": torch.zeros(2)}, tmp_path / "pickle.pt")
    (tmp_path / "notes.txt").write_text("hello " * 100)
    save_file({"w": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    for name in ("pickle.pt", "notes.txt", "other.safetensors"):
        with pytest.raises(CheckpointError, match="not an mfp checkpoint"):
            load_policy(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        load_policy(tmp_path / "missing.safetensors")
    load_policy(last)                                         # the original is untouched and loads


def test_dataset_config_shape_mismatch_names_both(tmp_path, synthetic_store):
    path = synthetic_store(tmp_path / "d.zarr", n_eps=2, n_points=48, action_dim=3)
    with pytest.raises(ValueError) as err:
        train(path, tiny("dp3"), quick(), tmp_path / "run", progress=False)
    msg = str(err.value)
    assert "point_cloud (48, 3) vs n_points=64" in msg and "action (3,) vs action_dim=4" in msg
    assert "agent_pos" not in msg.split("(dataset per step")[0]          # only the wrong ones are listed first
    assert not (tmp_path / "run" / "last.safetensors").exists()


def test_nonfinite_losses_are_skipped_then_stop_training(store_path, tmp_path, monkeypatch):
    from mfp.policies.policy import PointCloudPolicy

    original = PointCloudPolicy.compute_loss
    calls = {"n": 0, "bad": set()}

    def flaky(self, batch):
        loss, logs = original(self, batch)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] in calls["bad"] else loss), logs

    monkeypatch.setattr(PointCloudPolicy, "compute_loss", flaky)
    calls["bad"] = {2}                                        # one bad step: skipped, counted, training goes on
    result = train(store_path, tiny("flowpolicy"), quick(steps=4), tmp_path / "ok", progress=False)
    assert result["step"] == 4 and result["nonfinite_steps"] == 1

    calls["n"], calls["bad"] = 0, set(range(4, 100))          # from step 4 on, every loss is NaN
    with pytest.raises(NonFiniteLossError, match="stopped at step 6: 3 consecutive steps with a non-finite loss"):
        train(store_path, tiny("flowpolicy"), quick(steps=10, max_nonfinite_steps=3), tmp_path / "bad",
              progress=False)
    ckpt = read_checkpoint(tmp_path / "bad")
    assert ckpt.step == 4
    policy = load_policy(tmp_path / "bad")
    assert all(torch.isfinite(p).all() for p in policy.parameters())
    at2 = load_policy(tmp_path / "bad" / "step_00000002.safetensors", use_ema=False)
    at4 = load_policy(tmp_path / "bad" / "step_00000004.safetensors", use_ema=False)
    p2, p4 = params_of(at2), params_of(at4)
    assert any(not torch.equal(p2[k], p4[k]) for k in p2)     # step 3 was a real update
    assert ckpt.meta["nonfinite_streak"] == 1                  # step 4 was skipped


def _matmul_dtypes_during_training(store_path, run_dir, amp: str, monkeypatch) -> tuple[list, list]:
    """Train guided MeanFlow for 2 steps with `amp`; every Linear / Conv1d output dtype seen, (inside the JVP?,
    module class, dtype), and the dtypes of the JVP's results (u, du/dt)."""
    import warnings

    from mfp.policies import meanflow

    seen, jvp_out, depth = [], [], [0]
    original = meanflow.jvp_dudt

    def counting_jvp(*args, **kwargs):
        depth[0] += 1
        try:
            u, dudt, aux = original(*args, **kwargs)
        finally:
            depth[0] -= 1
        jvp_out.append((u.dtype, dudt.dtype))
        return u, dudt, aux

    def record(module, inputs, output):
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d)):
            seen.append((depth[0] > 0, type(module).__name__, output.dtype))

    monkeypatch.setattr(meanflow, "jvp_dudt", counting_jvp)
    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")          # bf16 on a CPU without native bf16 warns that it is slow
            result = train(store_path, tiny("meanflow", head_cfg={"cfg_w": 1.5, "p_uncond": 0.25}),
                           quick(steps=2, amp=amp), run_dir, progress=False)
    finally:
        handle.remove()
    assert result["nonfinite_steps"] == 0 and np.isfinite(result["train_loss"])
    return seen, jvp_out


def test_bf16_autocast_runs_the_networks_in_bf16_and_the_jvp_in_float32(store_path, tmp_path, monkeypatch):
    seen, jvp_out = _matmul_dtypes_during_training(store_path, tmp_path / "run", "bf16", monkeypatch)
    assert read_checkpoint(tmp_path / "run").train_config.amp == "bf16"
    outside = {(name, dtype) for in_jvp, name, dtype in seen if not in_jvp}
    inside = {(name, dtype) for in_jvp, name, dtype in seen if in_jvp}
    # Under the trainer's autocast the encoder's Linears and the UNet's convolutions (the guidance passes
    # u(z, t, t | c) and u(z, t, t | null)) compute in bfloat16 ...
    assert ("Linear", torch.bfloat16) in outside and ("SequenceConv1d", torch.bfloat16) in outside
    # ... while the MeanFlow JVP (the gradient-carrying pass) runs every matmul in float32.
    assert {dtype for _, dtype in inside} == {torch.float32} and ("SequenceConv1d", torch.float32) in inside
    assert jvp_out and set(jvp_out) == {(torch.float32, torch.float32)}
    # Without autocast nothing runs in bfloat16: the bf16 above is the autocast's doing.
    seen32, _ = _matmul_dtypes_during_training(store_path, tmp_path / "run32", "none", monkeypatch)
    assert {dtype for *_, dtype in seen32} == {torch.float32}


def test_train_config_is_validated():
    with pytest.raises(ValueError, match="amp must be one of"):
        TrainConfig(amp="fp16")
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        TrainConfig(batch_size=0)
    assert TrainConfig(steps=200).effective_warmup_steps == 20
    assert TrainConfig(steps=10**5).effective_warmup_steps == 500
    assert TrainConfig.from_dict(TrainConfig(betas=(0.9, 0.99)).to_dict()) == TrainConfig(betas=(0.9, 0.99))


# --- distributed -----------------------------------------------------------------------------------------------
DDP_WORKER = textwrap.dedent("""
    import hashlib, json, os, sys
    import torch
    from mfp.policies import PolicyConfig, build_policy
    from mfp.policies.training import TrainConfig, train

    data, run, out = sys.argv[1:4]
    cfg = PolicyConfig(head="meanflow", n_points=64, unet={"preset": "tiny"}, dispersive={"weight": 0.5})
    torch.manual_seed(0)
    init = build_policy(cfg)
    result = train(data, cfg, TrainConfig(steps=3, batch_size=4, val_every=0, ckpt_every=3, log_every=1,
                                          val_ratio=0.25), run, progress=False)
    params = [p.detach() for p in result["policy"].parameters()]
    digest = hashlib.sha256(b"".join(p.numpy().tobytes() for p in params)).hexdigest()
    moved = any(not torch.equal(a, b.detach()) for a, b in zip(params, init.parameters()))
    rank = os.environ["RANK"]
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump({"digest": digest, "loss": result["train_loss"], "world": result["world_size"], "moved": moved}, f)
""")



def test_two_gloo_ranks_end_with_identical_weights(tmp_path, synthetic_store):
    data = synthetic_store(tmp_path / "d.zarr", n_points=N_POINTS)
    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": "egl"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(script), str(data), str(tmp_path / "run"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["digest"] == r1["digest"]                 # gradients were averaged: the ranks agree
    assert r0["moved"] and r1["moved"]                  # ... after real updates
    assert r0["loss"] != r1["loss"]                     # each rank trained on its own shard
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == ["config.json", "last.safetensors", "result.json", "step_00000003.safetensors", "tb"]


# --- command line --------------------------------------------------------------------------------------------
def _parser():
    from mfp.eval.cli.bench_latency import bench_latency_parser
    from mfp.eval.cli.bench_train import bench_train_parser
    from mfp.eval.cli.train import train_parser

    parser = argparse.ArgumentParser(prog="mfp")
    sub = parser.add_subparsers(dest="command", required=True)
    train_parser(sub)
    bench = sub.add_parser("bench").add_subparsers(dest="bench", required=True)
    bench_train_parser(bench)
    bench_latency_parser(bench)
    return parser, sub


def test_mfp_train_documents_every_flag(capsys):
    parser, sub = _parser()
    for name, p in sub.choices.items():
        subs = [p] if name != "bench" else list(p._subparsers._group_actions[0].choices.values())
        for q in subs:
            for action in q._actions:
                if action.option_strings and action.dest != "help":
                    assert action.help, f"{q.prog} flag {action.option_strings} has no help text"
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--data", "--head", "--preset", "--steps", "--batch-size", "--out", "--resume", "--amp",
                 "--dispersive-weight"):
        assert flag in out
    from mfp.eval.cli import build_parser

    registered = any("train" in (getattr(a, "choices", None) or {}) for a in build_parser()._actions)
    if registered:                                           # once cli.py lists it, the real CLI shows it too
        from mfp.eval.cli import main

        with pytest.raises(SystemExit):
            main(["train", "--help"])
        assert "--dispersive-weight" in capsys.readouterr().out


def test_mfp_train_reads_shapes_from_the_dataset_and_resumes(store_path, tmp_path, capsys):
    parser, _ = _parser()
    out = tmp_path / "run"
    args = parser.parse_args(["train", "--data", str(store_path), "--out", str(out), "--head", "splitmeanflow",
                              "--preset", "tiny", "--steps", "2", "--batch-size", "4", "--val-every", "0",
                              "--ckpt-every", "1", "--keep-checkpoints", "1", "--no-progress"])
    assert args.run(args) == 0
    assert "trained splitmeanflow to step 2" in capsys.readouterr().out
    ckpt = read_checkpoint(out)
    assert ckpt.policy_config.n_points == N_POINTS and ckpt.policy_config.head == "splitmeanflow"
    assert [p.name for p in out.glob("step_*")] == ["step_00000002.safetensors"]      # --keep-checkpoints 1
    args = parser.parse_args(["train", "--data", str(store_path), "--out", str(out), "--resume", "--no-progress"])
    assert args.run(args) == 0                                # the saved settings; already finished: nothing to do
    args = parser.parse_args(["train", "--data", str(store_path), "--out", str(out), "--resume", "--head", "dp3"])
    with pytest.raises(CheckpointError, match="head 'splitmeanflow'"):
        args.run(args)


# --- benchmarks (smoke: they run and report; timings are never asserted) ---------------------------------------
def test_bench_train_reports_ratios(tmp_path):
    from mfp.eval.bench.train import bench_train

    res = bench_train(heads=("meanflow", "flowpolicy", "splitmeanflow"), preset="tiny", batch_size=4, n_points=32,
                      steps=1, warmup=0, amps=("none", "bf16"), out=tmp_path / "train.json", verbose=False)
    saved = json.loads((tmp_path / "train.json").read_text())
    assert set(saved["ratios"]["none"]) >= {"meanflow_over_flowpolicy", "meanflow_over_splitmeanflow"}
    assert len(res["rows"]) == 6 and "provenance" in saved
    assert set(saved["bf16_speedup"]) == {"meanflow", "flowpolicy", "splitmeanflow"}
    assert saved["threads_default"]["threads"] >= 1 and "torch thread" in saved["threads_default"]["reason"]


def test_bench_latency_reports_speedup(tmp_path, monkeypatch):
    from mfp.eval.bench import latency as bench

    counted = {}                                  # head -> backbone forward calls the benchmark really made
    original = bench.untrained_policy

    def counting_policy(head, *args, **kwargs):
        policy = original(head, *args, **kwargs)
        counted[head] = 0
        policy.net.register_forward_pre_hook(lambda module, inputs: counted.__setitem__(head, counted[head] + 1))
        return policy

    monkeypatch.setattr(bench, "untrained_policy", counting_policy)
    res = bench.bench_latency(heads=("meanflow", "dp3"), presets=("tiny",), calls=3, warmup=1, devices=("cpu",),
                              out=tmp_path / "lat.json", verbose=False, onnx=False)
    saved = json.loads((tmp_path / "lat.json").read_text())
    assert saved["settings"]["depth_shape"] == [128, 128] and saved["preprocess_ms"]["p50"] > 0
    assert all("error" not in r for r in saved["rows"])
    # The NFE column is what the timed calls cost: backbone calls over the 1 + 3 calls of each row, timed twice in
    # torch eager: without and with the per-frame feature cache.
    assert {r["head"]: r["nfe"] * (1 + 3) * 2 for r in saved["rows"]} == counted
    assert [r["nfe"] for r in saved["rows"]] == [1, 10]          # one step vs DP3's 10 DDIM steps
    for r in saved["rows"]:
        cached = r["cached"]
        assert all(cached[k]["p50"] > 0 for k in ("preprocess_ms", "encode_ms", "boundary_call_ms", "total_ms"))
        assert set(cached["speedup_p50"]) == {"policy_over_encode_and_boundary_call", "boundary_call", "total"}
    assert res["meanflow_speedup_over_dp3"][0]["policy_p50"] > 0


def test_bench_latency_times_onnx_runtime_beside_torch(tmp_path):
    """The ONNX Runtime rows: MeanFlow timed (exported in memory), DP3 not run with the reason, and MeanFlow's
    speed-up in that runtime measured against DP3 in torch eager."""
    from mfp.eval.bench.latency import ONNX, bench_latency

    res = bench_latency(heads=("meanflow", "dp3"), presets=("tiny",), calls=3, warmup=1, devices=("cpu",),
                        out=tmp_path / "lat.json", verbose=False)
    rows = {(r["variant"], r["head"]): r for r in json.loads((tmp_path / "lat.json").read_text())["rows"]}
    assert set(rows) == {("eager", "meanflow"), ("eager", "dp3"), (ONNX, "meanflow"), (ONNX, "dp3")}
    assert rows[(ONNX, "meanflow")]["policy_ms"]["p50"] > 0 and rows[(ONNX, "meanflow")]["nfe"] == 1
    assert "head 'dp3' cannot be exported" in rows[(ONNX, "dp3")]["skipped"]
    assert "cached" in rows[("eager", "meanflow")] and "cached" not in rows[(ONNX, "meanflow")]   # no feature cache
    speedups = {s["variant"]: s for s in res["meanflow_speedup_over_dp3"]}
    assert speedups[ONNX]["dp3_variant"] == "eager" and speedups[ONNX]["policy_p50"] > 0
    assert speedups["eager"]["dp3_variant"] == "eager"
    assert "torch.compile on the CPU: not timed" in res["settings"]["not_timed"][0]
