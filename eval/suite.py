"""The benchmark suite: for each task x head x training seed, collect demonstrations (once per task), train with
the same budget, evaluate the final EMA checkpoint on the fixed evaluation episodes, and append the result to a
results file; the expert is evaluated on the same episodes once per task (the ceiling).

A suite is built up run by run: a job whose result is already in the results file (same task, head, seed and
budget) is skipped, an interrupted training run resumes from its last checkpoint, and a finished job's result is
on disk (fsynced) before the next job starts. Two suite processes may share a results file (e.g. one per seed).
"""

from __future__ import annotations

import dataclasses
import fcntl
import time
from dataclasses import dataclass, field
from pathlib import Path

from mfp.policies.config_checks import check_fields

from .published import task_group
from .results_file import ResultsFile

SUITE_HEADS = ("meanflow", "flowpolicy", "dp3", "splitmeanflow")


@dataclass
class SuiteConfig:
    tasks: tuple[str, ...]
    heads: tuple[str, ...] = ("meanflow", "flowpolicy", "dp3")
    seeds: tuple[int, ...] = (0, 1)
    steps: int = 400                      # the training budget: optimiser steps, the same for every head
    batch_size: int = 64
    preset: str = "small"
    amp: str = "bf16"
    demos: int = 10                       # demonstrations per task
    eval_episodes: int = 20
    eval_workers: int = 1
    videos: int = 1                       # episodes recorded as videos per evaluation
    expert: bool = True                   # also evaluate the expert on the evaluation episodes (once per task)
    top5_every: int = 0                   # >0: evaluate every this many steps too, for the papers' top-5 figure
    threads: int | None = None            # torch CPU threads
    data_dir: str = "data/demos"
    runs_dir: str = "runs/suite"
    results: str = "runs/suite/results.jsonl"

    def __post_init__(self) -> None:
        check_fields(self)
        from mfp.envs import check_task_name

        self.tasks, self.heads = tuple(self.tasks), tuple(self.heads)
        self.seeds = tuple(int(s) for s in self.seeds)
        if not self.tasks:
            raise ValueError("the suite needs at least one task")
        for t in self.tasks:
            check_task_name(t)
        bad = [h for h in self.heads if h not in SUITE_HEADS]
        if bad or not self.heads:
            raise ValueError(f"unknown head(s) {bad or '(none)'}; choose from {list(SUITE_HEADS)}")
        for name in ("steps", "batch_size", "demos", "eval_episodes", "eval_workers"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"suite {name} must be an integer >= 1, got {getattr(self, name)!r}")
        if self.top5_every < 0 or self.videos < 0:
            raise ValueError("suite top5_every and videos must be >= 0")
        if len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise ValueError(f"suite seeds must be distinct and >= 0, got {self.seeds}")

    def expert_budget(self) -> dict:
        """The expert's results depend only on the evaluation episodes."""
        return {"eval_episodes": self.eval_episodes}

    def budget(self) -> dict:
        """What makes two results comparable: a job is done when a row with this budget exists."""
        return {"steps": self.steps, "batch_size": self.batch_size, "preset": self.preset, "amp": self.amp,
                "demos": self.demos, "eval_episodes": self.eval_episodes}


@dataclass
class SuiteProgress:
    done: list[dict] = field(default_factory=list)      # rows written by this call
    skipped: list[str] = field(default_factory=list)    # jobs already in the results file


def dataset_path(cfg: SuiteConfig, task: str) -> Path:
    return Path(cfg.data_dir) / f"{task.replace('/', '_')}.zarr"


def run_dir(cfg: SuiteConfig, task: str, head: str, seed: int) -> Path:
    return Path(cfg.runs_dir) / f"{task.replace('/', '_')}_{head}_{cfg.preset}_{cfg.steps}steps_seed{seed}"


def job_key(row: dict) -> tuple:
    return (row.get("kind"), row.get("task"), row.get("head"), row.get("seed"),
            tuple(sorted((row.get("budget") or {}).items())))


def ensure_demos(cfg: SuiteConfig, task: str, progress: bool) -> Path:
    """The task's dataset with at least cfg.demos episodes, collected (or topped up) under a file lock."""
    from mfp.demos.collect import collect
    from mfp.demos.store import DemoStore

    path = dataset_path(cfg, task)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        have = DemoStore.open(path).n_episodes if path.exists() else 0
        if have < cfg.demos:
            collect(task, cfg.demos - have, path, progress=progress)
    return path


def expert_row(cfg: SuiteConfig, task: str, progress: bool) -> dict:
    from mfp.demos.provenance import provenance
    from mfp.demos.seeds import eval_seeds
    from mfp.demos.store import DemoStore

    from .evaluator import evaluate

    point_cloud = DemoStore.open(dataset_path(cfg, task)).attrs.get("point_cloud")
    t0 = time.perf_counter()
    result = evaluate(None, task, eval_seeds(cfg.eval_episodes), progress=progress, point_cloud=point_cloud,
                      workers=cfg.eval_workers)
    return {"kind": "expert", "task": task, "group": task_group(task), "head": None, "seed": None,
            "budget": cfg.expert_budget(), "success_rate": result["success_rate"],
            "episodes": _compact(result["episodes"]), "eval_seconds": time.perf_counter() - t0,
            "provenance": provenance()}


