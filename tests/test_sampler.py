"""Sequence windows with edge padding, and the validation split by episode."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mfp.demos.sampler import SequenceSampler, create_indices, val_episode_mask


def _episodes(lengths):
    ends = np.cumsum(lengths)
    ep_id = np.repeat(np.arange(len(lengths)), lengths)
    step = np.concatenate([np.arange(n) for n in lengths])
    return ends, {"ep": ep_id[:, None], "step": step[:, None]}


def test_padding_repeats_edge_frames():
    ends, arrays = _episodes([5, 3])
    sampler = SequenceSampler(arrays, ends, horizon=4, pad_before=1, pad_after=2)
    windows = [sampler.sample_sequence(i) for i in range(len(sampler))]
    steps = [w["step"][:, 0].tolist() for w in windows]
    eps = [w["ep"][:, 0].tolist() for w in windows]
    # Episode 0 (5 steps): starts from offset -1 up to offset 5 - 4 + 2 = 3.
    assert steps[:5] == [[0, 0, 1, 2], [0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 4], [3, 4, 4, 4]]
    # Episode 1 (3 steps): offsets -1..1, never reading episode 0's frames.
    assert steps[5:] == [[0, 0, 1, 2], [0, 1, 2, 2], [1, 2, 2, 2]]
    assert all(set(e) == {0} for e in eps[:5]) and all(set(e) == {1} for e in eps[5:])


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 12), min_size=1, max_size=5), horizon=st.integers(1, 6),
       pads=st.tuples(st.integers(0, 5), st.integers(0, 5)))
def test_windows_stay_in_one_episode_and_are_contiguous(lengths, horizon, pads):
    pad_before, pad_after = min(pads[0], horizon - 1), min(pads[1], horizon - 1)
    ends, arrays = _episodes(lengths)
    sampler = SequenceSampler(arrays, ends, horizon, pad_before, pad_after)
    expected = sum(max(0, n - horizon + pad_after + pad_before + 1) for n in lengths)
    assert len(sampler) == expected
    for i in range(len(sampler)):
        w = sampler.sample_sequence(i)
        assert w["step"].shape == (horizon, 1)
        assert len(set(w["ep"][:, 0])) == 1
        s = w["step"][:, 0]
        assert np.all(np.diff(s) >= 0) and np.all(np.diff(s) <= 1)  # repeats only at the padded edges
        n = lengths[w["ep"][0, 0]]
        if n > 1:  # padding repeats the first frame at most pad_before times, the last at most pad_after
            assert np.sum(s == 0) <= pad_before + 1 and np.sum(s == n - 1) <= pad_after + 1


def test_episode_mask_and_validation_split():
    ends, arrays = _episodes([4, 4, 4, 4, 4])
    mask = val_episode_mask(5, 0.2, seed=3)
    assert mask.sum() == 1
    train = SequenceSampler(arrays, ends, 2, episode_mask=~mask)
    val = SequenceSampler(arrays, ends, 2, episode_mask=mask)
    train_eps = {int(train.sample_sequence(i)["ep"][0, 0]) for i in range(len(train))}
    val_eps = {int(val.sample_sequence(i)["ep"][0, 0]) for i in range(len(val))}
    assert train_eps.isdisjoint(val_eps) and len(train_eps | val_eps) == 5
    assert val_episode_mask(5, 0.2, seed=3).tolist() == mask.tolist()  # seeded
    assert val_episode_mask(1, 0.5).sum() == 0  # never holds out the only episode
    with pytest.raises(ValueError):
        val_episode_mask(5, 1.0)
    with pytest.raises(ValueError, match="pad_before"):
        create_indices(ends, 2, pad_before=2)
