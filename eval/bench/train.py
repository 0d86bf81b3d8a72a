"""`mfp bench train`: training step time per head, fp32 and bf16 autocast, and where the time goes.

One step = policy.compute_loss on a synthetic batch (B, H=4, N, 3) point clouds of which the encoder sees the
n_obs_steps = 2 first frames, backward, global-norm clipping, AdamW. Heads are timed in interleaved rounds (one
step of each head per round), so ratios such as MeanFlow / FlowPolicy compare steps taken under the same machine
load; each ratio is the median of the per-round ratios. Also timed in the same rounds: the observation encoder
(forward + backward of policy.encode_obs: its share of a step) and each head's objective through the UNet alone
on a fixed condition (forward + backward: the JVP's cost without the encoder that all heads share).
Random weights: step time does not depend on what the network has learnt. On CPU the table is measured with
heap reuse on, as training runs (policies/training/cpu_memory.py), and the encoder and the first head's step are
also timed with glibc's default allocator in the same rounds (before / after). Several precisions and thread
counts are timed in the same interleaved rounds too (ratios under the same load). The JSON records the CPU
(torch's capability string, whether it computes in bfloat16 natively: precision.cpu_info). `concurrent`: also
what two runs at once cost each other (concurrent_cost). Prints a table, saves JSON.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from mfp.demos.normalizer import MinMaxNormalizer
from mfp.demos.provenance import provenance
from mfp.eval.bench.save import save_and_print
from mfp.policies.config import PolicyConfig
from mfp.policies.heads import head_names
from mfp.policies.training.optim import make_adamw
from mfp.policies.training.precision import (autocast, available_cores, cpu_info, default_threads, resolve_amp,
                                             thread_choice)

TARGETS = {"meanflow_small_b64_step_ms_max": 250.0, "meanflow_over_flowpolicy_max": 2.0}


def synthetic_batch(batch_size: int, n_points: int, horizon: int = 4, agent_dim: int = 9, action_dim: int = 4,
                    seed: int = 0, device: str = "cpu") -> dict:
    """A batch shaped like DemoDataset's: clouds in a table-sized box, smooth-ish actions."""
    g = torch.Generator().manual_seed(seed)
    box_low, box_high = torch.tensor([-0.6, 0.3, 0.0]), torch.tensor([0.6, 1.0, 0.8])
    pc = box_low + (box_high - box_low) * torch.rand(batch_size, horizon, n_points, 3, generator=g)
    batch = {"obs": {"point_cloud": pc, "agent_pos": torch.randn(batch_size, horizon, agent_dim, generator=g) * 0.2},
             "action": torch.tanh(torch.randn(batch_size, horizon, action_dim, generator=g))}
    return {"obs": {k: v.to(device) for k, v in batch["obs"].items()}, "action": batch["action"].to(device)}


