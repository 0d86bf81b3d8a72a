"""The one policy class shared by all heads: observation encoder + UNet backbone + head objective, with the
min-max normaliser inside (BasePolicy's contract, batch layout in base.py).

Normalisation: "action" and "agent_pos" always; "point_cloud" (per xyz axis, to [-1, 1], as DP3 does) when
config.encoder.normalize_point_cloud, else raw metres. The trainer fits the normaliser on the training data for
the keys in `policy.normalizer_keys` and calls `set_normalizer`; a missing key raises a KeyError naming it.
Execution window: with horizon H and To = n_obs_steps, the executed actions are
action_pred[:, To - 1 : To - 1 + n_action_steps], i.e. they start at the latest observation.
Per-frame features: the condition is the To frames' features (encode_frames, each frame encoded on its own)
concatenated in time order, so a caller that encodes every frame once, as it arrives, and keeps the last To
(PolicyRunner) runs only the head at a chunk boundary (predict_action_from_features), with the same actions.
"""

from __future__ import annotations

import torch

from .base import BasePolicy
from .config import PolicyConfig
from .dispersive import dispersive_loss
from .encoder import ObsEncoder
from .head import Head
from .unet import ConditionalUnet1D


def make_head(config: PolicyConfig) -> Head:
    """The head objective `config.head` names (the head registry, heads.py), built from config.head_cfg."""
    return config.head_spec.head(config.head_cfg)


