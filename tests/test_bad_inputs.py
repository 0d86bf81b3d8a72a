"""Bad inputs, tried systematically: damaged datasets, out-of-range configs, damaged or foreign checkpoints, a
pickle that would run code, odd task names and paths. Each must give a clear error: the expected exception type
(or an unsound `mfp check` report), one line, naming the file / key / field; never a traceback from deep inside
zarr or torch, never silent acceptance.

Counts per category (inputs tried / clear errors) are written to $MFP_RELIABILITY_OUT/bad_inputs.json when the
variable (a folder) is set:
    MFP_RELIABILITY_OUT=runs/reliability .venv/bin/python -m pytest tests/test_bad_inputs.py
"""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mfp.demos.check_dataset import check_dataset
from mfp.demos.store import DemoStore, DemoStoreError
from mfp.eval.cli import main
from mfp.policies.training.check_checkpoint import check_checkpoint

SETTINGS = settings(max_examples=25, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# --- the tally -------------------------------------------------------------------------------------------------
TALLY: dict[str, dict[str, int]] = {}


def record(category: str, clear: bool) -> bool:
    t = TALLY.setdefault(category, {"tried": 0, "clear_error": 0})
    t["tried"] += 1
    t["clear_error"] += int(clear)
    return clear


@pytest.fixture(scope="module", autouse=True)
def _write_tally():
    yield
    out = os.environ.get("MFP_RELIABILITY_OUT")
    if out:
        out = Path(out) / "bad_inputs.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        rows = {k: dict(v, unclear=v["tried"] - v["clear_error"]) for k, v in sorted(TALLY.items())}
        Path(out).write_text(json.dumps({"categories": rows, "source": "tests/test_bad_inputs.py",
                                         "clear_error": "the expected exception type (or an unsound `mfp check` "
                                                        "report), one line, naming the file / key / field"},
                                        indent=2) + "\n")


def is_clear(msg: str, *needles: str) -> bool:
    return "\n" not in msg.strip() and "Traceback" not in msg and all(n in msg for n in needles)


def expect_error(category: str, fn, exc_types, *needles: str) -> str:
    """fn() must raise one of exc_types with a one-line message holding every needle."""
    try:
        fn()
    except exc_types as e:
        msg = str(e)
        assert record(category, is_clear(msg, *needles)), f"unclear error for {category}: {msg!r} lacks {needles}"
        return msg
    except Exception as e:
        record(category, False)
        raise AssertionError(f"{category}: raised {type(e).__name__} ({e}), not {exc_types}") from e
    record(category, False)
    raise AssertionError(f"{category}: accepted silently (needles {needles})")


def expect_unsound(category: str, report, *needles: str) -> str:
    """A check report must be unsound with a one-line problem holding every needle."""
    hits = [p for p in report.all_problems() if is_clear(p, *needles)]
    assert record(category, not report.ok and bool(hits)), \
        f"{category}: report ok={report.ok}, problems {report.all_problems()} lack {needles}"
    return hits[0]


# --- datasets --------------------------------------------------------------------------------------------------
def _episode(t: int, seed: int, n: int = 16) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"point_cloud": rng.normal(size=(t, n, 3)).astype(np.float32),
            "state": rng.normal(size=(t, 9)).astype(np.float32),
            "action": rng.uniform(-1, 1, (t, 4)).astype(np.float32)}


@pytest.fixture(scope="module")
def good_store(tmp_path_factory) -> Path:
    """3 episodes (lengths 150, 180, 90): chunks of 200 steps, so episodes share and span chunk files."""
    path = tmp_path_factory.mktemp("good") / "good.zarr"
    store = DemoStore.create(path, attrs={"task": "synthetic/line", "point_cloud": {"num_points": 16}})
    for i, t in enumerate((150, 180, 90)):
        store.add_episode(_episode(t, i))
    assert DemoStore.open(path).verify() == []
    return path


def _copy(good: Path, tmp: Path, name: str) -> Path:
    dst = tmp / name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(good, dst)
    return dst


def _replace_array(path: Path, key: str, value: np.ndarray) -> None:
    root = zarr.open_group(str(path), mode="r+", zarr_format=2)
    group, name = key.split("/")
    del root[group][name]
    root[group].create_array(name, shape=value.shape, dtype=value.dtype)[...] = value


