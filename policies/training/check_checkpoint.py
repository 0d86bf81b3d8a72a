"""`mfp check CHECKPOINT | RUN_DIR`: is a checkpoint sound, and what does it hold.

    report = check_checkpoint("runs/drawer-mf/last.safetensors")   # head, configs, step, data, parameters, EMA
    report = check_run("runs/drawer-mf")                            # every checkpoint + the run's JSON files

Nothing here executes code from the file: the safetensors header is parsed as JSON by hand first (so a
truncated or foreign file gets a precise one-line problem), pickle files (`.pt`, `.pth`, `.ckpt`, ..., or any
file that starts like a pickle or a torch.save zip) are refused unread, tensors are read one at a time.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mfp.demos.check_dataset import CheckReport, one_line

from .checkpoint import LAST_NAME, CheckpointError, read_checkpoint

PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib")
MAX_HEADER_BYTES = 100_000_000   # safetensors' own limit
RUN_JSON = ("config.json", "result.json", "eval.json")


def refuse_pickle(path: Path) -> str | None:
    """Why `path` must not be opened (a pickle: loading it can run any code), or None. Reads 4 bytes at most."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return (f"{path}: refused: a '{path.suffix}' file is a pickle (torch.save), and unpickling runs code from "
                f"the file; mfp never unpickles. mfp checkpoints are .safetensors files written by `mfp train`")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError:
        return None
    if len(magic) >= 2 and magic[0] == 0x80 and 2 <= magic[1] <= 5:
        return f"{path}: refused: the file is a pickle (protocol {magic[1]}); mfp never unpickles"
    if magic == b"PK\x03\x04":
        return (f"{path}: refused: the file is a zip archive, as torch.save writes (a pickle inside); "
                f"mfp never unpickles")
    return None