def fitted_normalizer(batch: dict) -> MinMaxNormalizer:
    return MinMaxNormalizer().fit({"action": batch["action"].cpu().numpy(),
                                   "agent_pos": batch["obs"]["agent_pos"].cpu().numpy(),
                                   "point_cloud": batch["obs"]["point_cloud"].cpu().numpy().reshape(-1, 3)})


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class _Stepper:
    """One policy + AdamW; `step()` runs and times one training step."""

    def __init__(self, head: str, preset: str, batch: dict, amp: str, dispersive_weight: float, device: str):
        from mfp.policies import PolicyConfig, build_policy

        pc = batch["obs"]["point_cloud"]
        cfg = PolicyConfig(head=head, n_points=pc.shape[2], agent_dim=batch["obs"]["agent_pos"].shape[-1],
                           action_dim=batch["action"].shape[-1], unet={"preset": preset},
                           dispersive={"weight": dispersive_weight})
        torch.manual_seed(0)
        self.policy = build_policy(cfg)
        self.policy.set_normalizer(fitted_normalizer(batch))
        self.policy.to(device).train()
        self.optimizer = make_adamw(self.policy.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6)
        self.batch, self.amp, self.device = batch, amp, device
        self.n_params = sum(p.numel() for p in self.policy.parameters())

    def _autocast(self):
        return autocast(self.device, self.amp)

    def step(self) -> float:
        _sync(self.device)
        t0 = time.perf_counter()
        with self._autocast():
            loss, _ = self.policy.compute_loss(self.batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.policy.parameters(), 1.0)
        self.optimizer.step()
        _sync(self.device)
        return time.perf_counter() - t0

    def head_step(self) -> float:
        """Forward + backward of the head objective through the UNet alone, on a fixed (detached) condition: the
        part of a step that differs between heads (MeanFlow's JVP, FlowPolicy's two passes, ...)."""
        if not hasattr(self, "_head_inputs"):
            with torch.no_grad():
                cond = self.policy.encode_obs(self.batch["obs"])
                x = self.policy.normalizer.normalize("action", self.batch["action"].to(cond.dtype))
            self._head_inputs = (x, cond)
        x, cond = self._head_inputs
        _sync(self.device)
        t0 = time.perf_counter()
        with self._autocast():
            out = self.policy.head.loss(self.policy.net, x, cond)
        out.loss.backward()
        _sync(self.device)
        dt = time.perf_counter() - t0
        self.optimizer.zero_grad(set_to_none=True)
        return dt

    def encoder_step(self) -> float:
        """Forward + backward of the observation encoder alone (as inside a training step)."""
        _sync(self.device)
        t0 = time.perf_counter()
        with self._autocast():
            cond = self.policy.encode_obs(self.batch["obs"])
        cond.float().backward(torch.ones(cond.shape, device=cond.device))
        _sync(self.device)
        dt = time.perf_counter() - t0
        self.optimizer.zero_grad(set_to_none=True)
        return dt


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _thread_list(threads) -> list[int]:
    if threads is None:
        return [default_threads()]
    counts = [threads] if isinstance(threads, int) else list(dict.fromkeys(int(t) for t in threads))
    if not counts or min(counts) < 1:
        raise ValueError(f"bench train needs thread counts >= 1, got {threads!r}")
    return counts


def _amp_list(amps, device: str) -> tuple[list[str], dict]:
    """Resolved precisions ("auto" -> none or bf16 for this device), without repeats, and what each "auto" became."""
    resolved, auto = [], {}
    for amp in amps:
        choice = resolve_amp(amp, device, warn=False)
        if amp == "auto":
            auto = choice.to_dict()
        if choice.amp not in resolved:
            resolved.append(choice.amp)
    return resolved, auto


