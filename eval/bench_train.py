"""`mfp bench train`: training step time per head, fp32 and bf16 autocast, and where the time goes.

One step = policy.compute_loss on a synthetic batch (B, H=4, N, 3) point clouds of which the encoder sees the
n_obs_steps = 2 first frames, backward, global-norm clipping, AdamW. Heads are timed in interleaved rounds (one
step of each head per round), so ratios such as MeanFlow / FlowPolicy compare steps taken under the same machine
load; each ratio is the median of the per-round ratios. Also timed in the same rounds: the observation encoder
(forward + backward of policy.encode_obs: its share of a step) and each head's objective through the UNet alone
on a fixed condition (forward + backward: the JVP's cost without the encoder that all heads share).
Random weights: step time does not depend on what the network has learnt. On CPU the table is measured with
heap reuse on, as training runs (policies/training/cpu_memory.py), and the encoder and the first head's step are
also timed with glibc's default allocator in the same rounds (before / after). Prints a table, saves JSON.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from mfp.demos.normalizer import MinMaxNormalizer
from mfp.demos.provenance import provenance

from .bench_report import save_and_print

HEADS = ("meanflow", "flowpolicy", "splitmeanflow", "dp3")
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
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6)
        self.batch, self.amp, self.device = batch, amp, device
        self.n_params = sum(p.numel() for p in self.policy.parameters())

    def _autocast(self):
        return torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.amp == "bf16")

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


def bench_train(heads=HEADS, preset: str = "small", batch_size: int = 64, n_points: int = 512, steps: int = 5,
                warmup: int = 2, amps=("none", "bf16"), dispersive_weight: float = 0.0, threads: int | None = None,
                device: str = "cpu", out="runs/bench/train.json", verbose: bool = True) -> dict:
    if steps < 1 or warmup < 0:
        raise ValueError(f"bench train needs steps >= 1 and warmup >= 0, got {steps}, {warmup}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: this torch build sees no CUDA GPU")
    if threads is not None:
        torch.set_num_threads(threads)
    from mfp.policies.training.cpu_memory import reuse_freed_cpu_memory

    batch = synthetic_batch(batch_size, n_points, device=device)
    # Training reuses freed heap memory on CPU (TrainConfig.reuse_cpu_memory); it is compared with glibc's default.
    alloc_compare = device == "cpu" and reuse_freed_cpu_memory(True)
    rows, ratios, allocator = [], {}, {}
    for amp in amps:
        steppers = {h: _Stepper(h, preset, batch, amp, dispersive_weight, device) for h in heads}
        enc = next(iter(steppers.values()))
        for s in steppers.values():
            for _ in range(warmup):
                s.step()
                s.head_step()
        for _ in range(warmup):
            enc.encoder_step()
        times: dict[str, list[float]] = {h: [] for h in heads}
        times["encoder"] = []
        head_times: dict[str, list[float]] = {h: [] for h in heads}
        default_alloc: dict[str, list[float]] = {"encoder": [], "step": []}
        for _ in range(steps):                     # interleaved rounds: paired measurements under the same load
            for h, s in steppers.items():
                times[h].append(s.step())
                head_times[h].append(s.head_step())
            times["encoder"].append(enc.encoder_step())
            if alloc_compare:                      # the same computation with glibc's default allocator
                reuse_freed_cpu_memory(False)
                default_alloc["encoder"].append(enc.encoder_step())
                default_alloc["step"].append(enc.step())
                reuse_freed_cpu_memory(True)
        if alloc_compare:
            first = next(iter(steppers))
            allocator[amp] = {
                "encoder_ms_default": round(1000 * float(np.median(default_alloc["encoder"])), 1),
                "encoder_ms_heap_reuse": round(1000 * float(np.median(times["encoder"])), 1),
                f"{first}_step_ms_default": round(1000 * float(np.median(default_alloc["step"])), 1),
                f"{first}_step_ms_heap_reuse": round(1000 * float(np.median(times[first])), 1)}
        enc_ms = 1000 * float(np.median(times["encoder"]))
        for h in heads:
            ms = 1000 * np.asarray(times[h])
            rows.append({"amp": amp, "head": h, "preset": preset, "batch_size": batch_size, "n_points": n_points,
                         "params": steppers[h].n_params, "step_ms_median": round(float(np.median(ms)), 1),
                         "step_ms_min": round(float(ms.min()), 1),
                         "samples_per_s": round(batch_size / (float(np.median(ms)) / 1000), 1),
                         "head_unet_ms_median": round(1000 * float(np.median(head_times[h])), 1),
                         "encoder_ms_median": round(enc_ms, 1),
                         "encoder_share": round(enc_ms / float(np.median(ms)), 3)})
        per_round = {h: np.asarray(times[h]) for h in times}
        r = {}
        for other in ("flowpolicy", "splitmeanflow", "dp3"):
            if "meanflow" in heads and other in heads:
                r[f"meanflow_over_{other}"] = round(float(np.median(per_round["meanflow"] / per_round[other])), 2)
                head_only = np.asarray(head_times["meanflow"]) / np.asarray(head_times[other])
                r[f"meanflow_over_{other}_head_unet_only"] = round(float(np.median(head_only)), 2)
        ratios[amp] = r
        del steppers
    bf16_speedup = {}
    if "none" in amps and "bf16" in amps:
        for h in heads:
            a = next(x for x in rows if x["amp"] == "none" and x["head"] == h)["step_ms_median"]
            b = next(x for x in rows if x["amp"] == "bf16" and x["head"] == h)["step_ms_median"]
            bf16_speedup[h] = round(a / b, 2)
    result = {
        "what": "training step (forward + backward + AdamW) per head, synthetic batches, random weights",
        "settings": {"preset": preset, "batch_size": batch_size, "n_points": n_points, "n_obs_steps": 2, "horizon": 4,
                     "steps": steps, "warmup": warmup, "amps": list(amps), "dispersive_weight": dispersive_weight,
                     "device": device, "torch_threads": torch.get_num_threads(),
                     "heap_reuse": bool(alloc_compare)},
        "rows": rows, "ratios": ratios, "bf16_speedup": bf16_speedup, "allocator": allocator, "targets": TARGETS,
        "provenance": provenance(),
    }
    mf = [x for x in rows if x["head"] == "meanflow"]
    if mf:
        best = min(x["step_ms_median"] for x in mf)
        result["meets"] = {"meanflow_step_ms_best": best,
                           "meanflow_step_le_250ms": best <= TARGETS["meanflow_small_b64_step_ms_max"]
                           if preset == "small" and batch_size == 64 else None,
                           "meanflow_le_2x_flowpolicy": {a: r.get("meanflow_over_flowpolicy", float("nan")) <= 2.0
                                                         for a, r in ratios.items() if "meanflow_over_flowpolicy" in r}}
    if alloc_compare:
        reuse_freed_cpu_memory(False)
    return save_and_print(result, out, format_table(result) if verbose else None, verbose)


def format_table(result: dict) -> str:
    lines = [f"{'amp':5} {'head':14} {'params':>9} {'step ms (med)':>13} {'min':>8} {'samples/s':>10} "
             f"{'head+UNet ms':>12} {'encoder ms':>10} {'enc share':>9}"]
    for x in result["rows"]:
        lines.append(f"{x['amp']:5} {x['head']:14} {x['params']:>9} {x['step_ms_median']:>13.1f} "
                     f"{x['step_ms_min']:>8.1f} {x['samples_per_s']:>10.1f} {x['head_unet_ms_median']:>12.1f} "
                     f"{x['encoder_ms_median']:>10.1f} {x['encoder_share']:>9.2f}")
    for amp, r in result["ratios"].items():
        lines.append(f"ratios ({amp}): " + ", ".join(f"{k} {v}" for k, v in r.items()))
    for amp, a in result.get("allocator", {}).items():
        lines.append(f"allocator ({amp}): glibc default vs heap reuse: " + ", ".join(f"{k} {v}" for k, v in a.items()))
    if result.get("bf16_speedup"):
        lines.append("bf16 speed-up (fp32 / bf16 step): "
                     + ", ".join(f"{k} {v}" for k, v in result["bf16_speedup"].items()))
    return "\n".join(lines)