STRUCTURE_DAMAGE = ["missing_key", "wrong_dtype", "wrong_ndim", "wrong_point_dim", "short_array", "ends_not_increasing",
                    "ends_negative", "ends_float", "ends_2d", "missing_meta", "damaged_zarray", "damaged_group"]


@SETTINGS
@given(damage=st.sampled_from(STRUCTURE_DAMAGE), key=st.sampled_from(["point_cloud", "state", "action"]),
       data=st.data())
def test_damaged_dataset_structure_is_refused_naming_file_and_key(good_store, tmp_path, damage, key, data):
    path = _copy(good_store, tmp_path, "bad.zarr")
    n = 420
    needle = f"data/{key}"
    if damage == "missing_key":
        shutil.rmtree(path / "data" / key)
    elif damage == "wrong_dtype":
        dtype = data.draw(st.sampled_from(["<U3", "bool", "complex64"]))
        _replace_array(path, f"data/{key}", np.zeros((n, 16, 3) if key == "point_cloud" else (n, 4), dtype))
    elif damage == "wrong_ndim":
        _replace_array(path, f"data/{key}", np.zeros((n,) + (() if key != "point_cloud" else (16,)), np.float32))
    elif damage == "wrong_point_dim":
        key, needle = "point_cloud", "data/point_cloud"
        width = data.draw(st.sampled_from([1, 2, 4, 5, 7]))
        _replace_array(path, "data/point_cloud", np.zeros((n, 16, width), np.float32))
    elif damage == "short_array":
        arr = zarr.open_group(str(path), mode="r+", zarr_format=2)[f"data/{key}"]
        arr.resize((data.draw(st.integers(0, n - 1)),) + arr.shape[1:])
    else:
        needle = "episode_ends"
        if damage == "ends_not_increasing":
            ends = data.draw(st.lists(st.integers(1, n), min_size=2, max_size=6))
            assume(any(b <= a for a, b in zip(ends, ends[1:])))
            _replace_array(path, "meta/episode_ends", np.asarray(ends, np.int64))
        elif damage == "ends_negative":
            _replace_array(path, "meta/episode_ends", np.asarray([data.draw(st.integers(-10**9, -1)), n], np.int64))
        elif damage == "ends_float":
            _replace_array(path, "meta/episode_ends", np.asarray([150.5, 330.0, 420.0]))
        elif damage == "ends_2d":
            _replace_array(path, "meta/episode_ends", np.asarray([[150, 330, 420]], np.int64))
        elif damage == "missing_meta":
            shutil.rmtree(path / "meta")
        elif damage == "damaged_zarray":
            target = data.draw(st.sampled_from([f"data/{key}/.zarray", "meta/episode_ends/.zarray"]))
            needle = target.rsplit("/", 1)[0]
            raw = (path / target).read_bytes()
            (path / target).write_bytes(raw[: data.draw(st.integers(0, len(raw) - 2))])
        elif damage == "damaged_group":
            target = data.draw(st.sampled_from([".zgroup", ".zattrs", "data/.zgroup", "data/.zattrs"]))
            needle = "" if "/" not in target else "'data'"
            raw = (path / target).read_bytes().rstrip()      # any proper prefix of a JSON object is invalid JSON
            (path / target).write_bytes(raw[: data.draw(st.integers(0, len(raw) - 1))])
    category = "dataset: structure (keys, dtypes, shapes, episode_ends, metadata)"
    expect_error(category, lambda: DemoStore.open(path), DemoStoreError, str(path), needle)
    assert main(["check", str(path)]) == 1


CHUNK_DAMAGE = ["delete", "truncate", "garbage", "swap"]


@SETTINGS
@given(damage=st.sampled_from(CHUNK_DAMAGE), key=st.sampled_from(["point_cloud", "state", "action"]),
       chunk=st.sampled_from([0, 1, 2]), data=st.data())