def bench_train(heads=None, preset: str = "small", batch_size: int = 64, n_points: int = 512, steps: int = 5,
                warmup: int = 2, amps=("none", "bf16"), dispersive_weight: float = 0.0, threads=None,
                device: str = "cpu", out="runs/bench/train.json", verbose: bool = True, concurrent: bool = False,
                concurrent_rounds: int = 2) -> dict:
    """threads: a torch CPU thread count, or several (timed interleaved in the same rounds), or None for
    precision.default_threads(). amps: "none", "bf16", "auto" (resolved for this device). Every (precision, thread
    count) configuration is timed in the same interleaved rounds, so their ratios compare steps under the same
    machine load. concurrent: also measure what two runs at once cost each other (concurrent_cost)."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"bench train needs steps >= 1 and warmup >= 0, got {steps}, {warmup}")
    heads = tuple(heads) if heads else head_names()
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: this torch build sees no CUDA GPU")
    thread_counts = _thread_list(threads)
    amp_list, auto = _amp_list(amps, device)
    load_start = _load_average()
    configs = [(amp, t) for amp in amp_list for t in thread_counts]
    label = _labeller(len(thread_counts) > 1)
    window = PolicyConfig()                    # the policies' execution window: PolicyConfig's defaults
    batch = synthetic_batch(batch_size, n_points, horizon=window.horizon, device=device)
    timing = _time_rounds(heads, preset, batch, amp_list, configs, dispersive_weight, device, steps, warmup)
    rows = [row for c in configs for row in _rows(timing, c, heads, preset, batch_size, n_points)]
    ratios = {label(*c): _meanflow_ratios(timing, c, heads) for c in configs}
    result = {
        "what": "training step (forward + backward + AdamW) per head, synthetic batches, random weights",
        "settings": {"preset": preset, "batch_size": batch_size, "n_points": n_points,
                     "n_obs_steps": window.n_obs_steps, "horizon": window.horizon,
                     "steps": steps, "warmup": warmup, "amps": amp_list, "amp_auto": auto or None,
                     "dispersive_weight": dispersive_weight, "device": device,
                     "torch_threads": thread_counts[0] if len(thread_counts) == 1 else thread_counts,
                     "heap_reuse": timing["alloc_compare"], "interleaved": [label(a, t) for a, t in configs]},
        "cpu": cpu_info().to_dict(), "available_cores": available_cores(),
        "load_average_1min": {"start": load_start, "end": _load_average()},   # other jobs on the machine
        "threads_default": thread_choice().to_dict(),       # what --threads default / mfp train would pick here
        "rows": rows, "ratios": ratios, **_paired_ratios(timing["times"], heads, amp_list, thread_counts, label),
        "allocator": _allocator(timing, configs, heads[0], label), "targets": TARGETS, "provenance": provenance(),
    }
    meets = _meets(rows, ratios, preset, batch_size)
    if meets:
        result["meets"] = meets
    if concurrent:
        result["concurrent"] = concurrent_cost(heads[0], preset, batch_size, n_points, steps, warmup, amp_list[0],
                                               dispersive_weight, device, rounds=concurrent_rounds, verbose=verbose)
    return save_and_print(result, out, format_table(result) if verbose else None, verbose)


def _labeller(multi: bool):
    """How a (precision, thread count) configuration is named in the results: with its threads when several."""
    return lambda amp, t: f"{amp}, {t} threads" if multi else amp


def _ms(x) -> float:
    """Median of seconds, in milliseconds."""
    return 1000 * float(np.median(x))


def _time_rounds(heads, preset: str, batch: dict, amp_list: list[str], configs: list[tuple], dispersive_weight: float,
                 device: str, steps: int, warmup: int) -> dict:
    """Warm up, then time every head's step (and the first head's encoder alone) in `steps` interleaved rounds over
    the configurations: paired measurements under the same machine load. On CPU the first head's step and encoder
    are also timed with glibc's default allocator (training reuses freed heap memory: TrainConfig.reuse_cpu_memory).
    Returns {"times", "head_times", "default_alloc": seconds per config and head, "n_params", "alloc_compare"}."""
    from mfp.policies.training.cpu_memory import reuse_freed_cpu_memory

    alloc_compare = device == "cpu" and reuse_freed_cpu_memory(True)
    first = heads[0]
    threads_before = torch.get_num_threads()
    try:
        steppers = {amp: {h: _Stepper(h, preset, batch, amp, dispersive_weight, device) for h in heads}
                    for amp in amp_list}
        for amp, t in configs:
            torch.set_num_threads(t)
            for s in steppers[amp].values():
                for _ in range(warmup):
                    s.step()
                    s.head_step()
            for _ in range(warmup):
                steppers[amp][first].encoder_step()
        times = {c: {h: [] for h in (*heads, "encoder")} for c in configs}
        head_times = {c: {h: [] for h in heads} for c in configs}
        default_alloc = {c: {"encoder": [], "step": []} for c in configs}
        for _ in range(steps):
            for c in configs:
                amp, t = c
                torch.set_num_threads(t)
                for h, s in steppers[amp].items():
                    times[c][h].append(s.step())
                    head_times[c][h].append(s.head_step())
                enc = steppers[amp][first]
                times[c]["encoder"].append(enc.encoder_step())
                if alloc_compare:              # the same computation with glibc's default allocator
                    reuse_freed_cpu_memory(False)
                    default_alloc[c]["encoder"].append(enc.encoder_step())
                    default_alloc[c]["step"].append(enc.step())
                    reuse_freed_cpu_memory(True)
        n_params = {h: steppers[amp_list[0]][h].n_params for h in heads}
        del steppers
    finally:
        torch.set_num_threads(threads_before)
        if alloc_compare:
            reuse_freed_cpu_memory(False)
    return {"times": times, "head_times": head_times, "default_alloc": default_alloc, "n_params": n_params,
            "alloc_compare": bool(alloc_compare)}


def _rows(timing: dict, config: tuple, heads, preset: str, batch_size: int, n_points: int) -> list[dict]:
    """One results row per head for one (precision, thread count) configuration."""
    amp, t = config
    times, head_times = timing["times"][config], timing["head_times"][config]
    enc_ms = _ms(times["encoder"])
    rows = []
    for h in heads:
        ms = 1000 * np.asarray(times[h])
        rows.append({"amp": amp, "threads": t, "head": h, "preset": preset, "batch_size": batch_size,
                     "n_points": n_points, "params": timing["n_params"][h],
                     "step_ms_median": round(float(np.median(ms)), 1), "step_ms_min": round(float(ms.min()), 1),
                     "samples_per_s": round(batch_size / (float(np.median(ms)) / 1000), 1),
                     "head_unet_ms_median": round(_ms(head_times[h]), 1),
                     "encoder_ms_median": round(enc_ms, 1),
                     "encoder_share": round(enc_ms / float(np.median(ms)), 3)})
    return rows


def _meanflow_ratios(timing: dict, config: tuple, heads) -> dict:
    """MeanFlow's step over each other head's (median over rounds of the paired ratio), whole and head + UNet only."""
    times, head_times = timing["times"][config], timing["head_times"][config]
    r = {}
    for other in ("flowpolicy", "splitmeanflow", "dp3"):
        if "meanflow" in heads and other in heads:
            r[f"meanflow_over_{other}"] = round(float(np.median(np.asarray(times["meanflow"])
                                                                / np.asarray(times[other]))), 2)
            head_only = np.asarray(head_times["meanflow"]) / np.asarray(head_times[other])
            r[f"meanflow_over_{other}_head_unet_only"] = round(float(np.median(head_only)), 2)
    return r


def _paired_ratios(times: dict, heads, amp_list: list[str], thread_counts: list[int], label) -> dict:
    """bf16_speedup: fp32 step over bf16 step; thread_ratio: step at the first thread count over another; both the
    median over rounds of ratios paired per round."""
    def paired(a: tuple, b: tuple, h: str) -> float:
        return round(float(np.median(np.asarray(times[a][h]) / np.asarray(times[b][h]))), 2)

    bf16_speedup = {}
    if "none" in amp_list and "bf16" in amp_list:
        bf16_speedup = {label(h, t): paired(("none", t), ("bf16", t), h)
                        for t in thread_counts for h in heads}
    thread_ratio = {f"{amp}, {h}: {thread_counts[0]} threads over {t}": paired((amp, thread_counts[0]), (amp, t), h)
                    for amp in amp_list for t in thread_counts[1:] for h in heads}
    return {"bf16_speedup": bf16_speedup, "thread_ratio": thread_ratio}


def _allocator(timing: dict, configs: list[tuple], first: str, label) -> dict:
    """On CPU: the first head's step and the encoder with glibc's default allocator against heap reuse."""
    if not timing["alloc_compare"]:
        return {}
    out = {}
    for c in configs:
        default, reuse = timing["default_alloc"][c], timing["times"][c]
        out[label(*c)] = {"encoder_ms_default": round(_ms(default["encoder"]), 1),
                          "encoder_ms_heap_reuse": round(_ms(reuse["encoder"]), 1),
                          f"{first}_step_ms_default": round(_ms(default["step"]), 1),
                          f"{first}_step_ms_heap_reuse": round(_ms(reuse[first]), 1)}
    return out


def _meets(rows: list[dict], ratios: dict, preset: str, batch_size: int) -> dict | None:
    """MeanFlow's figures against TARGETS (None when MeanFlow was not timed)."""
    mf = [x for x in rows if x["head"] == "meanflow"]
    if not mf:
        return None
    best = min(x["step_ms_median"] for x in mf)
    return {"meanflow_step_ms_best": best,
            "meanflow_step_le_250ms": best <= TARGETS["meanflow_small_b64_step_ms_max"]
            if preset == "small" and batch_size == 64 else None,
            "meanflow_le_2x_flowpolicy": {a: r["meanflow_over_flowpolicy"] <= TARGETS["meanflow_over_flowpolicy_max"]
                                          for a, r in ratios.items() if "meanflow_over_flowpolicy" in r}}


