"""The min-max normaliser: range, exact inverse, constant features, saved with a module."""

import numpy as np
import pytest
import torch

from mfp.demos.normalizer import MinMaxNormalizer


def test_maps_to_unit_range_and_inverts():
    rng = np.random.default_rng(0)
    data = rng.normal(3.0, [0.5, 10.0, 1e-3], size=(500, 3)).astype(np.float32)
    norm = MinMaxNormalizer().fit({"action": data})
    x = torch.from_numpy(data)
    y = norm.normalize("action", x)
    assert torch.allclose(y.min(0).values, torch.full((3,), -1.0), atol=1e-5)
    assert torch.allclose(y.max(0).values, torch.full((3,), 1.0), atol=1e-5)
    torch.testing.assert_close(norm.unnormalize("action", y), x, rtol=1e-5, atol=1e-5)


def test_constant_feature_maps_to_zero_and_back():
    data = np.stack([np.linspace(-2, 2, 11), np.full(11, 7.5)], axis=1)
    norm = MinMaxNormalizer().fit({"agent_pos": data})
    y = norm.normalize("agent_pos", torch.tensor(data, dtype=torch.float32))
    assert torch.all(y[:, 1] == 0)
    assert torch.allclose(norm.unnormalize("agent_pos", y)[:, 1], torch.full((11,), 7.5))


def test_statistics_travel_in_the_state_dict():
    norm = MinMaxNormalizer().fit({"action": np.array([[0.0, 1.0], [2.0, 3.0]]), "agent_pos": np.eye(3)})
    holder = torch.nn.Module()
    holder.normalizer = MinMaxNormalizer()
    holder.load_state_dict({f"normalizer.{k}": v for k, v in norm.state_dict().items()})
    x = torch.tensor([[1.0, 2.0]])
    assert holder.normalizer.keys == ["action", "agent_pos"]
    torch.testing.assert_close(holder.normalizer.normalize("action", x), norm.normalize("action", x))
    out = holder.normalizer({"action": x, "other": x})
    assert torch.equal(out["other"], x)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="non-finite"):
        MinMaxNormalizer().fit({"action": np.array([[0.0], [np.nan]])})
    with pytest.raises(KeyError, match="no statistics for 'action'"):
        MinMaxNormalizer().normalize("action", torch.zeros(1, 2))
