"""`mfp bench latency`: observation -> action latency at batch 1, per head, UNet preset and runtime.

One timed call = what a controller does each time the policy runs: the newest 128x128 depth image -> point
cloud (mfp.envs.depth_to_point_cloud: crop on the depth image, back-projection of what passes, farthest-point
sampling with fpsample), stacked with the previous frame's cloud into (1, 2, N, 3) + agent_pos (1, 2, d) ->
policy.predict_action -> actions. Reported per call: preprocessing, policy, and total, as p50 / p99 over `calls`
calls after `warmup`. The depth image is rendered by the task's camera (a real scene), the normaliser is fitted on
its cloud; weights are random (latency does not depend on them).

With the per-frame feature cache (torch eager rows, field "cached"): what a controller's PolicyRunner does at a
tick that starts a chunk. The newest frame is encoded when observed (`encode_ms`, paid at every tick), and the
network call at the chunk boundary runs the head alone on the cached features of the last frames
(`boundary_call_ms`, PolicyRunner.predict_chunk); `total_ms` is preprocessing + encode + boundary call, and
`speedup_p50` the uncached row's p50s over the cached ones (policy over encode + boundary call, total over total),
measured on the same policy with uncached and cached calls taking turns (the load of other processes falls on both).

Runtimes ("variant" in the rows): on the CPU torch eager, ONNX Runtime ("onnxruntime": the policy exported in
memory by mfp.policies.export, run by OnnxPolicy with as many intra-op threads as the row's torch threads; heads
that cannot be exported, DP3, get a row saying so) and, on request, torch.compile (about a minute of compilation
per head on the development CPU, so off by default, and the table says so). On CUDA: torch.cuda.synchronize()
before each clock read, and eager, torch.compile, torch.compile with CUDA graphs (mode "reduce-overhead").
MeanFlow's speed-up over DP3-DDIM10 is the ratio of p50s measured in the same run, per runtime: against DP3 in the
same runtime where it runs there, else against DP3 in torch eager (`dp3_variant` says which). The JSON records
the CPU (torch's capability string, whether it computes in bfloat16 natively: precision.cpu_info). Prints a
table, saves JSON with provenance.
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import torch

from mfp.demos.provenance import provenance
from mfp.eval.bench.save import save_and_print
from mfp.eval.bench.untrained import untrained_policy
from mfp.eval.sim.rollout import PolicyRunner, caches_features
from mfp.policies.heads import head_names
from mfp.policies.training.precision import INFERENCE_THREADS, cpu_info

TARGETS = {"meanflow_over_dp3_min": 8.0, "meanflow_total_ms_max": 5.0}


def rendered_depth(task: str = "metaworld/reach", seed: int = 0):
    """(depth (H, W), CameraModel, PointCloudConfig, agent_dim) from the task's camera after a reset."""
    from mfp.envs import make_env

    env = make_env(task)
    try:
        env.reset(seed=seed)
        depth = np.array(env.camera.render_depth(), copy=True)
        return depth, env.camera.camera_model(), env.pc_config, int(np.asarray(env.agent_pos()).shape[-1])
    finally:
        env.close()


def _stats(ms: np.ndarray) -> dict[str, float]:
    return {"p50": round(float(np.percentile(ms, 50)), 3), "p99": round(float(np.percentile(ms, 99)), 3),
            "mean": round(float(ms.mean()), 3)}


def _nfe(policy) -> int:
    cfg = policy.config
    if cfg.head == "dp3":
        return int(cfg.head_cfg.num_inference_steps)
    return int(cfg.head_cfg.sample_steps)


