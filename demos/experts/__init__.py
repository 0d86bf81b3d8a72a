"""Experts that produce demonstrations: Meta-World's scripted policies and the DAPG Adroit MLPs.

Every expert maps the simulator's privileged full state (`info["full_state"]`) to a raw action; the
environment clips it, and recordings keep the executed (clipped) action.
"""

from __future__ import annotations


def make_expert(task_name: str):
    """An expert with `.act(full_state) -> action` for 'metaworld/<task>' or 'adroit/<task>'."""
    from mfp.envs import check_task_name

    suite, task = check_task_name(task_name)
    if suite == "metaworld":
        from .metaworld import MetaWorldExpert

        return MetaWorldExpert(task)
    from .adroit import AdroitExpert

    return AdroitExpert(task)
