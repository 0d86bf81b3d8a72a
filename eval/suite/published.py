"""Benchmark metadata: Meta-World difficulty groups (Seo et al. 2022, as used by DP3/MP1) and the published
success rates the papers report (GPU, 3 seeds, mean of the top-5 evaluations during training: an optimistic
protocol, shown beside our numbers for reference only). Source: ../shared/spec/BENCHMARKS.md."""

from __future__ import annotations

METAWORLD_GROUPS: dict[str, tuple[str, ...]] = {
    "easy": ("button-press", "button-press-wall", "dial-turn", "door-close", "door-open", "door-unlock",
             "drawer-close", "faucet-close", "faucet-open", "handle-press", "handle-pull", "lever-pull",
             "peg-unplug-side", "plate-slide", "plate-slide-back", "plate-slide-back-side", "plate-slide-side",
             "reach", "reach-wall", "window-close", "window-open"),
    "medium": ("coffee-pull", "hammer", "peg-insert-side", "soccer"),
    "hard": ("assembly", "hand-insert", "pick-place", "push"),
    "very hard": ("disassemble", "pick-place-wall", "shelf-place", "stick-pull", "stick-push"),
}
GROUP_ORDER = ("adroit", "easy", "medium", "hard", "very hard", "other")

# method -> column -> success %; columns: adroit/<task> or a Meta-World group; "ms": inference at batch 1 (RTX 4090)
PUBLISHED: dict[str, dict[str, float]] = {
    "dp3": {"adroit/hammer": 100, "adroit/door": 56, "adroit/pen": 46, "easy": 87.3, "medium": 44.5,
            "hard": 32.7, "very hard": 39.4, "ms": 132.2},
    "flowpolicy": {"adroit/hammer": 98, "adroit/door": 61, "adroit/pen": 54, "easy": 84.8, "medium": 58.2,
                   "hard": 40.2, "very hard": 52.2, "ms": 12.6},
    "meanflow": {"adroit/hammer": 100, "adroit/door": 69, "adroit/pen": 58, "easy": 88.2, "medium": 68.0,
                 "hard": 58.1, "very hard": 67.2, "ms": 6.8},
}
PUBLISHED_NAMES = {"dp3": "DP3 (DDIM 10)", "flowpolicy": "FlowPolicy (1 step)", "meanflow": "MP1 (MeanFlow 1 step)"}


def task_group(task: str) -> str:
    """'adroit' for Adroit tasks, else the Meta-World difficulty group ('other' for the 16 tasks outside them)."""
    suite, _, name = task.partition("/")
    if suite == "adroit":
        return "adroit"
    for group, names in METAWORLD_GROUPS.items():
        if name in names:
            return group
    return "other"


def published_value(head: str, task_or_group: str) -> float | None:
    return PUBLISHED.get(head, {}).get(task_or_group)