# --- two runs at once ------------------------------------------------------------------------------------------
def _concurrent_child(spec: dict, start, finished, n_procs: int, results) -> None:
    """One copy of the step benchmark: warm up, wait for every copy, time `steps` steps, then keep stepping
    (untimed) until every copy has its timings, so that each copy is timed under the others' full load."""
    torch.set_num_threads(spec["threads"])
    from mfp.policies.training.cpu_memory import reuse_freed_cpu_memory

    if spec["device"] == "cpu":
        reuse_freed_cpu_memory(True)
    batch = synthetic_batch(spec["batch_size"], spec["n_points"], device=spec["device"])
    s = _Stepper(spec["head"], spec["preset"], batch, spec["amp"], spec["dispersive_weight"], spec["device"])
    for _ in range(spec["warmup"]):
        s.step()
    start.wait()
    times = [s.step() for _ in range(spec["steps"])]
    with finished.get_lock():
        finished.value += 1
    while finished.value < n_procs:
        s.step()
    results.put(times)


def _run_copies(spec: dict, n_procs: int, timeout_s: float = 1800.0) -> list[list[float]]:
    import multiprocessing as mp
    import queue

    ctx = mp.get_context("spawn")
    start, finished, results = ctx.Barrier(n_procs), ctx.Value("i", 0), ctx.Queue()
    procs = [ctx.Process(target=_concurrent_child, args=(spec, start, finished, n_procs, results), daemon=True)
             for _ in range(n_procs)]
    for p in procs:
        p.start()
    try:
        out = []
        for _ in procs:
            try:
                out.append(results.get(timeout=timeout_s))
            except queue.Empty:
                raise RuntimeError(f"bench train --concurrent: a benchmark process gave no timings within "
                                   f"{timeout_s:.0f} s (exit codes {[p.exitcode for p in procs]})") from None
        return out
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()


