"""`train`: fit a policy to a demonstration dataset, with checkpoints that resume exactly.

One step: a batch (B, H, ...) -> policy.compute_loss under optional bf16 autocast -> backward -> global-norm
gradient clipping -> AdamW -> cosine schedule with linear warm-up (diffusers' get_scheduler) -> EMA update
(diffusers' EMAModel, power 0.75, max decay 0.9999). A step whose loss or gradient norm is not finite on any
rank is skipped (no optimiser or EMA update) and counted; `max_nonfinite_steps` consecutive ones stop training
with NonFiniteLossError, leaving every checkpoint already written untouched.

Files in run_dir (rank 0 only): config.json (policy + train configs, data description), tb/ (TensorBoard:
train/loss, train/<every scalar the head logs>, lr, val/loss, val/loss_ema, eval/*), step_XXXXXXXX.safetensors
every ckpt_every steps and last.safetensors (see checkpoint.py), eval.json (the eval hook's results), result.json.

Exact resumption: the checkpoint holds weights, EMA, optimiser, scheduler, the data position (epoch, batch)
and every rank's torch / numpy / python RNG states; data order is a pure function of (seed, epoch, rank), and
validation and the eval hook run with the RNG states saved and restored, so they never shift the training
noise. Training N steps straight and N/2 + resume N/2 give the same weights.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import random
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from mfp.demos.atomic import atomic_write_json
from mfp.demos.dataset import DemoDataset
from mfp.demos.provenance import provenance
from mfp.demos.store import DemoStore

from .checkpoint import FORMAT_VERSION, LAST_NAME, CheckpointError, checkpoint_bytes, read_checkpoint, write_checkpoint
from .config import TrainConfig
from .cpu_memory import reuse_freed_cpu_memory
from .distributed import (DistInfo, ResumableBatchSampler, all_true, barrier, gather_to_main, setup_distributed,
                          teardown_distributed)
from .optim import load_optimizer_state, make_adamw
from .precision import CpuInfo, autocast, resolve_amp

EvalFn = Callable[[nn.Module, int], dict]


class NonFiniteLossError(RuntimeError):
    """Training met too many consecutive non-finite losses or gradients."""


# --- data ------------------------------------------------------------------------------------------------
def check_data_shapes(shapes: dict[str, tuple], policy_config, path) -> None:
    """Refuse a dataset whose per-step shapes do not match the policy config, naming both."""
    pc, pos, act = tuple(shapes["point_cloud"]), tuple(shapes["agent_pos"]), tuple(shapes["action"])
    wrong = []
    if pc != (policy_config.n_points, 3):
        wrong.append(f"point_cloud {pc} vs n_points={policy_config.n_points} -> ({policy_config.n_points}, 3)")
    if pos != (policy_config.agent_dim,):
        wrong.append(f"agent_pos {pos} vs agent_dim={policy_config.agent_dim}")
    if act != (policy_config.action_dim,):
        wrong.append(f"action {act} vs action_dim={policy_config.action_dim}")
    if wrong:
        raise ValueError(f"{path}: the dataset's shapes do not match the policy config: " + "; ".join(wrong)
                         + f" (dataset per step: point_cloud {pc}, agent_pos {pos}, action {act}; config: "
                           f"n_points={policy_config.n_points}, agent_dim={policy_config.agent_dim}, "
                           f"action_dim={policy_config.action_dim})")


def data_fingerprint(path) -> str:
    """sha256 of the dataset's committed episode ends, per-array shapes and dtypes, and attrs."""
    store = DemoStore.open(path, "r")
    h = hashlib.sha256()
    h.update(np.asarray(store.episode_ends, dtype=np.int64).tobytes())
    arrays = {k: [store.n_steps, *store.root[f"data/{k}"].shape[1:], str(store.root[f"data/{k}"].dtype)]
              for k in store.keys()}
    h.update(json.dumps(arrays, sort_keys=True).encode())
    h.update(json.dumps(store.attrs, sort_keys=True, default=str).encode())
    return h.hexdigest()


