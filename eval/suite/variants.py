"""Suite variants: a head with some settings changed, under a label of its own, so an ablation ladder runs as one
suite (`mfp bench suite --variant mf-lr3=meanflow:lr=3e-4 --heads meanflow,mf-lr3,dp3`).

A spec is "LABEL=HEAD:KEY=VALUE,KEY=VALUE". Each key goes where it belongs:
    a field of the head's config (MeanFlowConfig, ...)    e.g. prediction=velocity, adaptive_p=1, ratio_r_eq_t=0.75
    a UNet setting                                         time_combine, second_time, time_scale
    a training setting                                     lr, warmup_steps, weight_decay, grad_clip
    the dispersive regulariser's weight                    dispersive_weight
Values are JSON where they parse as JSON (numbers, true/false), else strings. An unknown key is an error that
lists the known ones. Results rows carry the label as "head" and the overrides as "variant".
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

UNET_KEYS = ("time_combine", "second_time", "time_scale")
TRAIN_KEYS = ("lr", "warmup_steps", "weight_decay", "grad_clip")


@dataclass(frozen=True)
class Variant:
    label: str
    head: str
    head_cfg: dict = field(default_factory=dict)
    unet: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    dispersive_weight: float | None = None

    def overrides(self) -> dict:
        """What distinguishes this variant from its head's defaults (saved in results rows)."""
        out = {"head_cfg": self.head_cfg, "unet": self.unet, "train": self.train}
        if self.dispersive_weight is not None:
            out["dispersive_weight"] = self.dispersive_weight
        return out

    def policy_dict(self, base: dict) -> dict:
        """A PolicyConfig dict: `base` (shapes, preset) with this variant's head and settings."""
        out = {**base, "head": self.head}
        if self.head_cfg:
            out["head_cfg"] = dict(self.head_cfg)
        if self.unet:
            out["unet"] = {**base.get("unet", {}), **self.unet}
        if self.dispersive_weight is not None:
            out["dispersive"] = {"weight": self.dispersive_weight}
        return out


def plain(head: str) -> Variant:
    return Variant(label=head, head=head)


def parse_variant(spec: str) -> Variant:
    from mfp.policies.heads import registered_heads

    heads = registered_heads()
    label, sep, rest = spec.partition("=")
    head, _, options = rest.partition(":")
    label, head = label.strip(), head.strip()
    if not sep or not label or not head:
        raise ValueError(f"variant {spec!r}: expected LABEL=HEAD:KEY=VALUE,KEY=VALUE (e.g. mf-lr3=meanflow:lr=3e-4)")
    if head not in heads:
        raise ValueError(f"variant {spec!r}: unknown head {head!r}; choose from {sorted(heads)}")
    head_keys = {f.name for f in dataclasses.fields(heads[head].config)}
    parts: dict[str, dict] = {"head_cfg": {}, "unet": {}, "train": {}}
    dispersive = None
    for item in filter(None, (s.strip() for s in options.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"variant {label!r}: {item!r} is not KEY=VALUE")
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
        if key in head_keys:
            parts["head_cfg"][key] = value
        elif key in UNET_KEYS:
            parts["unet"][key] = value
        elif key in TRAIN_KEYS:
            parts["train"][key] = value
        elif key == "dispersive_weight":
            dispersive = float(value)
        else:
            known = sorted(head_keys) + list(UNET_KEYS) + list(TRAIN_KEYS) + ["dispersive_weight"]
            raise ValueError(f"variant {label!r}: unknown setting {key!r}; known: {known}")
    return Variant(label, head, parts["head_cfg"], parts["unet"], parts["train"], dispersive)


def resolve_variants(heads: tuple[str, ...], specs: tuple[str, ...], allowed_heads: tuple[str, ...]) -> dict:
    """{label: Variant} for each entry of `heads`: a head name, or the label of one of `specs`."""
    variants = {}
    for spec in specs:
        v = parse_variant(spec)
        if v.label in variants or v.label in allowed_heads:
            raise ValueError(f"variant label {v.label!r} is used twice or names a head; pick another label")
        variants[v.label] = v
    out = {}
    for name in heads:
        if name in variants:
            out[name] = variants[name]
        elif name in allowed_heads:
            out[name] = plain(name)
        else:
            raise ValueError(f"unknown head or variant {name!r}; heads: {list(allowed_heads)}, "
                             f"variants: {list(variants)}")
    return out