def test_damaged_chunk_files_are_caught_by_checksums(good_store, tmp_path, damage, key, chunk, data):
    """Chunk files: 0 holds steps 0..199 (episodes 0, 1), 1 holds 200..399 (1, 2), 2 holds 400..419 (2)."""
    path = _copy(good_store, tmp_path, "bad.zarr")
    name = f"{chunk}.0.0" if key == "point_cloud" else f"{chunk}.0"
    f = path / "data" / key / name
    raw = f.read_bytes()
    if damage == "delete":
        f.unlink()
    elif damage == "truncate":
        f.write_bytes(raw[: data.draw(st.integers(0, len(raw) - 1))])
    elif damage == "garbage":
        f.write_bytes(data.draw(st.binary(min_size=1, max_size=64)))
    else:  # a well-formed chunk from another place (a bad copy): decodes fine, wrong content
        other = path / "data" / key / (name.replace(str(chunk), str((chunk + 1) % 3), 1))
        f.write_bytes(other.read_bytes())
    store = DemoStore.open(path)       # the structure is intact
    category = "dataset: chunk files (deleted, truncated, garbage, swapped)"
    problems = store.verify()
    hits = [p for p in problems if is_clear(p, str(f), f"'data/{key}'")]
    assert record(category, bool(hits)), f"{damage} {f}: {problems}"
    assert main(["check", str(path)]) == 1


@SETTINGS
@given(key=st.sampled_from(["point_cloud", "state", "action"]), value=st.sampled_from([np.nan, np.inf, -np.inf]),
       episode=st.integers(0, 2), where=st.floats(0, 0.999))
def test_nan_and_inf_values_are_found_naming_key_and_episode(tmp_path, key, value, episode, where):
    path = tmp_path / "nan.zarr"
    shutil.rmtree(path, ignore_errors=True)
    store = DemoStore.create(path, attrs={"task": "t"})
    for i, t in enumerate((30, 40, 20)):
        ep = _episode(t, i)
        if i == episode:
            ep[key].reshape(-1)[int(where * ep[key].size)] = value
        store.add_episode(ep)
    kind = "NaN" if np.isnan(value) else "inf"
    expect_unsound("dataset: NaN / inf values", check_dataset(path), str(path), f"'data/{key}'",
                   f"1 {kind}", f"episode(s) [{episode}]")


# --- configs ---------------------------------------------------------------------------------------------------
def _cfg_error(category: str, build, field_name: str) -> None:
    expect_error(category, build, ValueError, field_name)


# (field, strategy of finite, well-typed but out-of-range values)
POLICY_FIELDS = {
    "horizon": st.integers(-5, 0), "n_obs_steps": st.integers(-5, 0), "n_action_steps": st.integers(-5, 0),
    "n_points": st.integers(-5, 0), "agent_dim": st.integers(-5, 0), "action_dim": st.integers(-5, 0),
    "head": st.text(max_size=8).filter(lambda s: s not in ("meanflow", "flowpolicy", "dp3", "splitmeanflow")),
}
HEAD_FIELDS = {
    "meanflow": {"ratio_r_eq_t": st.floats(1.0001, 1e6) | st.floats(-1e6, -1e-6), "time_std": st.floats(-1e6, 0),
                 "adaptive_p": st.floats(-1e6, -1e-6), "adaptive_c": st.floats(-1e6, 0),
                 "sample_steps": st.integers(-9, 0), "p_uncond": st.floats(1, 1e6) | st.floats(-1e6, -1e-6),
                 "error_reduction": st.sampled_from(["max", ""])},
    "flowpolicy": {"alpha": st.floats(-1e6, -1e-6), "num_segments": st.integers(-9, 0), "delta": st.floats(1, 1e6),
                   "eps": st.floats(1, 1e6), "sample_steps": st.integers(-9, 0)},
    "dp3": {"num_train_timesteps": st.integers(-9, 0), "num_inference_steps": st.integers(101, 10**6),
            "prediction_type": st.sampled_from(["v", "x0"]), "beta_schedule": st.sampled_from(["cosine", ""])},
}
NESTED_FIELDS = {
    ("encoder", "point_out_dim"): st.integers(-9, 0), ("encoder", "point_dims"): st.just(()),
    ("unet", "kernel_size"): st.sampled_from([0, 2, 4, -1]), ("unet", "preset"): st.sampled_from(["huge", ""]),
    ("unet", "time_scale"): st.floats(-1e6, 0), ("unet", "time_combine"): st.just("product"),
    ("unet", "down_dims"): st.lists(st.integers(1, 7), min_size=1, max_size=3),   # not multiples of n_groups 8
    ("dispersive", "weight"): st.floats(-1e6, -1e-6), ("dispersive", "temperature"): st.floats(-1e6, 0),
    ("dispersive", "variant"): st.just("l1"), ("dispersive", "blocks"): st.just([0, 0]),
}


