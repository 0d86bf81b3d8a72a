"""Policy configuration: validated dataclasses, saved with every checkpoint (`to_dict` / `from_dict`).

One `PolicyConfig` describes a whole policy: the data it expects (n_points, agent_dim, action_dim), the
execution window (horizon, n_obs_steps, n_action_steps), the encoder, the UNet backbone, the head objective
("meanflow", "flowpolicy", "dp3", "splitmeanflow") with its own settings in `head_cfg`, and the optional
dispersive regulariser. Every inconsistent value raises a ValueError at construction that says what to change.

    cfg = PolicyConfig(head="meanflow", action_dim=4, agent_dim=9, n_points=512)     # MP1-like, small UNet
    cfg = PolicyConfig.mp1(action_dim=4)                                              # MP1's recipe (dispersive 0.5)
    cfg = PolicyConfig(head="dp3", unet=UNetConfig(preset="paper"))                   # the paper-size backbone
    PolicyConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .config_checks import check_fields

# A head's config dataclass (MeanFlowConfig, ...): whichever class the head registry names (policies/heads.py).
HeadConfig = Any


def __getattr__(name: str) -> Any:
    """HEAD_NAMES, HEAD_CONFIGS and DEFAULT_TIME_SCALE, read from the head registry (policies/heads.py) when asked,
    so that they list every registered head."""
    if name not in ("HEAD_NAMES", "HEAD_CONFIGS", "DEFAULT_TIME_SCALE"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .heads import registered_heads

    heads = registered_heads()
    if name == "HEAD_NAMES":
        return tuple(heads)
    if name == "HEAD_CONFIGS":
        return {n: spec.config for n, spec in heads.items()}
    return {n: spec.time_scale for n, spec in heads.items()}      # DEFAULT_TIME_SCALE


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _check_prob(name: str, value: float) -> None:
    _check(0.0 <= value <= 1.0, f"{name} must lie in [0, 1], got {value}")


PREDICTIONS = ("sample", "velocity")


@dataclass
class FlowOutputConfig:
    """What the flow heads (MeanFlow, SplitMeanFlow, FlowPolicy) share about the backbone's output.

    prediction "velocity": the backbone outputs the velocity itself (u or v). "sample": it outputs the clean chunk
    x_hat, and the head derives the velocity it needs as (z_t - x_hat) / max(t, t_floor) (x-prediction, as in
    pixel MeanFlow / JiT; the loss stays in velocity space), so a one-step action is x_hat(e, 0, 1) itself.
    clip_sample: clamp sampled actions to the normalised range [-1, 1], as DP3's scheduler does."""

    # Values that reproduce a checkpoint saved before these fields existed (see `PolicyConfig.from_saved`).
    LEGACY: ClassVar[dict[str, Any]] = {"prediction": "velocity", "clip_sample": False}

    prediction: str = "sample"
    t_floor: float = 0.05           # "sample": the smallest t the derived velocity divides by
    clip_sample: bool = True

    def __post_init__(self) -> None:
        _check(self.prediction in PREDICTIONS,
               f"{self.name}.prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        _check(0 < self.t_floor < 1, f"{self.name}.t_floor must lie in (0, 1), got {self.t_floor}")


# --- head objectives ------------------------------------------------------------------------------------
@dataclass
class AverageVelocityConfig(FlowOutputConfig):
    """What MeanFlow and SplitMeanFlow share: they learn the same u(z, r, t). Defaults follow MP1 where it differs
    from the MeanFlow paper (paper: ratio_r_eq_t 0.75, adaptive_p 1.0)."""

    name: ClassVar[str] = "average_velocity"
    ratio_r_eq_t: float = 0.5       # fraction of the batch with r = t (plain flow matching / boundary u(z, t, t) = v)
    time_dist: str = "logit_normal"  # (t, r) draws: "logit_normal" sigmoid(N(time_mean, time_std)), or "uniform"
    time_mean: float = -0.4
    time_std: float = 1.0
    ratio_one_step: float = 0.0     # fraction of the batch at (r, t) = (0, 1), where one-step sampling queries u
    adaptive_p: float = 0.5         # w = 1 / (||err||^2 + c)^p, stop-gradient; MP1 0.5, MeanFlow paper 1.0
    adaptive_c: float = 1e-3
    error_reduction: str = "sum"    # ||err||^2 per sample: "sum" over (H, A) as in the paper; MP1's code uses "mean"
    loss_space: str = "velocity"    # the error weighed: "velocity" u - u_tgt; "sample" t (u - u_tgt) = x_tgt - x_hat
    sample_steps: int = 1           # 1 = one network evaluation

    def __post_init__(self) -> None:
        check_fields(self)
        super().__post_init__()
        n = self.name
        _check_prob(f"{n}.ratio_r_eq_t", self.ratio_r_eq_t)
        _check(self.time_std > 0, f"{n}.time_std must be > 0, got {self.time_std}")
        _check(self.loss_space in ("velocity", "sample"),
               f"{n}.loss_space must be 'velocity' or 'sample', got {self.loss_space!r}")
        _check(self.time_dist in ("logit_normal", "uniform"),
               f"{n}.time_dist must be 'logit_normal' or 'uniform', got {self.time_dist!r}")
        _check_prob(f"{n}.ratio_one_step", self.ratio_one_step)
        _check(self.ratio_r_eq_t + self.ratio_one_step <= 1.0,
               f"{n}.ratio_r_eq_t + ratio_one_step must be <= 1, got {self.ratio_r_eq_t} + {self.ratio_one_step}")
        _check(self.adaptive_p >= 0, f"{n}.adaptive_p must be >= 0, got {self.adaptive_p}")
        _check(self.adaptive_c > 0, f"{n}.adaptive_c must be > 0, got {self.adaptive_c}")
        _check(self.error_reduction in ("sum", "mean"),
               f"{n}.error_reduction must be 'sum' or 'mean', got {self.error_reduction!r}")
        _check(self.sample_steps >= 1, f"{n}.sample_steps must be >= 1, got {self.sample_steps}")


@dataclass
class MeanFlowConfig(AverageVelocityConfig):
    """MeanFlow (average velocity u(z, r, t) from the JVP identity, one-step sampling), with classifier-free
    guidance folded into the target (MeanFlow paper: p_uncond 0.1)."""

    name: ClassVar[str] = "meanflow"
    LEGACY: ClassVar[dict[str, Any]] = {**FlowOutputConfig.LEGACY, "jvp_tangent": "v"}

    jvp_tangent: str = "v"          # dz/dt of the JVP (and the target's v): "v" = e - x; "model" = sg(u(z_t, t, t))
    cfg_w: float = 1.0              # guidance scale omega; 1 with kappa 0 is unguided training
    cfg_kappa: float = 0.0
    p_uncond: float = 0.0           # probability of replacing the condition by the learned null embedding

    @property
    def guided(self) -> bool:
        return self.cfg_w != 1.0 or self.cfg_kappa != 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(0.0 <= self.p_uncond < 1.0, f"meanflow.p_uncond must lie in [0, 1), got {self.p_uncond}")
        _check(self.jvp_tangent in ("v", "model"), f"meanflow.jvp_tangent must be 'v' or 'model', got {self.jvp_tangent!r}")
        _check(not (self.guided and self.jvp_tangent == "model"),
               "meanflow.jvp_tangent='model' is for unguided training: with guidance the tangent is the guided "
               "velocity v_tilde (set cfg_w=1, cfg_kappa=0, or jvp_tangent='v')")
        _check(not self.guided or self.p_uncond > 0,
               f"meanflow guidance (cfg_w={self.cfg_w}, cfg_kappa={self.cfg_kappa}) needs a trained null condition: "
               "set p_uncond > 0 (MeanFlow paper: 0.1), or cfg_w=1 and cfg_kappa=0 for no guidance")


@dataclass
class SplitMeanFlowConfig(AverageVelocityConfig):
    """SplitMeanFlow: the same u(z, r, t) as MeanFlow, learnt from interval splitting, without a JVP."""

    name: ClassVar[str] = "splitmeanflow"
    # Its interval-splitting target bootstraps on the model's own steps; with the derived velocity of "sample" that
    # diverged on the 2-D toy (one-step sliced Wasserstein 0.75-0.79 at time scale 1 or 1000, against 0.13 with
    # "velocity"), so it keeps the velocity parameterisation by default.
    prediction: str = "velocity"


@dataclass
class FlowPolicyConfig(FlowOutputConfig):
    """FlowPolicy's consistency flow matching (defaults are its released code's)."""

    name: ClassVar[str] = "flowpolicy"
    # With "sample" the 450-step suite (2026-12-01, 5 tasks, seed 0) averaged 5 % against 18 % for "velocity"
    # (docs/results/2026-12-01-one-step-cpu.md): FlowPolicy keeps the velocity parameterisation by default.
    prediction: str = "velocity"
    alpha: float = 1e-5             # weight of the velocity-consistency term
    num_segments: int = 2
    delta: float = 1e-2             # gap between the two times of a consistency pair
    eps: float = 1e-2               # times are kept eps away from pure noise
    sample_steps: int = 1           # Euler steps at inference
    stop_grad_target: bool = True   # v_r without gradient (Consistency-FM); FlowPolicy's policy code: False

    def __post_init__(self) -> None:
        check_fields(self)
        super().__post_init__()
        _check(self.alpha >= 0, f"flowpolicy.alpha must be >= 0, got {self.alpha}")
        _check(self.num_segments >= 1, f"flowpolicy.num_segments must be >= 1, got {self.num_segments}")
        _check(0 < self.delta < 1, f"flowpolicy.delta must lie in (0, 1), got {self.delta}")
        _check(0 <= self.eps < 1, f"flowpolicy.eps must lie in [0, 1), got {self.eps}")
        _check(self.sample_steps >= 1, f"flowpolicy.sample_steps must be >= 1, got {self.sample_steps}")


@dataclass
class DP3Config:
    """DP3's diffusion head: DDPM training, DDIM sampling (diffusers schedulers; defaults are DP3's config)."""

    name: ClassVar[str] = "dp3"
    num_train_timesteps: int = 100
    num_inference_steps: int = 10
    prediction_type: str = "sample"     # DP3's config; "epsilon" also supported
    beta_schedule: str = "squaredcos_cap_v2"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    clip_sample: bool = True

    def __post_init__(self) -> None:
        check_fields(self)
        _check(self.num_train_timesteps >= 1, f"dp3.num_train_timesteps must be >= 1, got {self.num_train_timesteps}")
        _check(1 <= self.num_inference_steps <= self.num_train_timesteps,
               f"dp3.num_inference_steps must lie in [1, num_train_timesteps={self.num_train_timesteps}], "
               f"got {self.num_inference_steps}")
        _check(self.prediction_type in ("epsilon", "sample"),
               f"dp3.prediction_type must be 'epsilon' or 'sample', got {self.prediction_type!r}")
        _check(self.beta_schedule in ("squaredcos_cap_v2", "linear", "scaled_linear"),
               f"dp3.beta_schedule {self.beta_schedule!r} is not one of squaredcos_cap_v2, linear, scaled_linear")



# --- networks -------------------------------------------------------------------------------------------
@dataclass
class EncoderConfig:
    """DP3 point-cloud encoder + state MLP (defaults are DP3's)."""

    point_dims: tuple[int, ...] = (64, 128, 256)   # per-point MLP widths (LayerNorm + ReLU after each)
    point_out_dim: int = 64                        # Linear + LayerNorm after the max-pool
    state_dims: tuple[int, ...] = (64, 64)         # agent_pos MLP
    normalize_point_cloud: bool = True             # min-max normalise xyz with the policy's normaliser (as DP3)

    def __post_init__(self) -> None:
        check_fields(self)
        self.point_dims = tuple(int(d) for d in self.point_dims)
        self.state_dims = tuple(int(d) for d in self.state_dims)
        _check(len(self.point_dims) >= 1 and all(d > 0 for d in self.point_dims),
               f"encoder.point_dims must be positive widths, got {self.point_dims}")
        _check(len(self.state_dims) >= 1 and all(d > 0 for d in self.state_dims),
               f"encoder.state_dims must be positive widths, got {self.state_dims}")
        _check(self.point_out_dim > 0, f"encoder.point_out_dim must be > 0, got {self.point_out_dim}")

    @property
    def step_dim(self) -> int:
        """Feature size of one observation step (point + state)."""
        return self.point_out_dim + self.state_dims[-1]


UNET_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"down_dims": (32, 64), "time_embed_dim": 32},            # tests and quick checks
    "small": {"down_dims": (64, 128, 256), "time_embed_dim": 128},    # CPU default, about 5 M parameters
    "paper": {"down_dims": (512, 1024, 2048), "time_embed_dim": 128},  # MP1 / DP3 widths, about 256 M
}