def concurrent_cost(head: str = "meanflow", preset: str = "small", batch_size: int = 64, n_points: int = 512,
                    steps: int = 5, warmup: int = 2, amp: str = "none", dispersive_weight: float = 0.0,
                    device: str = "cpu", thread_counts=None, rounds: int = 2, verbose: bool = True) -> dict:
    """What two training runs at once cost each other: the step benchmark of `head` in one process alone, then in
    two processes at once (timed over the same window), for each thread count (default: 1 and
    precision.default_threads(), the two a user chooses between), in `rounds` interleaved rounds (alone, two, per
    count) so that outside load falls on both alike. slowdown = median step of the two at once / median step alone;
    threads_1_over_default_concurrent < 1 means one thread per run is faster when two runs share the machine."""
    if rounds < 1:
        raise ValueError(f"concurrent rounds must be >= 1, got {rounds}")
    counts = list(dict.fromkeys(thread_counts or (1, default_threads())))
    spec = {"head": head, "preset": preset, "batch_size": batch_size, "n_points": n_points, "steps": steps,
            "warmup": warmup, "amp": amp, "dispersive_weight": dispersive_weight, "device": device}
    alone = {t: [] for t in counts}
    pair = {t: [[], []] for t in counts}
    for r in range(rounds):
        for t in counts:
            alone[t] += _run_copies({**spec, "threads": t}, 1)[0]
            a, b = _run_copies({**spec, "threads": t}, 2)
            pair[t][0] += a
            pair[t][1] += b
            if verbose:
                print(f"concurrent round {r + 1}/{rounds}, {t} threads: alone {1000 * np.median(alone[t]):.0f} ms, "
                      f"two at once {1000 * np.median(a):.0f} / {1000 * np.median(b):.0f} ms", flush=True)
    rows = []
    for t in counts:
        both = pair[t][0] + pair[t][1]
        rows.append({"threads": t, "alone_step_ms_median": round(1000 * float(np.median(alone[t])), 1),
                     "concurrent_step_ms_median": round(1000 * float(np.median(both)), 1),
                     "concurrent_step_ms_median_per_process": [round(1000 * float(np.median(x)), 1)
                                                               for x in pair[t]],
                     "slowdown": round(float(np.median(both) / np.median(alone[t])), 2)})
    result = {"what": f"{head} training step ({amp}, {preset}, batch {batch_size}): one process alone vs two "
                      f"processes at once, each with the same thread count; {steps} timed steps per process per "
                      f"round, {rounds} rounds",
              "available_cores": available_cores(), "rows": rows}
    by_t = {row["threads"]: row for row in rows}
    if len(counts) > 1 and 1 in by_t:
        other = next(t for t in counts if t != 1)
        result[f"threads_1_over_{other}_concurrent"] = round(by_t[1]["concurrent_step_ms_median"]
                                                             / by_t[other]["concurrent_step_ms_median"], 2)
        result[f"threads_1_over_{other}_alone"] = round(by_t[1]["alone_step_ms_median"]
                                                        / by_t[other]["alone_step_ms_median"], 2)
    return result


