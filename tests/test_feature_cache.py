"""The per-frame feature cache of PolicyRunner (issue 16): every observation is encoded once, when observed, and a
chunk boundary runs the head alone on the cached features. Cached and uncached runners act alike (same noise ->
the same actions, episode-start padding and resets included), the encoder sees each frame once, and a policy
without the feature methods (ONNX Runtime) is run from its raw history as before."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mfp.demos.normalizer import MinMaxNormalizer
from mfp.eval.sim.rollout import PolicyRunner, caches_features
from mfp.policies import HEAD_NAMES, PolicyConfig, build_policy

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_POINTS, AGENT_DIM, ACTION_DIM = 16, 4, 3
N_OBS_STEPS, N_ACTION_STEPS = 3, 2      # more frames than actions per chunk: frames shared by successive chunks
EPISODES = ((11, 7), (12, 5))           # (seed, steps): 4 + 3 chunks, a reset between the episodes


def make_policy(head: str = "meanflow"):
    torch.manual_seed(0)
    cfg = PolicyConfig(head=head, horizon=8, n_obs_steps=N_OBS_STEPS, n_action_steps=N_ACTION_STEPS,
                       n_points=N_POINTS, agent_dim=AGENT_DIM, action_dim=ACTION_DIM, unet={"preset": "tiny"})
    policy = build_policy(cfg)
    rng = np.random.default_rng(0)
    policy.set_normalizer(MinMaxNormalizer().fit({"point_cloud": rng.normal(size=(64, 3)),
                                                  "agent_pos": rng.normal(size=(64, AGENT_DIM)),
                                                  "action": rng.uniform(-1, 1, size=(64, ACTION_DIM))}))
    return policy.eval()


class RawObservationPolicy:
    """`policy` behind predict_action only (as OnnxPolicy is): PolicyRunner must call it with the raw history."""

    def __init__(self, policy):
        self.inner, self.config = policy, policy.config

    def to(self, device):
        self.inner.to(device)
        return self

    def eval(self):
        return self

    def reset(self):
        self.inner.reset()

    def predict_action(self, obs, generator=None):
        return self.inner.predict_action(obs, generator=generator)


def observations(seed: int, steps: int) -> list[dict[str, np.ndarray]]:
    """`steps` distinct random observation frames {point_cloud (N, 3), agent_pos (d,)}."""
    rng = np.random.default_rng(seed)
    return [{"point_cloud": rng.normal(size=(N_POINTS, 3)).astype(np.float32),
             "agent_pos": rng.normal(size=AGENT_DIM).astype(np.float32)} for _ in range(steps)]


def run_episodes(runner: PolicyRunner) -> list[np.ndarray]:
    """Every action the runner takes over EPISODES, reset (seeded) at the start of each."""
    actions = []
    for seed, steps in EPISODES:
        runner.reset(seed)
        actions += [runner.act(obs) for obs in observations(seed, steps)]
    return actions


class EncoderCalls:
    """Counts the encoder's forward calls on `policy` and the observation frames they encode."""

    def __init__(self, policy):
        self.calls = self.frames = 0
        policy.encoder.register_forward_pre_hook(self._count)

    def _count(self, module, inputs) -> None:
        point_cloud = inputs[0]                                                   # (B, T, N, 3)
        self.calls += 1
        self.frames += point_cloud.shape[0] * point_cloud.shape[1]


@pytest.mark.parametrize("head", HEAD_NAMES)
def test_cached_and_uncached_runners_take_the_same_actions(head):
    policy = make_policy(head)
    cached, uncached = PolicyRunner(policy), PolicyRunner(RawObservationPolicy(policy))
    assert cached.caches_features and not uncached.caches_features
    a, b = run_episodes(cached), run_episodes(uncached)
    assert len(a) == len(b) == sum(steps for _, steps in EPISODES)
    for k, (x, y) in enumerate(zip(a, b)):
        assert torch.allclose(torch.from_numpy(x), torch.from_numpy(y), rtol=1e-5, atol=1e-6), f"action {k}"
    assert not np.allclose(a[0], a[-1])                                # the actions do depend on the observations
    assert len(cached.inference_ms) == len(uncached.inference_ms) == 4 + 3   # one network call per chunk