@dataclass
class UNetConfig:
    """1-D temporal UNet. `preset` fills down_dims / time_embed_dim that are left None; explicit values win."""

    preset: str = "small"
    down_dims: tuple[int, ...] | None = None
    time_embed_dim: int | None = None
    kernel_size: int = 5
    n_groups: int = 8
    time_scale: float | None = None     # None: the head's reference value (its HeadSpec.time_scale)
    time_combine: str = "sum"           # two-time heads: "sum" or "concat" the two time embeddings
    second_time: str = "r"              # two-time heads embed (t, r) or (t, t - r)

    def __post_init__(self) -> None:
        check_fields(self)
        _check(self.preset in UNET_PRESETS, f"unet.preset must be one of {sorted(UNET_PRESETS)}, got {self.preset!r}")
        preset = UNET_PRESETS[self.preset]
        self.down_dims = tuple(int(d) for d in (self.down_dims if self.down_dims is not None else preset["down_dims"]))
        if self.time_embed_dim is None:
            self.time_embed_dim = preset["time_embed_dim"]
        _check(len(self.down_dims) >= 1, "unet.down_dims must hold at least one width")
        _check(all(d > 0 and d % self.n_groups == 0 for d in self.down_dims),
               f"unet.down_dims {self.down_dims} must be positive multiples of n_groups={self.n_groups} (GroupNorm)")
        _check(self.time_embed_dim > 0 and self.time_embed_dim % 2 == 0,
               f"unet.time_embed_dim must be a positive even number, got {self.time_embed_dim}")
        _check(self.kernel_size >= 1 and self.kernel_size % 2 == 1,
               f"unet.kernel_size must be odd (same-length convolution), got {self.kernel_size}")
        _check(self.time_scale is None or self.time_scale > 0, f"unet.time_scale must be > 0, got {self.time_scale}")
        _check(self.time_combine in ("sum", "concat"), f"unet.time_combine must be 'sum' or 'concat', got {self.time_combine!r}")
        _check(self.second_time in ("r", "t_minus_r"), f"unet.second_time must be 'r' or 't_minus_r', got {self.second_time!r}")