@SETTINGS
@given(data=st.data())
def test_policy_config_out_of_range_values_name_the_field(data):
    from mfp.policies.config import PolicyConfig

    what = data.draw(st.sampled_from(["top", "head", "nested"]))
    category = "config: PolicyConfig out-of-range values"
    if what == "top":
        name = data.draw(st.sampled_from(sorted(POLICY_FIELDS)))
        value = data.draw(POLICY_FIELDS[name])
        _cfg_error(category, lambda: PolicyConfig(**{name: value}), name)
    elif what == "head":
        head = data.draw(st.sampled_from(sorted(HEAD_FIELDS)))
        name = data.draw(st.sampled_from(sorted(HEAD_FIELDS[head])))
        value = data.draw(HEAD_FIELDS[head][name])
        _cfg_error(category, lambda: PolicyConfig(head=head, head_cfg={name: value}), f"{head}.{name}")
    else:
        group, name = data.draw(st.sampled_from(sorted(NESTED_FIELDS)))
        value = data.draw(NESTED_FIELDS[(group, name)])
        _cfg_error(category, lambda: PolicyConfig.from_dict({group: {name: value}}), f"{group}.{name}")


@SETTINGS
@given(horizon=st.integers(1, 20), n_obs=st.integers(1, 20), n_act=st.integers(1, 20),
       n_down=st.integers(1, 4), block=st.integers(0, 4))
def test_inconsistent_policy_windows_are_refused_exactly_when_invalid(horizon, n_obs, n_act, n_down, block):
    """Valid if and only if the window and UNet invariants hold; otherwise a ValueError naming the fields."""
    from mfp.policies.config import PolicyConfig

    kwargs = dict(horizon=horizon, n_obs_steps=n_obs, n_action_steps=n_act,
                  unet={"preset": "tiny", "down_dims": [8 * 2 ** i for i in range(n_down)]},
                  dispersive={"blocks": [block]})
    invalid = {"n_obs_steps": n_obs > horizon, "n_action_steps": n_act > horizon - n_obs + 1,
               "divisible by": horizon % 2 ** (n_down - 1) != 0, "dispersive.blocks": block >= n_down}
    category = "config: PolicyConfig inconsistent windows / UNet / dispersive blocks"
    if not any(invalid.values()):
        cfg = PolicyConfig.from_dict(kwargs)
        assert cfg.n_action_steps <= cfg.horizon - cfg.n_obs_steps + 1
        return
    msg = expect_error(category, lambda: PolicyConfig.from_dict(kwargs), ValueError)
    # the first failing check names its own fields (they are checked in this order)
    first = next(k for k in ("n_obs_steps", "n_action_steps", "divisible by", "dispersive.blocks") if invalid[k])
    assert first in msg, msg


TRAIN_FIELDS = {
    "steps": st.integers(-9, 0), "batch_size": st.integers(-9, 0), "lr": st.floats(-1e3, 0),
    "betas": st.tuples(st.floats(1, 10), st.floats(0, 0.99)) | st.tuples(st.floats(-1, -1e-6), st.floats(0, 0.99)),
    "weight_decay": st.floats(-1e3, -1e-9), "adam_eps": st.floats(-1, 0), "warmup_steps": st.integers(-9, -1),
    "grad_clip": st.floats(-1e3, -1e-9), "ema_max_decay": st.floats(1, 10), "ema_min_decay": st.floats(-1, -1e-9),
    "ema_power": st.floats(-10, 0), "ema_inv_gamma": st.floats(-10, 0), "val_ratio": st.floats(1, 10),
    "val_every": st.integers(-9, -1), "ckpt_every": st.integers(-9, -1), "keep_checkpoints": st.integers(-9, -1),
    "log_every": st.integers(-9, -1), "num_workers": st.integers(-9, -1), "max_nonfinite_steps": st.integers(-9, 0),
    "amp": st.sampled_from(["fp16", "BF16", ""]), "device": st.sampled_from(["gpu", "tpu", ""]),
}


@SETTINGS
@given(data=st.data())
def test_train_config_out_of_range_values_name_the_field(data):
    from mfp.policies.training import TrainConfig

    name = data.draw(st.sampled_from(sorted(TRAIN_FIELDS)))
    value = data.draw(TRAIN_FIELDS[name])
    needle = "EMA decays" if name in ("ema_max_decay", "ema_min_decay") else name
    _cfg_error("config: TrainConfig out-of-range values", lambda: TrainConfig(**{name: value}), needle)
    # the same values from a checkpoint's JSON: a CheckpointError-friendly ValueError too
    _cfg_error("config: TrainConfig out-of-range values", lambda: TrainConfig.from_dict({name: value}), needle)


