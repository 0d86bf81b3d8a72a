"""What an exported policy file says about itself: ONNX metadata_props, every value a JSON string.

    mfp.format           "mfp-onnx-policy"            mfp.format_version   "1"
    mfp.policy_config    PolicyConfig.to_dict()       (rebuilds the config: n_obs_steps, horizon, shapes, head)
    mfp.train_config     the run's TrainConfig dict, or null for a policy exported from memory
    mfp.data             the dataset description (task, point-cloud settings, camera, fingerprint), or {}
    mfp.checkpoint       {"path", "step", "weights"} of the source checkpoint, or null
    mfp.provenance       {"checkpoint": the training run's provenance or null, "export": this export's}
    mfp.graph            {"sample_steps", "opset", "inputs": {name: shape}, "outputs": {name: shape}}
Shapes name their symbolic dimension "B" (the batch); every other dimension is fixed by the config.
"""

from __future__ import annotations

import json
from typing import Any

FORMAT = "mfp-onnx-policy"
FORMAT_VERSION = 1
PREFIX = "mfp."
KEYS = ("format", "format_version", "policy_config", "train_config", "data", "checkpoint", "provenance", "graph")


def io_shapes(config) -> dict[str, dict[str, list]]:
    """The graph's input and output shapes for a PolicyConfig, "B" for the batch."""
    H, A, To = config.horizon, config.action_dim, config.n_obs_steps
    return {"inputs": {"point_cloud": ["B", To, config.n_points, 3], "agent_pos": ["B", To, config.agent_dim],
                       "noise": ["B", H, A]},
            "outputs": {"action": ["B", config.n_action_steps, A], "action_pred": ["B", H, A]}}


def encode(values: dict[str, Any]) -> dict[str, str]:
    """{key: value} -> {"mfp." + key: JSON string}; keys must be among KEYS."""
    unknown = set(values) - set(KEYS)
    if unknown:
        raise ValueError(f"unknown exported-policy metadata keys {sorted(unknown)}; known: {KEYS}")
    return {PREFIX + k: json.dumps(v, sort_keys=True, default=_jsonable) for k, v in values.items()}


def decode(props: dict[str, str], source: str) -> dict[str, Any]:
    """metadata_props {name: JSON string} -> {key: value}; `source` (the file) names what is wrong."""
    if props.get(PREFIX + "format") != json.dumps(FORMAT):
        raise ValueError(f"{source}: not an mfp exported policy (no '{PREFIX}format' = {FORMAT!r} in its metadata)")
    values = {}
    for key in KEYS:
        name = PREFIX + key
        if name not in props:
            raise ValueError(f"{source}: exported-policy metadata lacks '{name}'")
        try:
            values[key] = json.loads(props[name])
        except json.JSONDecodeError as e:
            raise ValueError(f"{source}: exported-policy metadata '{name}' is not JSON ({e})") from e
    if values["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{source}: exported-policy format version {values['format_version']}, this code reads "
                         f"{FORMAT_VERSION}; export the checkpoint again")
    return values


def _jsonable(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, set)):
        return list(value)
    return str(value)     # paths and other plain objects: their text