@dataclass
class DispersiveConfig:
    """Dispersive regulariser on UNet down-block features (off when weight is 0). MP1: weight 0.5, blocks (0, 1)."""

    weight: float = 0.0
    temperature: float = 1.0
    variant: str = "infonce_l2"         # "infonce_l2", "cosine" or "hinge"
    blocks: tuple[int, ...] = (0, 1)    # indices of the UNet down blocks whose outputs are dispersed
    normalize_by_max: bool = True       # MP1: divide the distance matrix by its batch max
    hinge_margin: float = 1.0

    def __post_init__(self) -> None:
        check_fields(self)
        self.blocks = tuple(int(b) for b in self.blocks)
        _check(self.weight >= 0, f"dispersive.weight must be >= 0, got {self.weight}")
        _check(self.temperature > 0, f"dispersive.temperature must be > 0, got {self.temperature}")
        _check(self.variant in ("infonce_l2", "cosine", "hinge"),
               f"dispersive.variant must be 'infonce_l2', 'cosine' or 'hinge', got {self.variant!r}")
        _check(len(self.blocks) >= 1 and all(b >= 0 for b in self.blocks) and len(set(self.blocks)) == len(self.blocks),
               f"dispersive.blocks must be distinct non-negative down-block indices, got {self.blocks}")
        _check(self.hinge_margin > 0, f"dispersive.hinge_margin must be > 0, got {self.hinge_margin}")