SUITE_FIELDS = {"steps": st.integers(-9, 0), "batch_size": st.integers(-9, 0), "demos": st.integers(-9, 0),
                "eval_episodes": st.integers(-9, 0), "eval_workers": st.integers(-9, 0),
                "heads": st.sampled_from([("mp1",), (), ("meanflow", "x")]),
                "seeds": st.sampled_from([(0, 0), (-1,), (3, 1, 3)]),
                "tasks": st.sampled_from([(), ("metaworld/nope",), ("reach",)])}
CONTROL_FIELDS = {"rate_hz": st.floats(-1e3, 0.99) | st.floats(1000.01, 1e6), "blend": st.sampled_from(["avg", ""]),
                  "warmup_calls": st.integers(-9, -1), "first_obs_timeout_s": st.floats(-10, 0),
                  "ensemble_decay": st.floats(-10, -1e-9)}
SAFETY_FIELDS = {"max_obs_age_s": st.floats(-10, 0), "stale_stop_s": st.floats(-10, 0), "max_steps": st.integers(-9, 0),
                 "max_time_s": st.floats(-10, 0), "max_delta": st.floats(-10, 0)}


@SETTINGS
@given(data=st.data())
def test_suite_and_control_configs_refuse_out_of_range_values(data):
    from mfp.eval.control.loop import ControlConfig
    from mfp.eval.control.safety import SafetyConfig
    from mfp.eval.suite.runner import SuiteConfig

    which = data.draw(st.sampled_from(["suite", "control", "safety", "safety_limits"]))
    if which == "suite":
        name = data.draw(st.sampled_from(sorted(SUITE_FIELDS)))
        value = data.draw(SUITE_FIELDS[name])
        kwargs = {"tasks": ("metaworld/reach",), name: value}
        needle = {"heads": "head", "tasks": "task", "seeds": "seeds"}.get(name, name)
        _cfg_error("config: SuiteConfig out-of-range values", lambda: SuiteConfig(**kwargs), needle)
    elif which == "control":
        name = data.draw(st.sampled_from(sorted(CONTROL_FIELDS)))
        value = data.draw(CONTROL_FIELDS[name])
        _cfg_error("config: ControlConfig / SafetyConfig out-of-range values", lambda: ControlConfig(**{name: value}),
                   name)
    elif which == "safety":
        name = data.draw(st.sampled_from(sorted(SAFETY_FIELDS)))
        value = data.draw(SAFETY_FIELDS[name])
        # SafetyConfig names the group of fields it checks together
        needle = {"max_delta": "max_delta", "stale_stop_s": "SafetyConfig"}.get(name, name)
        _cfg_error("config: ControlConfig / SafetyConfig out-of-range values", lambda: SafetyConfig(**{name: value}),
                   needle)
    else:
        lo = data.draw(st.floats(-10, 10))
        hi = data.draw(st.floats(-20, lo))
        _cfg_error("config: ControlConfig / SafetyConfig out-of-range values",
                   lambda: SafetyConfig(action_low=lo, action_high=hi), "action_low")


# Known gaps: non-finite numbers and wrong types. The config classes compare values (`x > 0`), which NaN passes
# silently for some checks and which raises a TypeError without the field's name for strings / None.
NONFINITE_CASES = [
    ("TrainConfig", "lr", math.inf), ("TrainConfig", "weight_decay", math.inf), ("TrainConfig", "grad_clip", math.inf),
    ("TrainConfig", "seed", math.nan), ("MeanFlowConfig", "time_mean", math.nan),
    ("MeanFlowConfig", "adaptive_c", math.inf), ("DP3Config", "beta_start", math.nan),
    ("DP3Config", "beta_end", -math.inf), ("UNetConfig", "time_scale", math.inf),
    ("DispersiveConfig", "weight", math.inf), ("SafetyConfig", "max_obs_age_s", math.nan),
    ("SafetyConfig", "action_low", math.nan), ("ControlConfig", "ensemble_decay", math.nan),
    ("TrainConfig", "lr", math.nan), ("MeanFlowConfig", "time_std", math.nan), ("ControlConfig", "rate_hz", math.nan),
]
WRONG_TYPE_CASES = [
    ("TrainConfig", "lr", "1e-4"), ("TrainConfig", "lr", None), ("TrainConfig", "betas", 0.9),
    ("TrainConfig", "ema", "no"), ("MeanFlowConfig", "time_std", "1"), ("FlowPolicyConfig", "delta", None),
    ("DP3Config", "clip_sample", "yes"), ("EncoderConfig", "point_dims", 64),
    ("DispersiveConfig", "normalize_by_max", 2),
    ("TrainConfig", "steps", 2.5), ("PolicyConfig", "horizon", 4.0), ("PolicyConfig", "n_points", "512"),
]


