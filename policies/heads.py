"""The head registry: every head objective a policy can train with, and what callers need to know of it.

A head is one module that defines its Head subclass (head.py's interface) and ends with one registration line:

    register_head(HeadSpec("meanflow", MeanFlowConfig, MeanFlowHead, two_times=True, time_scale=1.0,
                           label="MeanFlow 1-NFE"))

Everything that lists or builds heads reads this registry: `PolicyConfig` (head names, head configs, default time
scale, whether the backbone takes two times), `make_head`, the CLI's --head / --heads choices, the benchmarks, the
suite and `mfp export` (which heads it can export: `exportable`, true unless a head says otherwise). A built-in
head is also named in BUILTIN_HEAD_MODULES, which loads it on first use; a head defined elsewhere (a test, a
user's experiment) registers itself when its module is imported.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

# The built-in heads: each is the module mfp.policies.<name>, which registers the head of that name. Loaded on first
# use, in this order (the order heads are listed in); their names are known without importing them (or torch).
BUILTIN_HEAD_MODULES = ("meanflow", "flowpolicy", "dp3", "splitmeanflow")


@dataclass(frozen=True)
class HeadSpec:
    """What the rest of the code needs to know of one head.

    time_scale: the scale applied to t in [0, 1] before the sinusoidal time embedding when UNetConfig.time_scale
    is None (it enters du/dt directly); None: the head's config's num_train_timesteps (integer diffusion steps).
    exportable: whether `mfp export` can trace the head's sampler into a fixed graph (mfp.policies.export): true
    for a sampler that is a fixed loop of backbone calls made of tensor operations; false for one that steps a
    scheduler in Python (DP3's diffusers scheduler)."""

    name: str                   # PolicyConfig.head, the CLI's --head, results rows' "head_name"
    config: type                # the head's config dataclass (PolicyConfig.head_cfg); its ClassVar `name` == name
    head: type                  # the Head subclass, built as head(config_instance)
    two_times: bool             # whether the backbone is conditioned on two times (r, t) rather than t alone
    time_scale: float | None    # see the class docstring
    label: str = ""             # how reports name it; the name when empty
    exportable: bool = True     # see the class docstring

    @property
    def display_name(self) -> str:
        return self.label or self.name


_HEADS: dict[str, HeadSpec] = {}
_builtins_loaded = False


def register_head(spec: HeadSpec) -> HeadSpec:
    """Add a head (or replace the one of the same name); returns `spec`."""
    if getattr(spec.config, "name", spec.name) != spec.name:
        raise ValueError(f"head {spec.name!r}: its config class {spec.config.__name__} is named "
                         f"{spec.config.name!r}; they must agree")
    _HEADS[spec.name] = spec
    return spec


def unregister_head(name: str) -> None:
    """Remove a head registered at run time (tests); unknown names are ignored."""
    _HEADS.pop(name, None)


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for module in BUILTIN_HEAD_MODULES:
            importlib.import_module(f"{__package__}.{module}")
            if module not in _HEADS:
                raise RuntimeError(f"{__package__}.{module} registered no head named {module!r}")


def head_names() -> tuple[str, ...]:
    """Every head's name: the built-in ones in BUILTIN_HEAD_MODULES order, then the others in registration order.
    Imports no head module (the CLI builds its --head choices from this without loading torch)."""
    return BUILTIN_HEAD_MODULES + tuple(n for n in _HEADS if n not in BUILTIN_HEAD_MODULES)


def registered_heads() -> dict[str, HeadSpec]:
    """{name: HeadSpec} of every head, in head_names() order (the built-in heads' modules are imported here)."""
    _load_builtins()
    return {n: _HEADS[n] for n in head_names()}


def exportable_heads() -> tuple[str, ...]:
    """The heads whose policies `mfp export` can write (HeadSpec.exportable), in head_names() order."""
    return tuple(name for name, spec in registered_heads().items() if spec.exportable)


def head_spec(name: str) -> HeadSpec:
    """The HeadSpec of `name`; a ValueError that lists the registered heads for an unknown one."""
    heads = registered_heads()
    if name not in heads:
        raise ValueError(f"head must be one of {tuple(heads)}, got {name!r}")
    return heads[name]