def _time_runs(runs: dict[str, list], device: str, calls: int, warmup: int) -> dict[str, dict]:
    """Times `calls` calls after `warmup` of each run {run: [(stage, fn)]}: a call runs the stages in order, each fn
    given the previous stage's output (None for the first). The runs take turns within every call, in alternating
    order, so load from other processes that changes during the benchmark falls on them alike. Returns
    {run: {"STAGE_ms": stats per stage, "total_ms": stats of the whole call}}."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times = {run: {name: [] for name, _ in stages} | {"total": []} for run, stages in runs.items()}
    order = list(runs)
    for i in range(warmup + calls):
        for run in (order if i % 2 == 0 else order[::-1]):
            out = None
            sync()
            t_start = t = time.perf_counter()
            for name, fn in runs[run]:
                out = fn(out)
                sync()
                now = time.perf_counter()
                if i >= warmup:
                    times[run][name].append(now - t)
                t = now
            if i >= warmup:
                times[run]["total"].append(t - t_start)
    return {run: {f"{name}_ms": _stats(1000 * np.asarray(v)) for name, v in stage_times.items()}
            for run, stage_times in times.items()}


def _uncached_stages(act, depth, camera, pc_config, agent_dim: int, device: str) -> list:
    """The newest cloud stacked with the previous one (preprocess), the network call on both frames (policy)."""
    from mfp.envs import depth_to_point_cloud

    frames = [depth_to_point_cloud(depth, camera, pc_config)]               # the previous frame's cloud
    pos = np.zeros((2, agent_dim), dtype=np.float32)

    def preprocess(_):
        cloud = depth_to_point_cloud(depth, camera, pc_config)
        pc = torch.from_numpy(np.stack([frames[-1], cloud]))[None].to(device)   # (1, 2, N, 3)
        frames[-1] = cloud
        return pc, torch.from_numpy(pos)[None].to(device)                   # (1, 2, d)

    def policy(inputs):
        return act(*inputs).cpu()                                           # the controller needs it on the host

    return [("preprocess", preprocess), ("policy", policy)]


def _cached_stages(policy, depth, camera, pc_config, agent_dim: int, device: str) -> list:
    """With the feature cache, a tick that starts a chunk: the newest cloud (preprocess), a PolicyRunner observing
    it (encode: that frame alone) and predicting a chunk from the cached features (boundary_call: the head alone)."""
    from mfp.envs import depth_to_point_cloud

    runner = PolicyRunner(policy, device)
    runner.reset(seed=0)
    pos = np.zeros(agent_dim, dtype=np.float32)
    runner.observe({"point_cloud": depth_to_point_cloud(depth, camera, pc_config), "agent_pos": pos})  # a previous
    return [("preprocess", lambda _: {"point_cloud": depth_to_point_cloud(depth, camera, pc_config),
                                      "agent_pos": pos}),
            ("encode", runner.observe),
            ("boundary_call", lambda _: runner.predict_chunk())]


def _cache_speedup(policy_ms: dict, total_ms: dict, cached: dict) -> dict[str, float]:
    """The uncached p50s over the cached ones: the boundary call alone, the network work of a tick that starts a
    chunk (policy over encode + boundary call) and observation -> action (total over total)."""
    work = cached["encode_ms"]["p50"] + cached["boundary_call_ms"]["p50"]
    return {"boundary_call": round(policy_ms["p50"] / cached["boundary_call_ms"]["p50"], 2),
            "policy_over_encode_and_boundary_call": round(policy_ms["p50"] / work, 2),
            "total": round(total_ms["p50"] / cached["total_ms"]["p50"], 2)}


ONNX = "onnxruntime"


def _variants(device: str, compile_cuda: bool, compile_cpu: bool, onnx: bool = True) -> list[str]:
    if device == "cpu":
        return ["eager"] + (["compile"] if compile_cpu else []) + ([ONNX] if onnx else [])
    return ["eager", "compile", "compile+cudagraphs"] if compile_cuda else ["eager"]


def _actor(policy, variant: str, threads: int):
    """act(point_cloud, agent_pos) -> actions for the variant (runtime) of the row."""
    if variant == ONNX:
        from mfp.policies.export import OnnxPolicy, onnx_bytes

        policy = OnnxPolicy.from_bytes(onnx_bytes(policy), f"untrained {policy.config.head}", threads=threads)

    def act(pc, ap):
        return policy.predict_action({"point_cloud": pc, "agent_pos": ap})["action"]

    if variant in ("eager", ONNX):
        return act
    mode = "reduce-overhead" if variant == "compile+cudagraphs" else "default"
    return torch.compile(act, mode=mode)


def _not_run_reason(head: str, variant: str) -> str | None:
    """Why a head does not run in a variant (DP3's scheduler cannot be exported), else None."""
    if variant != ONNX:
        return None
    from mfp.policies import PolicyConfig
    from mfp.policies.export import ExportError
    from mfp.policies.export.graph import check_exportable

    try:
        check_exportable(PolicyConfig(head=head))
    except ExportError as e:
        return str(e).split(";")[0]
    return None


def bench_latency(heads=None, presets=("small",), calls: int = 200, warmup: int = 20, task: str = "metaworld/reach",
                  devices=None, compile_cuda: bool = True, compile_cpu: bool = False, threads=(INFERENCE_THREADS,),
                  out="runs/bench/latency.json", verbose: bool = True, onnx: bool = True) -> dict:
    """threads: torch CPU thread counts to time on CPU (an int, a sequence, or None for torch's current setting);
    CUDA runs use the first. Batch-1 inference is per-op overhead bound: one thread avoids OpenMP hand-offs.
    onnx: also time ONNX Runtime on the CPU; compile_cpu: also time torch.compile on the CPU (slow to compile)."""
    from mfp.envs import depth_to_point_cloud

    if calls < 1 or warmup < 0:
        raise ValueError(f"bench latency needs calls >= 1 and warmup >= 0, got {calls}, {warmup}")
    heads = tuple(heads) if heads else head_names()
    if threads is None:
        threads = [torch.get_num_threads()]
    threads = [threads] if isinstance(threads, int) else list(threads)
    devices = list(devices) if devices else (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    if "cuda" in devices and not torch.cuda.is_available():
        raise RuntimeError("devices include cuda, but this torch build sees no CUDA GPU")
    depth, camera, pc_config, agent_dim = rendered_depth(task)
    cloud = depth_to_point_cloud(depth, camera, pc_config)

    # Preprocessing alone (numpy + fpsample on the host; the same for every head, device and runtime).
    pre = []
    for i in range(warmup + calls):
        t0 = time.perf_counter()
        depth_to_point_cloud(depth, camera, pc_config)
        if i >= warmup:
            pre.append(1000 * (time.perf_counter() - t0))
    preprocess = _stats(np.asarray(pre))

    rows, threads_before = [], torch.get_num_threads()
    configs = [(d, v, t) for d in devices for v in _variants(d, compile_cuda, compile_cpu, onnx)
               for t in (threads if d == "cpu" else threads[:1])]
    skipped = [] if compile_cpu or "cpu" not in devices else [
        "torch.compile on the CPU: not timed (about a minute of compilation per head here; --cpu-compile times it)"]
    if verbose:
        for line in skipped:
            print(line, flush=True)
    try:
        for (device, variant, n_threads), preset, head in itertools.product(configs, presets, heads):
            torch.set_num_threads(n_threads)
            row = {"device": device, "variant": variant, "threads": n_threads, "preset": preset, "head": head}
            reason = _not_run_reason(head, variant)
            if reason:
                rows.append({**row, "skipped": reason})
                if verbose:
                    print(_row_line(rows[-1]), flush=True)
                continue
            policy = untrained_policy(head, preset, pc_config.num_points, agent_dim, cloud, device)
            row.update(nfe=_nfe(policy), params=sum(p.numel() for p in policy.parameters()))
            try:
                scene = (depth, camera, pc_config, agent_dim, device)
                runs = {"uncached": _uncached_stages(_actor(policy, variant, n_threads), *scene)}
                if variant == "eager" and caches_features(policy):
                    runs["cached"] = _cached_stages(policy, *scene)
                with torch.inference_mode():
                    timed = _time_runs(runs, device, calls, warmup)
                row.update(timed["uncached"])
                if "cached" in timed:
                    cached = timed["cached"]
                    row["cached"] = {**cached, "speedup_p50": _cache_speedup(row["policy_ms"], row["total_ms"], cached)}
            except Exception as e:  # a compile failure of one variant must not hide the others
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            rows.append(row)
            if verbose:
                print(_row_line(row), flush=True)
    finally:
        torch.set_num_threads(threads_before)

    speedups = _speedups(rows, configs, presets)
    result = {
        "what": "observation -> action latency at batch 1, preprocessing of a rendered depth image included; "
                "'cached': with the per-frame feature cache (encode per tick, head alone at a chunk boundary)",
        "settings": {"task": task, "depth_shape": list(depth.shape), "n_points": pc_config.num_points,
                     "calls": calls, "warmup": warmup, "presets": list(presets), "heads": list(heads),
                     "devices": devices, "threads": threads, "variants": [c[1] for c in configs],
                     "not_timed": skipped, "cpu": cpu_info().to_dict(),
                     "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "preprocess_ms": preprocess, "rows": rows, "meanflow_speedup_over_dp3": speedups, "targets": TARGETS,
        "provenance": provenance(),
    }
    cpu_small = min((s for s in speedups if s["device"] == "cpu" and s["preset"] == "small"),
                    key=lambda s: s["meanflow_total_ms_p50"], default=None)
    if cpu_small:                                       # the best CPU setting measured
        result["meets_with"] = {k: cpu_small[k] for k in ("variant", "threads")}
        result["meets"] = {"cpu_small_speedup_ge_8": cpu_small["policy_p50"] >= TARGETS["meanflow_over_dp3_min"],
                           "cpu_small_meanflow_total_lt_5ms":
                               cpu_small["meanflow_total_ms_p50"] < TARGETS["meanflow_total_ms_max"]}
    return save_and_print(result, out, format_table(result) if verbose else None, verbose)


def _timed(rows, device, variant, n_threads, preset) -> dict:
    """{head: row} of the rows timed (no error, not skipped) in this configuration."""
    return {r["head"]: r for r in rows if "policy_ms" in r and
            (r["device"], r["variant"], r["threads"], r["preset"]) == (device, variant, n_threads, preset)}


def _speedups(rows, configs, presets) -> list[dict]:
    """MeanFlow's speed-up over DP3-DDIM10 per configuration (runtime included): against DP3 in the same runtime
    when it ran there, else against DP3 in torch eager on the same device, threads and preset."""
    speedups = []
    for (device, variant, n_threads), preset in itertools.product(configs, presets):
        mf = _timed(rows, device, variant, n_threads, preset).get("meanflow")
        dp3_variant = variant if "dp3" in _timed(rows, device, variant, n_threads, preset) else "eager"
        dp = _timed(rows, device, dp3_variant, n_threads, preset).get("dp3")
        if mf and dp:
            speedups.append({"device": device, "variant": variant, "threads": n_threads, "preset": preset,
                             "dp3_variant": dp3_variant,
                             "policy_p50": round(dp["policy_ms"]["p50"] / mf["policy_ms"]["p50"], 2),
                             "total_p50": round(dp["total_ms"]["p50"] / mf["total_ms"]["p50"], 2),
                             "meanflow_total_ms_p50": mf["total_ms"]["p50"]})
    return speedups


def _row_line(r: dict) -> str:
    where = f"{r['device']:5} {r['variant']:19} {r['threads']:>3} {r['preset']:6} {r['head']:14}"
    if "error" in r:
        return f"{where} error: {r['error']}"
    if "skipped" in r:
        return f"{where} not run: {r['skipped']}"
    line = (f"{where} {r['nfe']:>4} "
            f"{r['policy_ms']['p50']:>9.2f} {r['policy_ms']['p99']:>9.2f} {r['total_ms']['p50']:>9.2f} "
            f"{r['total_ms']['p99']:>9.2f}")
    return line + (_cached_line(r) if "cached" in r else "")


def _cached_line(r: dict) -> str:
    """The row's feature-cache figures, on a line below it."""
    c, x = r["cached"], r["cached"]["speedup_p50"]
    return (f"\n{'':5} {'  + feature cache':19} encode/tick p50 {c['encode_ms']['p50']:.2f} p99 "
            f"{c['encode_ms']['p99']:.2f}, boundary call p50 {c['boundary_call_ms']['p50']:.2f} p99 "
            f"{c['boundary_call_ms']['p99']:.2f}, total p50 {c['total_ms']['p50']:.2f} p99 {c['total_ms']['p99']:.2f}"
            f" (uncached/cached: boundary call {x['boundary_call']}x, encode + call "
            f"{x['policy_over_encode_and_boundary_call']}x, total {x['total']}x)")


def format_table(result: dict) -> str:
    p = result["preprocess_ms"]
    cpu = result["settings"].get("cpu") or {}
    lines = [f"CPU: torch capability {cpu.get('cpu_capability')}, native bf16 {cpu.get('bf16_native')}",
             f"preprocessing (depth {result['settings']['depth_shape']} -> {result['settings']['n_points']} points): "
             f"p50 {p['p50']:.2f} ms, p99 {p['p99']:.2f} ms",
             f"{'dev':5} {'variant':19} {'thr':>3} {'preset':6} {'head':14} {'NFE':>4} {'policy p50':>9} {'p99':>9} "
             f"{'total p50':>9} {'p99':>9}   (ms)"]
    lines += [_row_line(r) for r in result["rows"]]
    lines += result["settings"].get("not_timed", [])
    for s in result["meanflow_speedup_over_dp3"]:
        against = "" if s.get("dp3_variant", s["variant"]) == s["variant"] else f" (DP3 in {s['dp3_variant']})"
        lines.append(f"MeanFlow speed-up over DP3-DDIM10{against} ({s['device']}, {s['variant']}, {s['threads']} "
                     f"threads, {s['preset']}): "
                     f"policy {s['policy_p50']}x, with preprocessing {s['total_p50']}x; "
                     f"MeanFlow total p50 {s['meanflow_total_ms_p50']} ms")
    return "\n".join(lines)
