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

from mfp.eval.suite.published import task_group
from mfp.eval.suite.results_file import ResultsFile, row_kind
from mfp.policies.config_checks import check_fields
from mfp.policies.heads import head_names


@dataclass
class SuiteConfig:
    tasks: tuple[str, ...]
    heads: tuple[str, ...] = ("meanflow", "flowpolicy", "dp3")
    seeds: tuple[int, ...] = (0, 1)
    steps: int = 400                      # the training budget: optimiser steps, the same for every head
    batch_size: int = 64
    preset: str = "small"
    amp: str = "auto"                     # "auto": bf16 where the device runs it natively (precision.py)
    demos: int = 10                       # demonstrations per task
    eval_episodes: int = 20
    eval_workers: int = 1
    videos: int = 1                       # episodes recorded as videos per evaluation
    expert: bool = True                   # also evaluate the expert on the evaluation episodes (once per task)
    top5_every: int = 0                   # >0: evaluate every this many steps too, for the papers' top-5 figure
    threads: int | None = None            # torch CPU threads for training (None: precision.default_threads())
    data_dir: str = "data/demos"
    runs_dir: str = "runs/suite"
    results: str = "runs/suite/results.jsonl"
    variants: tuple[str, ...] = ()        # "LABEL=HEAD:KEY=VALUE,..." (suite_variants.py); labels go in `heads`

    def __post_init__(self) -> None:
        check_fields(self)
        from mfp.envs import check_task_name

        self.tasks, self.heads, self.variants = tuple(self.tasks), tuple(self.heads), tuple(self.variants)
        self.seeds = tuple(int(s) for s in self.seeds)
        if not self.tasks:
            raise ValueError("the suite needs at least one task")
        for t in self.tasks:
            check_task_name(t)
        if not self.heads:
            raise ValueError(f"the suite needs at least one head; choose from {list(head_names())}")
        self.variant_of(self.heads[0])   # parses and checks every head name and variant spec
        for name in ("steps", "batch_size", "demos", "eval_episodes", "eval_workers"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"suite {name} must be an integer >= 1, got {getattr(self, name)!r}")
        if self.top5_every < 0 or self.videos < 0:
            raise ValueError("suite top5_every and videos must be >= 0")
        if len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise ValueError(f"suite seeds must be distinct and >= 0, got {self.seeds}")
        from mfp.policies.training.precision import AMP_CHOICES

        if self.amp not in AMP_CHOICES:
            raise ValueError(f"suite amp must be one of {AMP_CHOICES}, got {self.amp!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"suite threads must be >= 1, got {self.threads}")

    def precision(self):
        """The precision runs train in (precision.AmpChoice): `amp`, "auto" resolved for this machine's device."""
        import torch

        from mfp.policies.training.precision import resolve_amp

        return resolve_amp(self.amp, "cuda" if torch.cuda.is_available() else "cpu", warn=False)

    def variant_of(self, head: str):
        """The suite_variants.Variant that `head` (a head name or a variant label) trains."""
        from mfp.eval.suite.variants import resolve_variants

        return resolve_variants(self.heads, self.variants, head_names())[head]

    def row_variant(self, head: str) -> dict | None:
        """What a results row records of `head`'s variant: None for a head with its defaults."""
        variant = self.variant_of(head)      # a head's own name is never a variant label (resolve_variants)
        return None if variant.label == variant.head else variant.overrides()

    def expert_budget(self) -> dict:
        """The expert's results depend only on the evaluation episodes."""
        return {"eval_episodes": self.eval_episodes}

    def budget(self) -> dict:
        """What makes two results comparable: a job is done when a row with this budget exists."""
        return {"steps": self.steps, "batch_size": self.batch_size, "preset": self.preset, "amp": self.precision().amp,
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
    import json

    return (row_kind(row), row.get("task"), row.get("head"), row.get("seed"),
            tuple(sorted((row.get("budget") or {}).items())), json.dumps(row.get("variant"), sort_keys=True))


HELDOUT_EPISODES = 2           # demonstrations never trained on, for the chunk diagnostics of every run
HELDOUT_SEED_START = 500_000   # in the demonstration seed range, far after the training demonstrations' seeds


def heldout_path(cfg: SuiteConfig, task: str) -> Path:
    return Path(cfg.data_dir) / f"{task.replace('/', '_')}-heldout.zarr"


def ensure_heldout(cfg: SuiteConfig, task: str, progress: bool) -> Path:
    """The task's held-out demonstrations (HELDOUT_EPISODES from HELDOUT_SEED_START), collected once under a lock."""
    return _ensure_episodes(heldout_path(cfg, task), task, HELDOUT_EPISODES, progress, seed_start=HELDOUT_SEED_START)


def ensure_demos(cfg: SuiteConfig, task: str, progress: bool) -> Path:
    """The task's dataset with at least cfg.demos episodes, collected (or topped up) under a file lock."""
    return _ensure_episodes(dataset_path(cfg, task), task, cfg.demos, progress)


def _ensure_episodes(path: Path, task: str, episodes: int, progress: bool, seed_start: int | None = None) -> Path:
    """`path` holding at least `episodes` expert episodes of `task`, collected or topped up under a file lock (so
    suite processes sharing a data folder never collect twice); a new store starts at `seed_start`."""
    from mfp.demos.collect import collect
    from mfp.demos.store import DemoStore

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        have = DemoStore.open(path).n_episodes if path.exists() else 0
        if have < episodes:
            collect(task, episodes - have, path, seed_start=None if have else seed_start, progress=progress)
    return path


def expert_row(cfg: SuiteConfig, task: str, progress: bool) -> dict:
    from mfp.demos.provenance import provenance
    from mfp.demos.seeds import eval_seeds
    from mfp.demos.store import DemoStore
    from mfp.eval.sim.evaluator import evaluate

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
    from mfp.eval.datasets import dataset_shapes
    from mfp.eval.sim.training_eval import simulation_eval_fn
    from mfp.policies.config import PolicyConfig
    from mfp.policies.training import TrainConfig, read_checkpoint, train

    out = run_dir(cfg, task, head, seed)
    last = out / "last.safetensors"
    if last.exists() and read_checkpoint(last).meta["step"] >= cfg.steps:
        return last, 0.0
    variant = cfg.variant_of(head)
    policy_cfg = PolicyConfig.from_dict(variant.policy_dict({"unet": {"preset": cfg.preset}, **dataset_shapes(data)}))
    train_cfg = TrainConfig(**variant.train, steps=cfg.steps, batch_size=cfg.batch_size, amp=cfg.amp, seed=seed,
                            val_ratio=0.0, val_every=0, ckpt_every=max(50, cfg.steps // 4), keep_checkpoints=1)
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
    from mfp.eval.sim.evaluator import evaluate
    from mfp.policies.diagnostics import chunk_diagnostics, demo_windows
    from mfp.policies.training.checkpoint import load_policy

    data = ensure_demos(cfg, task, progress)
    ckpt, train_seconds = train_job(cfg, task, head, seed, data, progress)
    policy = load_policy(ckpt, use_ema=True)
    diagnostics = chunk_diagnostics(policy, demo_windows(ensure_heldout(cfg, task, progress), policy.config))
    t0 = time.perf_counter()
    result = evaluate(policy, task, eval_seeds(cfg.eval_episodes), progress=progress, workers=cfg.eval_workers,
                      video_dir=ckpt.parent / "videos", n_videos=cfg.videos)
    return {"kind": "policy", "task": task, "group": task_group(task), "head": head, "seed": seed,
            "budget": cfg.budget(), "variant": cfg.row_variant(head), "head_name": policy.config.head,
            "success_rate": result["success_rate"], "chunk_error": diagnostics["chunk_error"],
            "noise_spread": diagnostics["noise_spread"],
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
    """Run every job not yet in the results file, appending each result as it finishes. Training runs with
    cfg.threads torch threads (default: precision.default_threads(), restored afterwards); evaluation workers with
    one each."""
    from mfp.policies.training.precision import default_threads, threads_reason, torch_threads

    threads = cfg.threads or default_threads()
    log(cfg.precision().describe())
    log(threads_reason(threads, given=cfg.threads is not None))
    with torch_threads(threads):
        return _run_jobs(cfg, progress, log)


class _DoneJobs:
    """The job keys already in the results file. The file is re-read only when it has changed since the last look
    (another suite process sharing it may have appended a row)."""

    def __init__(self, results: ResultsFile):
        self.results, self._stamp, self._keys = results, None, set()

    def __contains__(self, key: tuple) -> bool:
        path = self.results.path
        stat = path.stat() if path.exists() else None
        stamp = (stat.st_size, stat.st_mtime_ns) if stat else None
        if stamp != self._stamp:
            self._stamp, self._keys = stamp, {job_key(r) for r in self.results.rows()}
        return key in self._keys


def _job_keys(cfg: SuiteConfig, jobs: list) -> list[tuple]:
    """The results-file key of each job, computed once (the budget resolves the precision)."""
    budget, expert_budget = cfg.budget(), cfg.expert_budget()
    return [job_key({"kind": "expert" if head is None else "policy", "task": task, "head": head, "seed": seed,
                     "budget": expert_budget if head is None else budget,
                     "variant": None if head is None else cfg.row_variant(head)})
            for task, head, seed in jobs]


def _run_jobs(cfg: SuiteConfig, progress: bool, log) -> SuiteProgress:
    results = ResultsFile(cfg.results)
    report = SuiteProgress()
    jobs = suite_jobs(cfg)
    done = _DoneJobs(results)
    for n, ((task, head, seed), key) in enumerate(zip(jobs, _job_keys(cfg, jobs)), start=1):
        name = f"{task} expert" if head is None else f"{task} {head} seed {seed}"
        if key in done:
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