def format_table(result: dict) -> str:
    cpu = result.get("cpu") or {}
    lines = [f"CPU: torch capability {cpu.get('cpu_capability')}, native bf16 {cpu.get('bf16_native')} "
             f"({cpu.get('reason')}); {result.get('available_cores')} cores available; 1-min load average "
             f"{(result.get('load_average_1min') or {}).get('start')} at the start, "
             f"{(result.get('load_average_1min') or {}).get('end')} at the end",
             f"{'amp':5} {'thr':>3} {'head':14} {'params':>9} {'step ms (med)':>13} {'min':>8} {'samples/s':>10} "
             f"{'head+UNet ms':>12} {'encoder ms':>10} {'enc share':>9}"]
    if result.get("threads_default"):                   # before the column header
        lines.insert(1, f"default {result['threads_default']['reason']}")
    for x in result["rows"]:
        lines.append(f"{x['amp']:5} {x.get('threads', ''):>3} {x['head']:14} {x['params']:>9} "
                     f"{x['step_ms_median']:>13.1f} {x['step_ms_min']:>8.1f} {x['samples_per_s']:>10.1f} "
                     f"{x['head_unet_ms_median']:>12.1f} {x['encoder_ms_median']:>10.1f} {x['encoder_share']:>9.2f}")
    for amp, r in result["ratios"].items():
        lines.append(f"ratios ({amp}): " + ", ".join(f"{k} {v}" for k, v in r.items()))
    for amp, a in result.get("allocator", {}).items():
        lines.append(f"allocator ({amp}): glibc default vs heap reuse: " + ", ".join(f"{k} {v}" for k, v in a.items()))
    if result.get("bf16_speedup"):
        lines.append("bf16 speed-up (fp32 / bf16 step, paired per round): "
                     + ", ".join(f"{k} {v}" for k, v in result["bf16_speedup"].items()))
    for k, v in (result.get("thread_ratio") or {}).items():
        lines.append(f"step time {k}: {v}")
    conc = result.get("concurrent")
    if conc:
        lines.append(f"two runs at once ({conc['what']}):")
        for row in conc["rows"]:
            lines.append(f"  {row['threads']} threads: alone {row['alone_step_ms_median']} ms, two at once "
                         f"{row['concurrent_step_ms_median']} ms per step (slowdown {row['slowdown']}x)")
        for k, v in conc.items():
            if k.startswith("threads_1_over"):
                lines.append(f"  {k}: {v}")
    return "\n".join(lines)
