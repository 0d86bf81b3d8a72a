"""`mfp train`: the parser and a thin handler over mfp.policies.training.train.

`mfp train` reads the policy's shapes (n_points, agent_dim, action_dim) from the dataset; the dataset's
point-cloud and camera description goes into every checkpoint. With --resume, the run's saved configs are the
defaults and only the flags given on the command line override them (a change that would alter the training
trajectory is refused by `train`).
"""

from __future__ import annotations

import json
import os

from .args import PRESETS, head_choices


# --- mfp train ---------------------------------------------------------------------------------------------
def train_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="train a point-cloud policy on a recorded dataset",
        description="Train a policy (DP3 encoder + 1-D UNet + a head objective) on a zarr dataset recorded by "
                    "`mfp collect`. Checkpoints (safetensors + JSON) go to --out every --ckpt-every steps and at "
                    "the end (step_XXXXXXXX.safetensors and last.safetensors); TensorBoard logs to --out/tb. "
                    "Policy shapes come from the dataset. Under torchrun the same command trains with DDP.")
    p.add_argument("--data", required=True, help="zarr dataset recorded by `mfp collect`")
    p.add_argument("--out", required=True, help="run folder for checkpoints and logs, e.g. runs/reach-meanflow")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint (its saved settings are the defaults)")
    g = p.add_argument_group("policy")
    g.add_argument("--head", choices=head_choices(), default=None, help="head objective (default: meanflow)")
    g.add_argument("--preset", choices=PRESETS, default=None,
                   help="UNet size: tiny (tests), small (about 5 M parameters, CPU default), paper (about 256 M)")
    g.add_argument("--horizon", type=int, default=None, help="predicted actions per chunk H (default: 4, as MP1)")
    g.add_argument("--n-obs-steps", type=int, default=None, help="observation steps conditioned on (default: 2)")
    g.add_argument("--n-action-steps", type=int, default=None,
                   help="actions executed per chunk, <= horizon - n_obs_steps + 1 (default: 3)")
    g.add_argument("--dispersive-weight", type=float, default=None,
                   help="weight of the dispersive regulariser on UNet down blocks 0 and 1 (default: 0, off; MP1: 0.5)")
    g.add_argument("--head-option", action="append", default=None, metavar="KEY=VALUE",
                   help="set a field of the head's config, e.g. cfg_w=2.0 or sample_steps=2 (repeatable; "
                        "values are parsed as JSON, else kept as text)")
    t = p.add_argument_group("training")
    t.add_argument("--steps", type=int, default=None, help="optimiser steps of the whole run (default: 1000)")
    t.add_argument("--batch-size", type=int, default=None, help="samples per step and process (default: 64; MP1 128)")
    t.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default: 3e-4; MP1 and DP3 use 1e-4)")
    t.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (default: 1e-6)")
    t.add_argument("--warmup", type=int, default=None,
                   help="linear warm-up steps of the cosine schedule, at most steps/10 (default: 500)")
    t.add_argument("--grad-clip", type=float, default=None, help="max gradient norm, 0 for none (default: 1.0)")
    t.add_argument("--no-ema", action="store_true", help="keep no EMA of the weights (default: EMA, power 0.75)")
    t.add_argument("--seed", type=int, default=None, help="seed of weights, noise, data order and split (default: 0)")
    t.add_argument("--val-ratio", type=float, default=None,
                   help="fraction of episodes held out (default: 0.1, >= 1 episode)")
    t.add_argument("--val-every", type=int, default=None,
                   help="steps between validation losses, 0 for none (default: 500)")
    t.add_argument("--ckpt-every", type=int, default=None, help="steps between periodic checkpoints (default: 1000)")
    t.add_argument("--keep-checkpoints", type=int, default=None,
                   help="periodic checkpoints to keep besides last.safetensors, 0 for all (default: 0)")
    t.add_argument("--log-every", type=int, default=None, help="steps between TensorBoard scalars (default: 10)")
    t.add_argument("--amp", choices=("auto", "none", "bf16"), default=None,
                   help="precision: auto = bfloat16 autocast where the device runs it natively (CUDA with bf16, a "
                        "CPU with AVX-512 BF16 or AMX), float32 otherwise; none = float32; bf16 = bfloat16 autocast "
                        "(the MeanFlow JVP stays float32; slow on CPUs without native bf16). The choice and its "
                        "reason are printed and saved in the run (default: auto; a resumed run keeps its own)")
    t.add_argument("--num-workers", type=int, default=None, help="DataLoader worker processes (default: 0)")
    t.add_argument("--max-nonfinite-steps", type=int, default=None,
                   help="stop after this many consecutive non-finite losses (default: 10)")
    t.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                   help="where to train; auto: cuda when available (default: auto)")
    t.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: the cores this process may use, less one per DataLoader "
                        "worker, lowered by the load of other processes at start; 1 is faster when other jobs "
                        "will share the machine)")
    t.add_argument("--no-heap-reuse", action="store_true",
                   help="CPU: let glibc return freed activations to the OS every step (default: reuse them, "
                        "which skips page faults; same computation)")
    t.add_argument("--eval-every", type=int, default=0,
                   help="roll the EMA policy out in the dataset's task every this many steps and at the end; results "
                        "in --out/eval.json and TensorBoard (default: 0, off)")
    t.add_argument("--eval-episodes", type=int, default=0,
                   help="evaluation episodes per rollout during training (fixed evaluation seeds; default: 0, "
                        "10 when --eval-every is set)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_train_run)


def _parse_head_options(items) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--head-option needs KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def configs_from_args(args) -> tuple:
    """(PolicyConfig, TrainConfig) from the flags: the run's saved configs with --resume, else the defaults,
    overridden by every flag given."""
    from pathlib import Path

    from mfp.eval.datasets import dataset_shapes
    from mfp.policies.config import PolicyConfig
    from mfp.policies.training import TrainConfig, read_checkpoint

    if args.resume:
        last = Path(args.out) / "last.safetensors"
        if not last.exists():
            raise FileNotFoundError(f"{args.out}: nothing to resume (no last.safetensors); "
                                    f"drop --resume to start a run")
        ckpt = read_checkpoint(last)
        policy, trainer = ckpt.policy_config.to_dict(), ckpt.meta["train_config"]
    else:
        policy, trainer = {"head": "meanflow"}, {**TrainConfig().to_dict(), "amp": "auto"}
    policy = dict(policy)
    if args.head is not None and args.head != policy.get("head"):
        policy = {k: v for k, v in policy.items() if k != "head_cfg"}   # another head: its own defaults
        policy["head"] = args.head
    for flag, key in (("horizon", "horizon"), ("n_obs_steps", "n_obs_steps"), ("n_action_steps", "n_action_steps")):
        if getattr(args, flag) is not None:
            policy[key] = getattr(args, flag)
    if args.preset is not None:
        unet = dict(policy.get("unet", {}))
        unet.update(preset=args.preset, down_dims=None, time_embed_dim=None)
        policy["unet"] = unet
    if args.dispersive_weight is not None:
        policy["dispersive"] = {**dict(policy.get("dispersive", {})), "weight": args.dispersive_weight}
    options = _parse_head_options(args.head_option)
    if options:
        policy["head_cfg"] = {**dict(policy.get("head_cfg") or {}), **options}
    if not args.resume:
        policy.update(dataset_shapes(args.data))
        policy.setdefault("unet", {"preset": "small"})
    flags = {"steps": "steps", "batch_size": "batch_size", "lr": "lr", "weight_decay": "weight_decay",
             "warmup": "warmup_steps", "grad_clip": "grad_clip", "seed": "seed", "val_ratio": "val_ratio",
             "val_every": "val_every", "ckpt_every": "ckpt_every", "keep_checkpoints": "keep_checkpoints",
             "log_every": "log_every", "amp": "amp", "num_workers": "num_workers",
             "max_nonfinite_steps": "max_nonfinite_steps", "device": "device"}
    trainer = dict(trainer)
    for flag, key in flags.items():
        if getattr(args, flag) is not None:
            trainer[key] = getattr(args, flag)
    if args.no_ema:
        trainer["ema"] = False
    if args.no_heap_reuse:
        trainer["reuse_cpu_memory"] = False
    return PolicyConfig.from_dict(policy), TrainConfig.from_dict(trainer)


def _train_run(args) -> int:
    import torch

    from mfp.eval.sim.training_eval import simulation_eval_fn
    from mfp.policies.training import train
    from mfp.policies.training.precision import default_threads, threads_reason

    from .output_paths import check_outputs, run_folder_outputs

    check_outputs(run_folder_outputs("--out", args.out, eval_history=bool(args.eval_every)))
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    policy_config, train_config = configs_from_args(args)
    peers = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))          # DDP ranks on this machine (torchrun)
    threads = args.threads or default_threads(workers_beside=train_config.num_workers, peers=peers)
    torch.set_num_threads(threads)
    if int(os.environ.get("RANK", "0")) == 0:
        print(threads_reason(threads, train_config.num_workers, peers, given=args.threads is not None), flush=True)
    episodes = args.eval_episodes or (10 if args.eval_every else 0)
    eval_fn = simulation_eval_fn(args.data, episodes) if episodes else None
    result = train(args.data, policy_config, train_config, args.out, resume=args.resume, eval_fn=eval_fn,
                   eval_every=args.eval_every, progress=not args.no_progress)
    if result.get("world_size", 1) == 1 or int(os.environ.get("RANK", "0")) == 0:
        def fmt(v):
            return "n/a" if v is None else f"{v:.4f}"
        print(f"trained {policy_config.head} to step {result['step']}: train loss {fmt(result['train_loss'])}, "
              f"val loss {fmt(result['val_loss'])} (EMA {fmt(result['val_loss_ema'])}), "
              f"{result['nonfinite_steps']} non-finite steps skipped; checkpoint {result['last_checkpoint']}")
    return 0
