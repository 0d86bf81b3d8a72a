"""Training: `train` (AdamW + cosine warm-up + EMA + clipping, exact resume, DDP under torchrun), checkpoints
(safetensors + JSON, no pickle) and `load_policy` for evaluation and deployment.

Where things are: config.py (TrainConfig), trainer.py (the loop), checkpoint.py (file format, load_policy),
distributed.py (process group, resumable data order).

    from mfp.policies import PolicyConfig
    from mfp.policies.training import TrainConfig, train, load_policy
    result = train("data/reach.zarr", PolicyConfig(head="meanflow"), TrainConfig(steps=2000), "runs/reach")
    policy = load_policy("runs/reach")            # EMA weights, eval mode
"""

from .checkpoint import FORMAT_VERSION, Checkpoint, CheckpointError, load_policy, read_checkpoint
from .config import TrainConfig
from .trainer import NonFiniteLossError, check_data_shapes, data_fingerprint, train

__all__ = ["TrainConfig", "train", "load_policy", "read_checkpoint", "Checkpoint", "CheckpointError",
           "NonFiniteLossError", "FORMAT_VERSION", "check_data_shapes", "data_fingerprint"]