def sniff_safetensors(path: Path) -> tuple[str | None, dict | None]:
    """(problem, header) from the raw bytes: length prefix, JSON header, tensor extents vs the file size."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            return (f"{path}: truncated or empty ({size} bytes; a safetensors file starts with an 8-byte header "
                    f"length)"), None
        n = int.from_bytes(prefix, "little")
        if n > MAX_HEADER_BYTES or n < 2:
            return (f"{path}: not a safetensors file (its first 8 bytes give a header length of {n}); "
                    f"mfp checkpoints are written by `mfp train`"), None
        if 8 + n > size:
            return (f"{path}: truncated: the header needs {8 + n} bytes, the file has {size} (an interrupted copy? "
                    f"use an earlier checkpoint)"), None
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("not a JSON object")
    except (UnicodeDecodeError, ValueError) as e:
        return f"{path}: not a safetensors file, or a damaged one (its header is not JSON: {one_line(e)})", None
    ends = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            return f"{path}: damaged safetensors header (tensor {name!r} has no valid data_offsets)", None
        ends.append(offsets[1])
    data_end = 8 + n + max(ends, default=0)
    if data_end > size:
        return (f"{path}: truncated: its tensors need {data_end} bytes, the file has {size} (cut short by a crash "
                f"or an interrupted copy; use an earlier checkpoint: periodic ones sit next to it)"), None
    if data_end < size:
        return f"{path}: damaged: {size - data_end} unexpected bytes after the tensors", None
    return None, header


def check_checkpoint(path) -> CheckReport:
    """Validate one checkpoint file; never raises for a damaged or foreign file (the report says why)."""
    path = Path(path)
    report = CheckReport("checkpoint", path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    if path.is_dir():
        raise ValueError(f"{path}: a folder: give a checkpoint file (or check the run folder)")
    refused = refuse_pickle(path)
    if refused:
        report.problem(refused)
        return report
    problem, header = sniff_safetensors(path)
    if problem:
        report.problem(problem)
        return report
    try:
        ckpt = read_checkpoint(path)
    except CheckpointError as e:
        report.problem(e)
        return report
    meta = ckpt.meta
    if not isinstance(meta, dict):
        report.problem(f"{path}: damaged checkpoint metadata (not a JSON object)")
        return report
    try:
        step = int(meta["step"])
    except (KeyError, TypeError, ValueError):
        report.problem(f"{path}: the checkpoint metadata lacks a valid 'step' (got {meta.get('step')!r})")
        step = None
    policy_cfg = train_cfg = None
    try:
        policy_cfg = ckpt.policy_config
    except (CheckpointError, KeyError) as e:
        report.problem(e if isinstance(e, CheckpointError) else f"{path}: the checkpoint holds no policy config")
    try:
        train_cfg = ckpt.train_config
    except (CheckpointError, KeyError) as e:
        report.problem(e if isinstance(e, CheckpointError) else f"{path}: the checkpoint holds no train config")
    data = meta.get("data") if isinstance(meta.get("data"), dict) else {}

    shapes = {k: _shape(header, k) for k in ckpt.keys}
    n_params = _check_weights_fit(report, path, policy_cfg, shapes)
    has_ema = ckpt.has("ema/")
    if train_cfg is not None and train_cfg.ema and not has_ema:
        report.problem(f"{path}: its train config keeps an EMA but the file holds no EMA weights (ema/*)")
    _check_finite(report, ckpt)
    if policy_cfg is not None:
        _check_data_shapes(report, path, policy_cfg, data)

    head = policy_cfg.head if policy_cfg is not None else (meta.get("policy_config") or {}).get("head")
    report.info.append(f"head: {head}" + (f", UNet {policy_cfg.unet.preset} {list(policy_cfg.unet.down_dims)}, "
                                           f"horizon {policy_cfg.horizon}, obs steps {policy_cfg.n_obs_steps}, "
                                           f"action steps {policy_cfg.n_action_steps}" if policy_cfg else ""))
    if policy_cfg is not None:
        report.info.append(f"shapes: {policy_cfg.n_points} points, agent_dim {policy_cfg.agent_dim}, "
                           f"action_dim {policy_cfg.action_dim}")
    if train_cfg is not None:
        report.info.append(f"train: step {step} of {train_cfg.steps}, batch {train_cfg.batch_size}, lr {train_cfg.lr}, "
                           f"amp {train_cfg.amp}, seed {train_cfg.seed}")
    else:
        report.info.append(f"step: {step}")
    fingerprint = str(data.get("fingerprint") or "")
    report.info.append(f"data: task {data.get('task')}, fingerprint {fingerprint[:12] or '(none)'}, "
                       f"{data.get('n_episodes')} episodes, {data.get('path')}")
    report.info.append(f"parameters: {n_params if n_params is not None else '?'}; EMA weights: "
                       f"{'yes' if has_ema else 'no'}; optimiser state: {'yes' if ckpt.has('optim/') else 'no'}; "
                       f"{len(ckpt.keys)} tensors, {path.stat().st_size / 1e6:.1f} MB")
    history = meta.get("eval_history")
    if isinstance(history, list) and history:
        report.info.append(f"last evaluation: {one_line(json.dumps(history[-1], default=str))[:200]}")
    report.details = {"head": head, "step": step, "parameters": n_params, "ema": has_ema,
                      "policy_config": meta.get("policy_config"), "train_config": meta.get("train_config"),
                      "data": {k: data.get(k) for k in ("task", "fingerprint", "path", "n_episodes", "point_cloud")}}
    return report


def _shape(header: dict, key: str) -> tuple | None:
    entry = header.get(key)
    return tuple(entry["shape"]) if isinstance(entry, dict) and isinstance(entry.get("shape"), list) else None


def _check_weights_fit(report: CheckReport, path: Path, policy_cfg, shapes: dict[str, tuple | None]) -> int | None:
    """Do model/* and ema/* match the policy the config describes (built on the meta device: no memory)?"""
    if policy_cfg is None:
        return None
    from mfp.policies.factory import build_policy

    try:
        with torch.device("meta"):
            policy = build_policy(policy_cfg)
    except Exception as e:  # a config that validates but cannot be built is itself the problem
        report.problem(f"{path}: its policy config cannot be built: {type(e).__name__}: {e}")
        return None
    expected = {f"model/{k}": tuple(v.shape) for k, v in policy.state_dict().items()}
    # The normaliser's statistics are buffers created when it is fitted (any shape it was fitted with).
    expected.update({f"model/normalizer.{key}__{stat}": None for key in policy.normalizer_keys
                     for stat in ("scale", "offset", "min", "max")})
    params = {f"ema/{k}": tuple(p.shape) for k, p in policy.named_parameters()}
    n_params = sum(p.numel() for p in policy.parameters())
    for prefix, want in (("model/", expected), ("ema/", params)):
        have = {k: s for k, s in shapes.items() if k.startswith(prefix)}
        if prefix == "ema/" and not have:
            continue
        missing, unexpected = sorted(set(want) - set(have)), sorted(set(have) - set(want))
        wrong = [f"{k} {have[k]} (expected {want[k]})" for k in sorted(set(want) & set(have))
                 if want[k] is not None and have[k] != want[k]]
        if missing or unexpected or wrong:
            report.problem(f"{path}: the {prefix[:-1]} weights do not fit the {policy_cfg.head} policy its config "
                           f"describes: {len(missing)} missing {missing[:3]}, {len(unexpected)} unexpected "
                           f"{unexpected[:3]}, {len(wrong)} of another shape {wrong[:3]}")
    return n_params


def _check_finite(report: CheckReport, ckpt) -> None:
    """NaN / inf in the weights, EMA weights or optimiser state (read one tensor at a time)."""
    from safetensors import safe_open

    bad: list[str] = []
    try:
        with safe_open(str(ckpt.path), framework="pt") as f:
            for key in ckpt.keys:
                if key.startswith("rng/"):
                    continue
                t = f.get_tensor(key)
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    bad.append(f"{key} ({int((~torch.isfinite(t)).sum())} of {t.numel()})")
    except Exception as e:
        report.problem(f"{ckpt.path}: cannot read its tensors ({type(e).__name__}: {e})")
        return
    if bad:
        report.problem(f"{ckpt.path}: non-finite values in {len(bad)} tensor(s): {', '.join(bad[:5])}"
                       + (" ..." if len(bad) > 5 else ""))


def _check_data_shapes(report: CheckReport, path: Path, cfg, data: dict) -> None:
    shapes = data.get("shapes")
    if not isinstance(shapes, dict):
        report.warn(f"{path}: the checkpoint records no dataset shapes")
        return
    want = {"point_cloud": cfg.n_points, "agent_pos": cfg.agent_dim, "action": cfg.action_dim}
    for key, n in want.items():
        got = shapes.get(key)
        if isinstance(got, list) and got and got[0] != n:
            report.problem(f"{path}: its policy config expects {key} of size {n}, its dataset had {got}")
    if not data.get("fingerprint"):
        report.warn(f"{path}: the checkpoint records no data fingerprint")
        return
    source = Path(str(data.get("path") or ""))
    if data.get("path") and source.exists():
        from mfp.demos.store import DemoStoreError

        from .trainer import data_fingerprint

        try:
            now = data_fingerprint(source)
        except (DemoStoreError, OSError) as e:
            report.warn(f"{path}: its training dataset {source} cannot be opened now: {e}")
            return
        if now != data["fingerprint"]:
            report.warn(f"{path}: its training dataset {source} changed since training (fingerprint "
                        f"{str(data['fingerprint'])[:12]} then, {now[:12]} now: episodes appended or replaced?)")


def check_run(path) -> CheckReport:
    """A training run folder: every checkpoint, the JSON files parse, TensorBoard logs present (warning)."""
    path = Path(path)
    report = CheckReport("run", path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such run folder")
    checkpoints = sorted(path.glob("*.safetensors"), key=lambda p: (p.name == LAST_NAME, p.name))
    pickles = sorted(p for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    for p in checkpoints:
        report.children.append(check_checkpoint(p))
    if pickles:
        report.warn(f"{path}: not checked, never unpickled: {', '.join(p.name for p in pickles)} (pickle files are "
                    f"not mfp checkpoints)")
    if not (path / LAST_NAME).exists():
        report.problem(f"{path}: no {LAST_NAME} (training never saved a checkpoint, or it was deleted)")
    for p in sorted(set(path.glob("*.json")) | {path / n for n in RUN_JSON if (path / n).exists()}):
        try:
            json.loads(p.read_text())
        except (UnicodeDecodeError, ValueError) as e:
            report.problem(f"{p}: not valid JSON ({one_line(e)}); a file cut short?")
    partial = sorted(p.name for p in path.glob(".*.partial"))
    if partial:
        report.warn(f"{path}: temporary files left by a killed write (safe to delete): {', '.join(partial[:5])}")
    if not (path / "config.json").exists():
        report.warn(f"{path}: no config.json")
    tb = path / "tb"
    if not tb.is_dir() or not any(tb.iterdir()):
        report.warn(f"{path}: no TensorBoard logs (tb/)")
    steps = {c.path.name: c.details.get("step") for c in report.children if c.details}
    report.info.append(f"{len(checkpoints)} checkpoint(s): " + ", ".join(f"{n} (step {s})" for n, s in steps.items()))
    evals = sorted(path.glob("eval*.json"))
    if evals:
        report.info.append("evaluations: " + ", ".join(p.name for p in evals))
    report.details = {"checkpoints": steps, "evaluations": [p.name for p in evals]}
    return report


def looks_like_run(path) -> bool:
    path = Path(path)
    return path.is_dir() and (any(path.glob("*.safetensors")) or (path / "config.json").exists())