class PointCloudPolicy(BasePolicy):
    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.config = config
        self.encoder = ObsEncoder(config.encoder, config.agent_dim, config.n_obs_steps)
        self.net = ConditionalUnet1D.from_config(config.unet, config.action_dim, self.encoder.out_dim, config.two_times)
        self.head = make_head(config)

    @property
    def normalizer_keys(self) -> tuple[str, ...]:
        keys = ("action", "agent_pos")
        return keys + (("point_cloud",) if self.config.encoder.normalize_point_cloud else ())

    # --- observations ---------------------------------------------------------------------------------------
    def _check_frames(self, obs: dict) -> None:
        """point_cloud (B, T, n_points, 3) and agent_pos (B, T, agent_dim) agreeing on (B, T), any T."""
        cfg = self.config
        pc, pos = obs["point_cloud"], obs["agent_pos"]
        if pc.ndim != 4 or pc.shape[-1] != 3 or pc.shape[2] != cfg.n_points:
            raise ValueError(f"point_cloud must be (B, T, n_points={cfg.n_points}, 3), got {tuple(pc.shape)}")
        if pos.ndim != 3 or pos.shape[-1] != cfg.agent_dim:
            raise ValueError(f"agent_pos must be (B, T, agent_dim={cfg.agent_dim}), got {tuple(pos.shape)}")
        if pc.shape[:2] != pos.shape[:2]:
            raise ValueError(f"point_cloud {tuple(pc.shape)} and agent_pos {tuple(pos.shape)} disagree on (B, T)")

    def _check_obs(self, obs: dict, n_steps: int | None) -> None:
        """Frames as _check_frames, exactly `n_steps` of them, or at least n_obs_steps when n_steps is None."""
        self._check_frames(obs)
        To, T = self.config.n_obs_steps, obs["point_cloud"].shape[1]
        if n_steps is None and T < To:
            raise ValueError(f"batch observations hold {T} steps, fewer than n_obs_steps={To}")
        if n_steps is not None and T != n_steps:
            raise ValueError(f"observations must hold n_obs_steps={n_steps} steps, got {T}")

    def _frame_features(self, point_cloud: torch.Tensor, agent_pos: torch.Tensor) -> torch.Tensor:
        """Raw point_cloud (B, T, N, 3), agent_pos (B, T, d) -> per-frame features (B, T, step_dim), unchecked.
        Every step works on one frame alone (the normaliser is per feature, the encoder per frame), so a frame's
        features do not depend on the frames it is batched with."""
        dtype = next(self.parameters()).dtype
        pc, pos = point_cloud.to(dtype), agent_pos.to(dtype)
        if self.config.encoder.normalize_point_cloud:
            pc = self.normalizer.normalize("point_cloud", pc)
        B, T = pc.shape[:2]
        return self.encoder(pc, self.normalizer.normalize("agent_pos", pos)).reshape(B, T, -1)

    def encode_obs(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Raw observations (B, T >= To, ...) -> global condition (B, To * 128) from their first To steps."""
        To = self.config.n_obs_steps
        return self._frame_features(obs["point_cloud"][:, :To], obs["agent_pos"][:, :To]).flatten(1)

    @torch.no_grad()
    def encode_frames(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Raw frames {point_cloud (B, T, N, 3), agent_pos (B, T, d)}, any number T -> features (B, T, step_dim):
        what predict_action_from_features conditions on. Encoding each frame once as it arrives and stacking the
        last n_obs_steps gives the condition predict_action computes from those frames."""
        self._check_frames(obs)
        return self._frame_features(obs["point_cloud"], obs["agent_pos"])

    # --- training -------------------------------------------------------------------------------------------
    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        self._check_obs(batch["obs"], None)
        action = batch["action"]
        if action.ndim != 3 or action.shape[1:] != (cfg.horizon, cfg.action_dim):
            raise ValueError(f"batch['action'] must be (B, horizon={cfg.horizon}, action_dim={cfg.action_dim}), "
                             f"got {tuple(action.shape)}")
        # Under bf16 autocast only the networks' matmuls/convs run in bf16: the condition, the normalised actions
        # and the head's times and noise stay float32 (times are scaled by up to 1000 before the embedding, and
        # bf16 keeps 8 bits of mantissa).
        cond = self.encode_obs(batch["obs"]).float()                              # (B, C)
        x = self.normalizer.normalize("action", action.float())                  # (B, H, A) in [-1, 1]
        disp = cfg.dispersive
        out = self.head.loss(self.net, x, cond, return_features=disp.weight > 0)
        loss = out.loss
        logs = {**out.logs, "flow_loss": out.loss.item(), "dispersive": 0.0}
        if disp.weight > 0:
            d = dispersive_loss([out.features[i] for i in disp.blocks], variant=disp.variant,
                                temperature=disp.temperature, normalize_by_max=disp.normalize_by_max,
                                hinge_margin=disp.hinge_margin)
            loss = loss + disp.weight * d
            logs["dispersive"] = d.item()
        logs["loss"] = loss.item()
        return loss, logs

    # --- inference ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_action(self, obs_dict: dict[str, torch.Tensor],
                       generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """obs_dict: raw (B, To, ...) -> {"action": (B, n_action_steps, A), "action_pred": (B, H, A)}.
        `generator` seeds the initial noise (and any sampler noise), for reproducible actions."""
        self._check_obs(obs_dict, self.config.n_obs_steps)
        features = self._frame_features(obs_dict["point_cloud"], obs_dict["agent_pos"])
        return self.predict_action_from_features(features, generator=generator)

    @torch.no_grad()
    def predict_action_from_features(self, features: torch.Tensor,
                                     generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Per-frame features (B, To, step_dim) of the last To observations, oldest first (encode_frames) ->
        predict_action's output for those observations: the head alone, for callers that encode each frame once
        (PolicyRunner). `generator` as in predict_action."""
        cfg = self.config
        expected = (cfg.n_obs_steps, cfg.encoder.step_dim)
        if features.ndim != 3 or tuple(features.shape[1:]) != expected:
            raise ValueError(f"features must be (B, n_obs_steps={expected[0]}, step_dim={expected[1]}), "
                             f"got {tuple(features.shape)}")
        cond = features.flatten(1)                                                 # (B, To * step_dim)
        B = cond.shape[0]
        noise_device = cond.device if generator is None else generator.device
        noise = torch.randn(B, cfg.horizon, cfg.action_dim, generator=generator, dtype=cond.dtype,
                            device=noise_device).to(cond.device)
        x = self.head.sample(self.net, noise, cond, generator=generator)
        action_pred = self.normalizer.unnormalize("action", x)
        start = cfg.n_obs_steps - 1
        return {"action": action_pred[:, start:start + cfg.n_action_steps], "action_pred": action_pred}