def _config_class(name: str):
    from mfp.eval.control import loop as control_loop, safety
    from mfp.policies import config as pconfig
    from mfp.policies.training import config as tconfig

    for module in (pconfig, tconfig, safety, control_loop):
        if hasattr(module, name):
            return getattr(module, name)
    raise KeyError(name)


def _try_cases(category: str, cases) -> list[str]:
    failures = []
    for cls_name, field_name, value in cases:
        cls = _config_class(cls_name)
        try:
            cls(**{field_name: value})
        except ValueError as e:
            if record(category, is_clear(str(e), field_name)):
                continue
            failures.append(f"{cls_name}.{field_name}={value!r}: unclear ValueError {e}")
        except Exception as e:
            record(category, False)
            failures.append(f"{cls_name}.{field_name}={value!r}: {type(e).__name__}: {e}")
        else:
            record(category, False)
            failures.append(f"{cls_name}.{field_name}={value!r}: accepted")
    return failures


def test_nonfinite_config_values_name_the_field():
    failures = _try_cases("config: non-finite values (NaN, inf)", NONFINITE_CASES)
    assert not failures, "\n".join(failures)


def test_wrong_type_config_values_name_the_field():
    failures = _try_cases("config: wrong types", WRONG_TYPE_CASES)
    assert not failures, "\n".join(failures)


# --- checkpoints -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A real checkpoint file (checkpoint_bytes, as the trainer writes it) of a tiny policy, with EMA weights."""
    from mfp.policies import PolicyConfig
    from mfp.policies.factory import build_policy
    from mfp.policies.training import TrainConfig
    from mfp.policies.training.checkpoint import checkpoint_bytes

    cfg = PolicyConfig(head="meanflow", n_points=16, unet={"preset": "tiny"}, encoder={"point_dims": [16, 16],
                                                                                      "point_out_dim": 16,
                                                                                      "state_dims": [16]})
    torch.manual_seed(0)
    policy = build_policy(cfg)
    for key, d in (("action", 4), ("agent_pos", 9), ("point_cloud", 3)):
        policy.normalizer.set_stats(key, -torch.ones(d), torch.ones(d))
    tensors = {f"model/{k}": v for k, v in policy.state_dict().items()}
    tensors.update({f"ema/{k}": p.detach().clone() for k, p in policy.named_parameters()})
    meta = {"format_version": 1, "step": 7, "policy_config": cfg.to_dict(), "train_config": TrainConfig().to_dict(),
            "data": {"task": "synthetic/line", "fingerprint": "ab" * 32, "path": "/nonexistent/d.zarr",
                     "shapes": {"point_cloud": [16, 3], "agent_pos": [9], "action": [4]}}}
    path = tmp_path_factory.mktemp("ckpt") / "last.safetensors"
    path.write_bytes(checkpoint_bytes(tensors, meta))
    report = check_checkpoint(path)
    assert report.ok, report.problems
    return path


@settings(max_examples=40, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0, 1, exclude_max=True))
def test_truncated_checkpoints_are_refused_at_any_byte(tiny_ckpt, tmp_path, cut):
    from mfp.policies.training.checkpoint import CheckpointError, load_policy, read_checkpoint

    raw = tiny_ckpt.read_bytes()
    n = int(cut * len(raw))
    path = tmp_path / "cut.safetensors"
    path.write_bytes(raw[:n])
    expect_unsound("checkpoint: truncated at a random byte", check_checkpoint(path), str(path))
    expect_error("checkpoint: truncated at a random byte", lambda: read_checkpoint(path), CheckpointError, str(path))
    expect_error("checkpoint: truncated at a random byte", lambda: load_policy(path), CheckpointError, str(path))