def data_description(path, dataset: DemoDataset) -> dict[str, Any]:
    """What the checkpoint records about its data: enough to make matching observations at deployment."""
    attrs = dataset.attrs
    return {
        "path": str(Path(path).resolve()), "fingerprint": data_fingerprint(path), "task": attrs.get("task"),
        "point_cloud": attrs.get("point_cloud"), "camera": attrs.get("camera"), "env": attrs.get("env"),
        "shapes": {k: list(v) for k, v in dataset.shapes.items()},
        "n_episodes": int(len(dataset.train_mask)),
        "train_episodes": np.flatnonzero(dataset.train_mask).tolist(),
        "val_episodes": np.flatnonzero(dataset.val_mask).tolist(),
    }


def _to_device(batch, device: torch.device):
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch.to(device, non_blocking=True)


# --- RNG states ------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
             "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
             "python": [py_state[0], list(py_state[1]), py_state[2]]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, state["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved_rng():
    """Run a block (validation, the eval hook) without moving any RNG the training steps use."""
    state = capture_rng()
    try:
        yield
    finally:
        restore_rng(state)


# --- the run ---------------------------------------------------------------------------------------------
class _LossModule(nn.Module):
    """forward(batch) = policy.compute_loss(batch): DDP synchronises gradients only through forward()."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy

    def forward(self, batch):
        return self.policy.compute_loss(batch)


def _make_ema(policy: nn.Module, cfg: TrainConfig):
    from diffusers.training_utils import EMAModel

    return EMAModel(policy.parameters(), decay=cfg.ema_max_decay, min_decay=cfg.ema_min_decay,
                    update_after_step=cfg.ema_update_after_step, use_ema_warmup=True, inv_gamma=cfg.ema_inv_gamma,
                    power=cfg.ema_power, foreach=True)


def _json_safe(results: dict) -> dict:
    out = {}
    for k, v in results.items():
        if isinstance(v, (np.generic, torch.Tensor)) and np.size(v) == 1:
            v = v.item()
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            v = str(v)
        out[str(k)] = v
    return out


class _Run:
    """State of one training process; `train` drives it."""

    def __init__(self, data_path, policy_config, cfg: TrainConfig, run_dir: Path, info: DistInfo):
        from diffusers.optimization import get_scheduler

        from mfp.policies.factory import build_policy

        self.cfg, self.info, self.run_dir = cfg, info, run_dir
        self.policy_config = policy_config
        pc = policy_config
        self.dataset = DemoDataset(data_path, pc.horizon, pc.n_obs_steps, pc.n_action_steps, cfg.val_ratio, cfg.seed)
        check_data_shapes(self.dataset.shapes, pc, data_path)
        self.data_info = data_description(data_path, self.dataset)

        seed_everything(cfg.seed)                       # the same initial weights on every rank
        self.policy = build_policy(pc)
        self.policy.set_normalizer(self.dataset.fit_normalizer())
        self.policy.to(info.device).train()
        seed_everything(cfg.seed + 7919 * info.rank)    # each rank its own training noise

        self.optimizer = make_adamw(self.policy.parameters(), lr=cfg.lr, betas=cfg.betas,
                                    weight_decay=cfg.weight_decay, eps=cfg.adam_eps)
        self.scheduler = get_scheduler("cosine", self.optimizer, num_warmup_steps=cfg.effective_warmup_steps,
                                       num_training_steps=cfg.steps)
        self.ema = _make_ema(self.policy, cfg) if cfg.ema else None
        self.model: nn.Module = _LossModule(self.policy)
        if info.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.model = DDP(self.model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
                             find_unused_parameters=True)

        self.sampler = ResumableBatchSampler(len(self.dataset), cfg.batch_size, cfg.seed, info.rank, info.world_size)
        self.loader_gen = torch.Generator()
        self.loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=self.sampler, num_workers=cfg.num_workers,
                                                  generator=self.loader_gen,
                                                  pin_memory=info.device.type == "cuda",
                                                  persistent_workers=False)
        self.val_loader = self._make_val_loader()
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.nonfinite_total, self.nonfinite_streak = 0, 0
        self.eval_history: list[dict] = []
        self.eval_policy: nn.Module | None = None
        self.checkpoints: list[str] = []

    def _make_val_loader(self):
        cfg = self.cfg
        if cfg.val_every == 0 or not self.dataset.val_mask.any():
            return None
        val = self.dataset.validation_dataset()
        if len(val) == 0:
            return None
        g = torch.Generator().manual_seed(cfg.seed)
        n = min(len(val), cfg.batch_size * 4)           # a fixed random subset: 4 batches
        subset = torch.utils.data.Subset(val, torch.randperm(len(val), generator=g)[:n].tolist())
        return torch.utils.data.DataLoader(subset, batch_size=cfg.batch_size, shuffle=False, num_workers=0)

    def autocast(self):
        return autocast(self.info.device.type, self.cfg.amp)

    # --- one optimiser step ----------------------------------------------------------------------------
    def train_step(self, batch) -> tuple[bool, dict[str, float]]:
        cfg = self.cfg
        batch = _to_device(batch, self.info.device)
        with self.autocast():
            loss, logs = self.model(batch)
        loss_ok = bool(torch.isfinite(loss.detach()).item())
        self.optimizer.zero_grad(set_to_none=True)
        if all_true(loss_ok, self.info):
            loss.backward()
            max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), max_norm)
            ok = all_true(bool(torch.isfinite(grad_norm).item()), self.info)
        else:
            grad_norm, ok = torch.tensor(float("nan")), False
        if ok:
            self.optimizer.step()
            if self.ema is not None:
                self.ema.step(self.policy.parameters())
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()                             # the learning rate stays a function of the step
        logs = {"loss": float(loss.detach().float().item()), **{k: float(v) for k, v in logs.items() if k != "loss"},
                "grad_norm": float(grad_norm)}
        return ok, logs

    # --- evaluation pieces -------------------------------------------------------------------------------
    def eval_weights_policy(self) -> nn.Module:
        """The policy with the EMA weights (the training weights when the run keeps no EMA), eval mode."""
        if self.ema is None:
            return self.policy
        if self.eval_policy is None:
            self.eval_policy = copy.deepcopy(self.policy)
        self.ema.copy_to(self.eval_policy.parameters())
        return self.eval_policy

    @torch.no_grad()
    def validation_losses(self) -> dict[str, float]:
        """Mean loss over a fixed subset of held-out windows, with a fixed noise seed (comparable over time)."""
        out = {}
        models = [("val/loss", self.policy)] + ([("val/loss_ema", None)] if self.ema is not None else [])
        for name, model in models:
            model = model if model is not None else self.eval_weights_policy()
            was_training = model.training
            model.eval()
            total, n = 0.0, 0
            with preserved_rng():
                torch.manual_seed(self.cfg.seed)
                for batch in self.val_loader:
                    batch = _to_device(batch, self.info.device)
                    with self.autocast():
                        loss, _ = model.compute_loss(batch)
                    bs = batch["action"].shape[0]
                    total, n = total + float(loss.float()) * bs, n + bs
            model.train(was_training)
            out[name] = total / max(n, 1)
        return out

    def run_eval(self, eval_fn: EvalFn) -> dict:
        policy = self.eval_weights_policy()
        was_training = policy.training
        policy.eval()
        with preserved_rng():
            results = eval_fn(policy, self.step) or {}
        policy.train(was_training)
        entry = {"step": self.step, **_json_safe(dict(results))}
        self.eval_history.append(entry)
        atomic_write_json(self.run_dir / "eval.json", self.eval_history)
        return entry

    # --- checkpoints -------------------------------------------------------------------------------------
    def save_checkpoint(self, periodic: bool) -> None:
        """All ranks call this (their RNG states are gathered); rank 0 writes."""
        rngs = gather_to_main(capture_rng(), self.info)
        if not self.info.is_main:
            return
        tensors: dict[str, torch.Tensor] = {f"model/{k}": v for k, v in self.policy.state_dict().items()}
        names = [n for n, _ in self.policy.named_parameters()]
        meta: dict[str, Any] = {
            "format_version": FORMAT_VERSION, "step": self.step, "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch, "world_size": self.info.world_size,
            "policy_config": self.policy_config.to_dict(), "train_config": self.cfg.to_dict(),
            "data": self.data_info, "nonfinite_total": self.nonfinite_total,
            "nonfinite_streak": self.nonfinite_streak, "eval_history": self.eval_history,
            "scheduler": self.scheduler.state_dict(), "provenance": provenance(), "rng": [],
        }
        if self.ema is not None:
            ema_state = self.ema.state_dict()
            shadow = ema_state.pop("shadow_params")
            tensors.update({f"ema/{n}": t for n, t in zip(names, shadow)})
            meta["ema"] = ema_state
        opt_state = self.optimizer.state_dict()
        for idx, st in opt_state["state"].items():
            for key, value in st.items():
                tensors[f"optim/{idx}/{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
        meta["optimizer"] = {"param_groups": opt_state["param_groups"]}
        for rank, st in enumerate(rngs):
            tensors[f"rng/{rank}/torch"] = st["torch"]
            tensors[f"rng/{rank}/numpy"] = st["numpy_keys"]
            for i, c in enumerate(st.get("cuda", [])):
                tensors[f"rng/{rank}/cuda/{i}"] = c
            meta["rng"].append({"numpy": st["numpy"], "python": st["python"], "n_cuda": len(st.get("cuda", []))})
        data = checkpoint_bytes(tensors, meta)
        paths = [self.run_dir / LAST_NAME]
        if periodic:
            paths.insert(0, self.run_dir / f"step_{self.step:08d}.safetensors")
            self.checkpoints.append(str(paths[0]))
        write_checkpoint(paths, data)
        self._prune()

    def _prune(self) -> None:
        keep = self.cfg.keep_checkpoints
        if keep <= 0:
            return
        periodic = sorted(self.run_dir.glob("step_*.safetensors"))
        for old in periodic[:-keep]:
            old.unlink(missing_ok=True)

    def load_checkpoint(self, path: Path) -> None:
        ckpt = read_checkpoint(path)
        self._check_compatible(ckpt)
        meta = ckpt.meta
        device = self.info.device
        self.policy.load_state_dict(ckpt.tensors("model/"), strict=True)
        self.policy.to(device)
        if self.ema is not None:
            if not ckpt.has("ema/"):
                raise CheckpointError(f"{ckpt.path}: holds no EMA weights, but this run keeps an EMA")
            ema = ckpt.tensors("ema/")
            names = [n for n, _ in self.policy.named_parameters()]
            missing = [n for n in names if n not in ema]
            if missing:
                raise CheckpointError(f"{ckpt.path}: EMA weights missing for {missing[:5]}")
            state = dict(meta["ema"])
            state["shadow_params"] = [ema[n].to(device) for n in names]
            self.ema.load_state_dict(state)
        optim = ckpt.tensors("optim/")
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in optim.items():
            idx, name = key.split("/", 1)
            state.setdefault(int(idx), {})[name] = value
        groups = meta["optimizer"]["param_groups"]
        for g in groups:
            g["betas"] = tuple(g["betas"])
        load_optimizer_state(self.optimizer, {"state": state, "param_groups": groups})
        self.scheduler.load_state_dict(meta["scheduler"])
        self.step, self.epoch, self.batch_in_epoch = int(meta["step"]), int(meta["epoch"]), int(meta["batch_in_epoch"])
        self.nonfinite_total, self.nonfinite_streak = int(meta["nonfinite_total"]), int(meta["nonfinite_streak"])
        self.eval_history = list(meta.get("eval_history", []))
        rank = self.info.rank
        rng_meta = meta["rng"][rank]
        rng_tensors = ckpt.tensors(f"rng/{rank}/")
        restore_rng({"torch": rng_tensors["torch"], "numpy_keys": rng_tensors["numpy"], "numpy": rng_meta["numpy"],
                     "python": rng_meta["python"],
                     "cuda": [rng_tensors[f"cuda/{i}"] for i in range(rng_meta["n_cuda"])]})

    def _check_compatible(self, ckpt) -> None:
        meta = ckpt.meta
        asked = self.policy_config.to_dict()
        saved = ckpt.policy_config.to_dict()
        if saved.get("head") != asked["head"]:
            raise CheckpointError(f"{ckpt.path}: was trained with head '{saved.get('head')}', this run asks for "
                                  f"'{asked['head']}'; resume with the same head or start a new run_dir")
        diffs = _dict_differences(saved, asked)
        if diffs:
            shown = "; ".join(f"{k}: checkpoint {a!r} vs asked {b!r}" for k, (a, b) in list(diffs.items())[:8])
            raise CheckpointError(f"{ckpt.path}: its policy config differs from the one asked for ({shown}); resume "
                                  f"with the same settings or start a new run_dir")
        train_diffs = ckpt.train_config.trajectory_differences(self.cfg)
        if train_diffs:
            shown = "; ".join(f"{k}: checkpoint {a!r} vs asked {b!r}" for k, (a, b) in train_diffs.items())
            raise CheckpointError(f"{ckpt.path}: resuming would change the training trajectory ({shown}); resume "
                                  f"with the same train settings or start a new run_dir")
        if meta.get("data", {}).get("fingerprint") != self.data_info["fingerprint"]:
            raise CheckpointError(f"{ckpt.path}: was trained on other data ({meta.get('data', {}).get('path')}, "
                                  f"fingerprint {str(meta.get('data', {}).get('fingerprint'))[:12]}) than "
                                  f"{self.data_info['path']} (fingerprint {self.data_info['fingerprint'][:12]})")
        if int(meta.get("world_size", 1)) != self.info.world_size:
            raise CheckpointError(f"{ckpt.path}: was written by {meta.get('world_size')} processes; resume with the "
                                  f"same number (now {self.info.world_size}) so that data order and RNGs continue")


def _dict_differences(a: dict, b: dict, prefix: str = "") -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out.update(_dict_differences(va, vb, f"{prefix}{key}."))
        elif va != vb:
            out[f"{prefix}{key}"] = (va, vb)
    return out


def resolve_run_precision(cfg: TrainConfig, device_type: str, saved: TrainConfig | None = None,
                          cpu: CpuInfo | None = None) -> tuple[TrainConfig, str]:
    """(cfg with `amp` resolved to "none" or "bf16" and `amp_reason` filled, a line saying so). "auto": bf16 where
    the device runs it natively (precision.resolve_amp); a resumed run (`saved`: its checkpoint's config) keeps
    the precision it started with, and its reason. bf16 on a device without native bf16 warns (PrecisionWarning).
    cpu: the CPU's capability (default: this machine's; injectable)."""
    asked = saved.amp if saved is not None and cfg.amp == "auto" else cfg.amp
    choice = resolve_amp(asked, device_type, cpu=cpu)
    if saved is not None and saved.amp == choice.amp and saved.amp_reason:
        resolved = dataclasses.replace(cfg, amp=choice.amp, amp_reason=saved.amp_reason)
        return resolved, choice.describe(f"kept from the run's start: {saved.amp_reason}")
    return dataclasses.replace(cfg, amp=choice.amp, amp_reason=choice.reason), choice.describe()


def _saved_train_config(last: Path) -> TrainConfig | None:
    try:
        return read_checkpoint(last).train_config
    except CheckpointError:
        return None                                    # reported with its reason when the run loads it


def train(data_path, policy_config, train_config: TrainConfig | None = None, run_dir="runs/train",
          resume: bool = False, eval_fn: EvalFn | None = None, eval_every: int = 0,
          progress: bool = True) -> dict[str, Any]:
    """Train `policy_config` (a PolicyConfig or its dict) on the zarr dataset `data_path`; files go to run_dir.

    resume: continue from run_dir/last.safetensors (same policy config, trajectory settings and data, else a
    CheckpointError); without it, a run_dir that already holds a checkpoint is refused (nothing is overwritten).
    eval_fn(policy, step) -> dict: called on rank 0 every `eval_every` steps (0: only at the end) and at the end,
    with the EMA-weights policy in eval mode (the RNG states are restored afterwards, so evaluating never changes
    the training trajectory); its results go to TensorBoard (eval/*), run_dir/eval.json and the checkpoints.
    Returns {"step", "train_loss", "val_loss", "val_loss_ema", "nonfinite_steps", "eval", "last_checkpoint",
    "checkpoints", "steps_per_s", "run_dir", "policy", "ema_policy"} (the last two: the trained modules).
    """
    from mfp.policies.config import PolicyConfig

    if isinstance(policy_config, dict):
        policy_config = PolicyConfig.from_dict(policy_config)
    cfg = train_config or TrainConfig()
    if eval_every < 0:
        raise ValueError(f"eval_every must be >= 0, got {eval_every}")
    if eval_every and eval_fn is None:
        raise ValueError("eval_every > 0 needs an eval_fn")
    run_dir = Path(run_dir)
    last = run_dir / LAST_NAME
    if resume and not last.exists():
        raise FileNotFoundError(f"{run_dir}: nothing to resume (no {LAST_NAME}); drop --resume to start a new run")
    if not resume and last.exists():
        raise FileExistsError(f"{run_dir}: already holds a training run; pass --resume (resume=True) to continue it, "
                              f"or choose another run folder")

    info = setup_distributed(cfg.device)
    cfg, precision_line = resolve_run_precision(cfg, info.device.type, _saved_train_config(last) if resume else None)
    if info.is_main:
        print(precision_line, flush=True)
    heap_reuse = cfg.reuse_cpu_memory and info.device.type == "cpu" and reuse_freed_cpu_memory(True)
    writer = None
    try:
        run = _Run(data_path, policy_config, cfg, run_dir, info)
        if resume:
            run.load_checkpoint(last)
        if info.is_main:
            atomic_write_json(run_dir / "config.json", {
                "policy_config": policy_config.to_dict(), "train_config": cfg.to_dict(), "data": run.data_info,
                "world_size": info.world_size, "format_version": FORMAT_VERSION, "provenance": provenance()})
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run_dir / "tb"), purge_step=run.step if resume else None)
        result = _loop(run, eval_fn, eval_every, writer, progress and info.is_main)
        barrier(info)
        return result
    finally:
        if writer is not None:
            writer.close()
        if heap_reuse:
            reuse_freed_cpu_memory(False)                 # glibc's defaults again once training is over
        teardown_distributed(info)


def _loop(run: _Run, eval_fn, eval_every: int, writer, progress: bool) -> dict[str, Any]:
    """Train from the run's position to cfg.steps: log, validate, evaluate and checkpoint on their schedules."""
    from tqdm.auto import tqdm

    cfg = run.cfg
    bar = tqdm(total=cfg.steps, initial=run.step, disable=not progress, desc="train", unit="step", dynamic_ncols=True)
    logs_window = _LogWindow(run, writer, bar)
    t_start, step_start = time.perf_counter(), run.step
    val: dict[str, float] = {}
    batches = _batches(run)
    try:
        while run.step < cfg.steps:
            ok, logs = run.train_step(next(batches))
            run.step += 1
            run.batch_in_epoch += 1
            if ok:
                run.nonfinite_streak = 0
                logs_window.add(logs)
            else:
                _count_nonfinite(run, logs)
            bar.update(1)
            final = run.step >= cfg.steps
            if cfg.log_every > 0 and (run.step % cfg.log_every == 0 or final):
                logs_window.flush()
            new_val = _validate_and_evaluate(run, eval_fn, eval_every, writer, final)
            if new_val is not None:
                val = new_val
            periodic = cfg.ckpt_every > 0 and run.step % cfg.ckpt_every == 0
            if periodic or final:
                run.save_checkpoint(periodic)
    finally:
        bar.close()
    elapsed = time.perf_counter() - t_start
    steps_per_s = (run.step - step_start) / elapsed if elapsed > 0 and run.step > step_start else None
    return _result(run, logs_window.mean(), val, steps_per_s)


def _batches(run: _Run):
    """Training batches from the run's position on, epoch after epoch (the sampler resumes mid-epoch; each epoch's
    order is seeded by seed + epoch)."""
    while True:
        run.sampler.set_position(run.epoch, run.batch_in_epoch)
        run.loader_gen.manual_seed(run.cfg.seed + run.epoch)
        yield from run.loader
        run.epoch += 1
        run.batch_in_epoch = 0


class _LogWindow:
    """The training scalars averaged over the steps since the last log: to TensorBoard and the progress bar."""

    def __init__(self, run: _Run, writer, bar):
        self.run, self.writer, self.bar = run, writer, bar
        self.sums: dict[str, float] = {}
        self.n = 0
        self.last: dict[str, float] = {}          # the means of the last window that had finite steps
        self.t0, self.step0 = time.perf_counter(), run.step

    def add(self, logs: dict[str, float]) -> None:
        for k, v in logs.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.n += 1

    def mean(self) -> dict[str, float]:
        """The current window's means (the last window's when this one has no finite step)."""
        if self.n:
            self.last = {k: v / self.n for k, v in self.sums.items()}
        return self.last

    def flush(self) -> None:
        run, writer = self.run, self.writer
        means = self.mean()
        now = time.perf_counter()
        rate = (run.step - self.step0) / max(now - self.t0, 1e-9)
        lr = run.scheduler.get_last_lr()[0]
        if writer is not None:
            for k, v in means.items():
                writer.add_scalar(f"train/{k}", v, run.step)
            writer.add_scalar("lr", lr, run.step)
            writer.add_scalar("train/steps_per_s", rate, run.step)
            writer.add_scalar("train/nonfinite_steps", run.nonfinite_total, run.step)
        self.bar.set_postfix(loss=f"{means.get('loss', float('nan')):.4f}", lr=f"{lr:.2e}", refresh=False)
        self.sums, self.n, self.t0, self.step0 = {}, 0, now, run.step


def _count_nonfinite(run: _Run, logs: dict[str, float]) -> None:
    """A skipped step (non-finite loss or gradient); max_nonfinite_steps of them in a row stop training."""
    run.nonfinite_streak += 1
    run.nonfinite_total += 1
    if run.nonfinite_streak >= run.cfg.max_nonfinite_steps:
        last = run.run_dir / LAST_NAME
        where = (f"the last checkpoint {last} (step {read_checkpoint(last).step}) is intact"
                 if last.exists() else "no checkpoint was written yet")
        raise NonFiniteLossError(
            f"training stopped at step {run.step}: {run.nonfinite_streak} consecutive steps with a "
            f"non-finite loss or gradient (loss {logs['loss']}, grad norm {logs['grad_norm']}); "
            f"{where}. Lower the learning rate, check the data, or try amp='none'")


def _validate_and_evaluate(run: _Run, eval_fn, eval_every: int, writer, final: bool) -> dict[str, float] | None:
    """On the main process: validation losses every val_every steps and the simulation hook every eval_every steps
    (both at the end too), written to TensorBoard. Returns the validation losses when they were computed."""
    cfg, val = run.cfg, None
    if not run.info.is_main:
        return None
    if run.val_loader is not None and (run.step % cfg.val_every == 0 or final):
        val = run.validation_losses()
        if writer is not None:
            for k, v in val.items():
                writer.add_scalar(k, v, run.step)
    if eval_fn is not None and ((eval_every and run.step % eval_every == 0) or final):
        entry = run.run_eval(eval_fn)
        if writer is not None:
            for k, v in entry.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    writer.add_scalar(f"eval/{k}", v, run.step)
    return val


def _result(run: _Run, train_logs: dict[str, float], val: dict[str, float], steps_per_s: float | None) -> dict:
    """train()'s result, saved as result.json by the main process, with the trained policies added."""
    result = {
        "run_dir": str(run.run_dir), "step": run.step, "train_loss": train_logs.get("loss"),
        "val_loss": val.get("val/loss"), "val_loss_ema": val.get("val/loss_ema"),
        "nonfinite_steps": run.nonfinite_total, "eval": run.eval_history,
        "last_checkpoint": str(run.run_dir / LAST_NAME),
        "checkpoints": sorted(str(p) for p in run.run_dir.glob("step_*.safetensors")),
        "steps_per_s": steps_per_s,
        "world_size": run.info.world_size,
    }
    if run.info.is_main:
        atomic_write_json(run.run_dir / "result.json", result)
    result["policy"] = run.policy
    result["ema_policy"] = run.eval_weights_policy() if run.ema is not None else run.policy
    return result