def test_each_frame_is_encoded_once_when_observed():
    policy = make_policy()
    counter = EncoderCalls(policy)
    runner = PolicyRunner(policy)
    actions = run_episodes(runner)
    n_frames = len(actions)
    assert counter.calls == counter.frames == n_frames                  # one frame per call, each frame once
    assert len(runner.encode_ms) == n_frames and len(runner.inference_ms) == 4 + 3

    runner.reset(0)
    before = counter.frames
    runner.observe(observations(0, 1)[0])
    assert counter.frames == before + 1                                 # encoded on arrival, not at the chunk
    runner.predict_chunk()
    assert counter.frames == before + 1                                 # the chunk boundary runs the head alone


def test_uncached_runner_encodes_every_window_at_its_chunk():
    """What the cache saves: without it, every chunk encodes its n_obs_steps frames (padding repeats included)."""
    policy = make_policy()
    counter = EncoderCalls(policy)
    run_episodes(PolicyRunner(RawObservationPolicy(policy)))
    assert counter.calls == 4 + 3 and counter.frames == (4 + 3) * N_OBS_STEPS


def test_chunks_at_every_tick_match_with_partly_filled_windows():
    """A chunk at every tick (the control loop ensembling chunks): the windows of 1, 2 and 3 frames at an episode's
    start are padded in front with its first frame, with the cache as without it."""
    policy = make_policy()
    cached, uncached = PolicyRunner(policy), PolicyRunner(RawObservationPolicy(policy))
    for runner in (cached, uncached):
        runner.reset(5)
    for k, obs in enumerate(observations(5, 5)):
        cached.observe(obs)
        uncached.observe(obs)
        a, b = cached.predict_chunk(), uncached.predict_chunk()
        assert a.shape == (N_ACTION_STEPS, ACTION_DIM)
        assert torch.allclose(torch.from_numpy(a), torch.from_numpy(b), rtol=1e-5, atol=1e-6), f"tick {k}"


def test_frames_are_encoded_independently_of_their_batch():
    """The premise of the cache: a frame's features do not depend on the frames encoded with it."""
    policy = make_policy()
    g = torch.Generator().manual_seed(0)
    obs = {"point_cloud": torch.randn(2, N_OBS_STEPS, N_POINTS, 3, generator=g),
           "agent_pos": torch.randn(2, N_OBS_STEPS, AGENT_DIM, generator=g)}
    together = policy.encode_frames(obs)                                    # (2, To, step_dim)
    alone = torch.stack([torch.cat([policy.encode_frames({k: v[b:b + 1, t:t + 1] for k, v in obs.items()})
                                    for t in range(N_OBS_STEPS)], dim=1)[0] for b in range(2)])
    assert torch.allclose(together, alone, rtol=1e-5, atol=1e-6)
    assert torch.allclose(together.flatten(1), policy.encode_obs(obs), rtol=0, atol=0)   # the same condition
    out = policy.predict_action(obs, generator=torch.Generator().manual_seed(1))
    again = policy.predict_action_from_features(together, generator=torch.Generator().manual_seed(1))
    for key in ("action", "action_pred"):
        assert torch.equal(out[key], again[key])


def test_bad_frames_and_features_are_refused():
    policy = make_policy()
    step_dim = policy.config.encoder.step_dim
    with pytest.raises(ValueError, match="n_points=16"):
        policy.encode_frames({"point_cloud": torch.zeros(1, 1, N_POINTS + 1, 3), "agent_pos": torch.zeros(1, 1, 4)})
    with pytest.raises(ValueError, match=f"n_obs_steps=3, step_dim={step_dim}"):
        policy.predict_action_from_features(torch.zeros(1, N_OBS_STEPS - 1, step_dim))


def test_onnx_policy_runs_from_the_raw_history():
    """OnnxPolicy has no feature methods: the runner falls back to predict_action on the raw history, and acts
    as the cached torch runner does (within the export's parity tolerance)."""
    pytest.importorskip("onnxruntime")
    from mfp.policies.export import OnnxPolicy, onnx_bytes

    policy = make_policy()
    onnx_policy = OnnxPolicy.from_bytes(onnx_bytes(policy), "tiny meanflow")
    assert not caches_features(onnx_policy) and caches_features(policy)
    runner = PolicyRunner(onnx_policy)
    a, b = run_episodes(runner), run_episodes(PolicyRunner(policy))
    assert np.abs(np.stack(a) - np.stack(b)).max() < 1e-4
    assert runner.encode_ms == [] and len(runner.inference_ms) == 4 + 3