# --- the policy -----------------------------------------------------------------------------------------
@dataclass
class PolicyConfig:
    head: str = "meanflow"
    head_cfg: HeadConfig | dict | None = None      # None: the head's defaults; a dict is converted
    horizon: int = 4                               # H, predicted actions per chunk (MP1 4, DP3 4 / 16)
    n_obs_steps: int = 2                           # To
    n_action_steps: int = 3                        # executed actions; <= H - To + 1
    n_points: int = 512                            # points per cloud (xyz)
    agent_dim: int = 9                             # proprioceptive state size
    action_dim: int = 4
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    dispersive: DispersiveConfig = field(default_factory=DispersiveConfig)

    def __post_init__(self) -> None:
        check_fields(self)
        head_cls = self.head_spec.config        # an unknown head: ValueError "head must be one of ..."
        if self.head_cfg is None:
            self.head_cfg = head_cls()
        elif isinstance(self.head_cfg, dict):
            self.head_cfg = _from_dict(head_cls, self.head_cfg)
        _check(isinstance(self.head_cfg, head_cls),
               f"head_cfg is a {type(self.head_cfg).__name__} but head is {self.head!r}: pass a {head_cls.__name__}")
        for name, cls in (("encoder", EncoderConfig), ("unet", UNetConfig), ("dispersive", DispersiveConfig)):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, _from_dict(cls, getattr(self, name)))

        for name in ("horizon", "n_obs_steps", "n_action_steps", "n_points", "agent_dim", "action_dim"):
            _check(isinstance(getattr(self, name), int) and getattr(self, name) >= 1,
                   f"{name} must be a positive integer, got {getattr(self, name)!r}")
        _check(self.n_obs_steps <= self.horizon,
               f"n_obs_steps ({self.n_obs_steps}) must be <= horizon ({self.horizon})")
        max_exec = self.horizon - self.n_obs_steps + 1
        _check(self.n_action_steps <= max_exec,
               f"n_action_steps ({self.n_action_steps}) must be <= horizon - n_obs_steps + 1 = {max_exec}: the executed "
               f"actions start at the latest observation (index n_obs_steps - 1 = {self.n_obs_steps - 1}) of the "
               f"{self.horizon}-step window, so only {max_exec} exist (MP1's config asks for 4 with horizon 4 and "
               f"silently executes 3)")
        n_down = len(self.unet.down_dims) - 1
        _check(self.horizon % (2 ** n_down) == 0,
               f"horizon ({self.horizon}) must be divisible by 2**{n_down} = {2 ** n_down}: the UNet with down_dims "
               f"{self.unet.down_dims} halves the time axis {n_down} times")
        _check(max(self.dispersive.blocks) < len(self.unet.down_dims),
               f"dispersive.blocks {self.dispersive.blocks} index down blocks, but the UNet has only "
               f"{len(self.unet.down_dims)} (down_dims {self.unet.down_dims})")
        if self.unet.time_scale is None:
            scale = self.head_spec.time_scale
            scale = float(self.head_cfg.num_train_timesteps if scale is None else scale)
            self.unet = dataclasses.replace(self.unet, time_scale=scale)   # a copy: a shared UNetConfig stays as given

    @property
    def head_spec(self):
        """The head's registry entry (policies/heads.py HeadSpec)."""
        from .heads import head_spec

        return head_spec(self.head)

    @property
    def two_times(self) -> bool:
        """Whether the backbone is conditioned on two times (r, t) (the average-velocity heads)."""
        return self.head_spec.two_times

    @property
    def global_cond_dim(self) -> int:
        return self.n_obs_steps * self.encoder.step_dim

    # --- presets ------------------------------------------------------------------------------------------
    @classmethod
    def mp1(cls, **overrides: Any) -> "PolicyConfig":
        """MP1's recipe: MeanFlow, H = 4, To = 2, 3 executed actions, dispersive loss 0.5 on down blocks 0 and 1."""
        base: dict[str, Any] = dict(head="meanflow", horizon=4, n_obs_steps=2, n_action_steps=3,
                                    dispersive=DispersiveConfig(weight=0.5, temperature=1.0, blocks=(0, 1)))
        base.update(overrides)
        return cls(**base)

    # --- persistence --------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict (tuples become lists); `from_dict` restores an equal config."""
        return _to_jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PolicyConfig":
        return _from_dict(cls, data)   # head_cfg stays a dict here; __post_init__ builds the head's class

    @classmethod
    def from_saved(cls, data: dict[str, Any]) -> "PolicyConfig":
        """A config saved in a checkpoint. A head field added after the checkpoint was written takes the value
        that reproduces how that checkpoint acted (the head config's LEGACY), not today's default."""
        from .heads import registered_heads

        spec = registered_heads().get(data.get("head", "meanflow")) if isinstance(data, dict) else None
        head_cls = spec.config if spec else None
        legacy = getattr(head_cls, "LEGACY", None)
        if legacy and isinstance(data.get("head_cfg"), dict):
            data = {**data, "head_cfg": {**legacy, **data["head_cfg"]}}
        return cls.from_dict(data)


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    return value


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build dataclass `cls` from a dict, refusing unknown keys (a typo must not pass silently)."""
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: expected a dict, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = set(data) - names
    _check(not unknown, f"{cls.__name__}: unknown field(s) {sorted(unknown)}; known: {sorted(names)}")
    nested = {"encoder": EncoderConfig, "unet": UNetConfig, "dispersive": DispersiveConfig}
    kwargs = {}
    for key, value in data.items():
        if cls is PolicyConfig and key in nested and isinstance(value, dict):
            value = _from_dict(nested[key], value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)
