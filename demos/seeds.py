"""Seeds of demonstration and evaluation episodes, in disjoint ranges.

An episode's seed fixes its object/goal placement. Demonstrations draw from [0, EVAL_SEED_START),
evaluation from [EVAL_SEED_START, ...): a policy is never evaluated on a placement it was shown.
"""

from __future__ import annotations

EVAL_SEED_START = 1_000_000


def check_demo_seed(seed: int) -> int:
    if not 0 <= seed < EVAL_SEED_START:
        raise ValueError(f"demonstration seeds must lie in [0, {EVAL_SEED_START}) (evaluation seeds start there), got {seed}")
    return int(seed)


def eval_seeds(n_episodes: int, offset: int = 0) -> list[int]:
    """The fixed evaluation episodes: n seeds from EVAL_SEED_START + offset."""
    if n_episodes < 0 or offset < 0:
        raise ValueError(f"eval_seeds: n_episodes and offset must be >= 0, got {n_episodes}, {offset}")
    return [EVAL_SEED_START + offset + i for i in range(n_episodes)]


EVAL_SET_STRIDE = 10_000


def eval_seed_set(index: int, n_episodes: int) -> list[int]:
    """Evaluation seed set `index` (0, 1, ...): n seeds from EVAL_SEED_START + index * EVAL_SET_STRIDE. Sets are
    disjoint, and set 0 is eval_seeds(n), the fixed episodes every evaluation starts with."""
    if index < 0:
        raise ValueError(f"evaluation seed sets are numbered from 0, got {index}")
    if not 1 <= n_episodes <= EVAL_SET_STRIDE:
        raise ValueError(f"an evaluation seed set holds 1..{EVAL_SET_STRIDE} episodes, got {n_episodes}")
    return eval_seeds(n_episodes, index * EVAL_SET_STRIDE)