def _rewrite(src: Path, dst: Path, header=None, meta=None, tensors=None) -> Path:
    """A copy of a checkpoint with its safetensors header metadata / JSON meta / tensors changed."""
    from safetensors import safe_open
    from safetensors.torch import save

    with safe_open(str(src), framework="pt") as f:
        old_header = dict(f.metadata())
        old_tensors = {k: f.get_tensor(k) for k in f.keys()}
    new_header = dict(old_header)
    if meta is not None:
        new_header["meta"] = json.dumps(meta(json.loads(old_header["meta"])))
    if header is not None:
        new_header = header(new_header)
    dst.write_bytes(save(tensors(old_tensors) if tensors else old_tensors, metadata=new_header))
    return dst


def _set(d: dict, dotted: str, value):
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d[k]
    if value is KeyError:
        del d[keys[-1]]
    else:
        d[keys[-1]] = value
    return d


FOREIGN = {
    # name: (rewrite kwargs builder, needle in the problem)
    "version 2": (lambda: dict(header=lambda h: dict(h, format_version="2")), "format version 2"),
    "version missing": (lambda: dict(header=lambda h: {k: v for k, v in h.items() if k != "format_version"}),
                        "format version None"),
    "another format": (lambda: dict(header=lambda h: dict(h, format="pt-lightning")), "not an mfp checkpoint"),
    "no metadata": (lambda: dict(header=lambda h: {}), "not an mfp checkpoint"),
    "meta not JSON": (lambda: dict(header=lambda h: dict(h, meta="{'step': 1")), "damaged checkpoint metadata"),
    "another head's config": (lambda: dict(meta=lambda m: _set(m, "policy_config.head", "dp3") and m),
                              "policy config is not valid"),
    "another head, its own config": (lambda: dict(meta=lambda m: dict(m, policy_config=dict(
        m["policy_config"], head="dp3", head_cfg={}))), "do not fit the dp3 policy"),
    "wider network than the weights": (lambda: dict(meta=lambda m: _set(m, "policy_config.unet.down_dims", [64, 128])
                                                    and m), "of another shape"),
    "unknown config field": (lambda: dict(meta=lambda m: _set(m, "train_config.learning_rate", 1) and m),
                             "train config is not valid"),
    "no policy config": (lambda: dict(meta=lambda m: _set(m, "policy_config", KeyError) and m), "policy config"),
    "step missing": (lambda: dict(meta=lambda m: _set(m, "step", KeyError) and m), "'step'"),
    "NaN weights": (lambda: dict(tensors=lambda t: {k: (v * np.nan if k.startswith("ema/net") else v)
                                                    for k, v in t.items()}), "non-finite values"),
    "missing EMA with ema on": (lambda: dict(tensors=lambda t: {k: v for k, v in t.items()
                                                                if not k.startswith("ema/")}),
                                "no EMA weights"),
    "missing weights": (lambda: dict(tensors=lambda t: {k: v for k, v in t.items() if "net." not in k}),
                        "missing"),
}


@pytest.mark.parametrize("case", sorted(FOREIGN))
def test_checkpoints_of_another_format_version_or_head_are_refused(tiny_ckpt, tmp_path, case):
    build, needle = FOREIGN[case]
    path = _rewrite(tiny_ckpt, tmp_path / "foreign.safetensors", **build())
    expect_unsound("checkpoint: another format, version, head or damaged content", check_checkpoint(path), str(path),
                   needle)


@pytest.mark.parametrize("case", ["version 2", "another head's config", "another head, its own config",
                                  "wider network than the weights", "missing weights"])
def test_load_policy_refuses_foreign_checkpoints_clearly(tiny_ckpt, tmp_path, case):
    from mfp.policies.training.checkpoint import CheckpointError, load_policy

    path = _rewrite(tiny_ckpt, tmp_path / "foreign.safetensors", **FOREIGN[case][0]())
    expect_error("checkpoint: load_policy on another format, version or head", lambda: load_policy(path),
                 CheckpointError, str(path))