def _compact(episodes: list[dict]) -> list[list]:
    """Per-episode [seed, success, first_success_step]."""
    return [[e["seed"], bool(e["success"]), e["first_success_step"]] for e in episodes]


def train_job(cfg: SuiteConfig, task: str, head: str, seed: int, data: Path, progress: bool) -> tuple[Path, float]:
    """Train (or resume, or skip when finished) one run; its last checkpoint and the seconds spent here."""
    from mfp.policies.config import PolicyConfig
    from mfp.policies.training import TrainConfig, read_checkpoint, train

    from .commands_train import dataset_shapes, simulation_eval_fn

    out = run_dir(cfg, task, head, seed)
    last = out / "last.safetensors"
    if last.exists() and read_checkpoint(last).meta["step"] >= cfg.steps:
        return last, 0.0
    policy_cfg = PolicyConfig.from_dict({"head": head, "unet": {"preset": cfg.preset}, **dataset_shapes(data)})
    train_cfg = TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, amp=cfg.amp, seed=seed, val_ratio=0.0,
                            val_every=0, ckpt_every=max(50, cfg.steps // 4), keep_checkpoints=1)
    eval_fn = simulation_eval_fn(data, cfg.eval_episodes) if cfg.top5_every else None
    t0 = time.perf_counter()
    train(data, policy_cfg, train_cfg, out, resume=last.exists(), eval_fn=eval_fn, eval_every=cfg.top5_every,
          progress=progress)
    return last, time.perf_counter() - t0


def top5_success(run: Path) -> float | None:
    """The papers' figure: mean of the 5 best success rates among the evaluations during training."""
    import json

    history = run / "eval.json"
    if not history.exists():
        return None
    rates = sorted((h["success_rate"] for h in json.loads(history.read_text())), reverse=True)
    return float(sum(rates[:5]) / len(rates[:5])) if rates else None


def policy_row(cfg: SuiteConfig, task: str, head: str, seed: int, progress: bool) -> dict:
    from mfp.demos.provenance import provenance
    from mfp.demos.seeds import eval_seeds
    from mfp.policies.training.checkpoint import load_policy

    from .evaluator import evaluate

    data = ensure_demos(cfg, task, progress)
    ckpt, train_seconds = train_job(cfg, task, head, seed, data, progress)
    policy = load_policy(ckpt, use_ema=True)
    t0 = time.perf_counter()
    result = evaluate(policy, task, eval_seeds(cfg.eval_episodes), progress=progress, workers=cfg.eval_workers,
                      video_dir=ckpt.parent / "videos", n_videos=cfg.videos)
    return {"kind": "policy", "task": task, "group": task_group(task), "head": head, "seed": seed,
            "budget": cfg.budget(), "success_rate": result["success_rate"],
            "inference_ms_p50": result["inference_ms_p50"], "inference_ms_p99": result["inference_ms_p99"],
            "top5_success": top5_success(ckpt.parent), "train_seconds": train_seconds,
            "eval_seconds": time.perf_counter() - t0, "checkpoint": str(ckpt), "step": policy.checkpoint_info["step"],
            "videos": result.get("videos", []), "episodes": _compact(result["episodes"]),
            "provenance": provenance()}


def suite_jobs(cfg: SuiteConfig) -> list[tuple[str, str | None, int | None]]:
    """(task, head, seed) in run order: seed by seed, task by task; (task, None, None) is the expert's job."""
    jobs = []
    for i, seed in enumerate(cfg.seeds):
        for task in cfg.tasks:
            if cfg.expert and i == 0:
                jobs.append((task, None, None))
            jobs.extend((task, head, seed) for head in cfg.heads)
    return jobs


def run_suite(cfg: SuiteConfig, progress: bool = True, log=print) -> SuiteProgress:
    """Run every job not yet in the results file, appending each result as it finishes."""
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    results = ResultsFile(cfg.results)
    report = SuiteProgress()
    jobs = suite_jobs(cfg)
    for n, (task, head, seed) in enumerate(jobs, start=1):
        key = job_key({"kind": "expert" if head is None else "policy", "task": task, "head": head, "seed": seed,
                       "budget": cfg.expert_budget() if head is None else cfg.budget()})
        name = f"{task} expert" if head is None else f"{task} {head} seed {seed}"
        if key in {job_key(r) for r in results.rows()}:
            report.skipped.append(name)
            continue
        log(f"[suite {n}/{len(jobs)}] {name}")
        if head is None:
            ensure_demos(cfg, task, progress)
            row = expert_row(cfg, task, progress)
        else:
            row = policy_row(cfg, task, head, seed, progress)
        results.append(row)
        report.done.append(row)
        log(f"[suite {n}/{len(jobs)}] {name}: success {row['success_rate']:.0%} -> {results.path}")
    return report


def config_from_dict(d: dict) -> SuiteConfig:
    names = {f.name for f in dataclasses.fields(SuiteConfig)}
    return SuiteConfig(**{k: v for k, v in d.items() if k in names})