class _WritesMarker:
    """Unpickling this object runs code: it writes a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("form", ["pickle.pt", "pickle.pth", "pickle.ckpt", "pickle-as.safetensors",
                                  "torch-save.pt", "torch-save-as.safetensors", "torch-save.bin"])
def test_a_pickle_that_runs_code_is_refused_and_never_unpickled(tmp_path, capsys, form):
    from mfp.policies.training.checkpoint import CheckpointError, load_policy, read_checkpoint

    marker = tmp_path / "marker"
    payload = tmp_path / form
    probe = tmp_path / "probe.pt"
    if form.startswith("pickle"):
        payload.write_bytes(pickle.dumps(_WritesMarker(marker), protocol=4))
        pickle.loads(payload.read_bytes())       # the payload is live: unpickling it does write the marker
    else:
        torch.save({"model": _WritesMarker(marker)}, probe)
        payload.write_bytes(probe.read_bytes())
        torch.load(probe, weights_only=False)    # (torch.load reads a *.safetensors name as safetensors)
    assert marker.exists()
    marker.unlink()

    category = "checkpoint: pickle files that would run code"
    expect_unsound(category, check_checkpoint(payload), str(payload), "refused")
    expect_error(category, lambda: read_checkpoint(payload), CheckpointError, str(payload))
    expect_error(category, lambda: load_policy(payload), CheckpointError, str(payload))
    assert main(["check", str(payload)]) == 1
    assert "refused" in capsys.readouterr().out
    assert main(["eval", "--ckpt", str(payload), "--episodes", "1", "--workers", "1"]) == 2
    assert str(payload) in capsys.readouterr().err
    assert not marker.exists()


# --- task names and paths ---------------------------------------------------------------------------------------
ODD_TEXT = st.text(alphabet=st.sampled_from(list("ab/-_. *?[]$%'\"\\;#~é中\t")) | st.characters(), min_size=0,
                   max_size=24)


@SETTINGS
@given(name=ODD_TEXT | st.sampled_from(["metaworld/", "/reach", "metaworld//reach", "Metaworld/reach",
                                        "metaworld/reach ", " adroit/door", "adroit/door/", "metaworld/reach\n"]))
def test_odd_task_names_are_refused_clearly(tmp_path, name):
    from mfp.demos.collect import collect
    from mfp.envs import check_task_name, task_names

    assume(name not in task_names())
    category = "names: odd task names"
    msg = expect_error(category, lambda: check_task_name(name), ValueError, "unknown task", repr(name))
    assert "metaworld/reach" in msg                              # it lists the valid names
    out = tmp_path / "never.zarr"
    expect_error(category, lambda: collect(name, 1, out, progress=False), ValueError, "unknown task")
    assert not out.exists()                                      # refused before anything is written


@SETTINGS
@given(name=st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\x00"),
                    min_size=1, max_size=20).filter(lambda s: s not in (".", "..")))
def test_datasets_at_odd_paths_round_trip_or_fail_clearly(tmp_path, name):
    category = "names: odd dataset paths"
    path = tmp_path / f"{name}.zarr"
    missing = tmp_path / "absent" / f"{name}.zarr"
    expect_error(category, lambda: DemoStore.open(missing), DemoStoreError, str(missing), "no such dataset")
    try:
        store = DemoStore.create(path, attrs={"task": name})
    except OSError as e:                          # the one name a POSIX filesystem refuses here: a too-long one
        assert e.errno == errno.ENAMETOOLONG and len(os.fsencode(path.name)) > os.pathconf(tmp_path, "PC_NAME_MAX")
        assert record(category, is_clear(str(e), str(path))), f"unclear error for {category}: {e}"
        assert not path.exists()
        return
    store.add_episode(_episode(5, 0))
    back = DemoStore.open(path)
    assert back.attrs["task"] == name and back.verify() == []
    record(category, True)                        # handled: a sound store at an odd path
    report = check_dataset(path)
    assert report.ok and report.lines()[0] == f"dataset {path}: OK"


def test_a_dataset_name_longer_than_the_filesystem_allows_fails_clearly(tmp_path):
    """A name one byte over the filesystem's NAME_MAX (multi-byte characters count as bytes): one line naming
    the path, errno ENAMETOOLONG, and nothing left on disk."""
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    stem = "é" * ((limit - len(".zarr")) // 2) + "a" * ((limit - len(".zarr")) % 2 + 1)
    path = tmp_path / f"{stem}.zarr"
    assert len(os.fsencode(path.name)) == limit + 1
    expect_error("names: odd dataset paths", lambda: DemoStore.create(path, attrs={"task": "x"}), OSError, str(path))
    with pytest.raises(OSError) as e:
        DemoStore.create(path)
    assert e.value.errno == errno.ENAMETOOLONG
    assert list(tmp_path.iterdir()) == []
    ok = tmp_path / f"{stem[:-1]}.zarr"                      # one byte shorter: a sound store
    assert len(os.fsencode(ok.name)) == limit
    DemoStore.create(ok, attrs={"task": "x"}).add_episode(_episode(5, 0))
    assert DemoStore.open(ok).verify() == []
