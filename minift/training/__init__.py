"""Training: the hand-written loop, the loss of the completion tokens, the optimizer and its schedule,
the metrics log, snapshots for exact resume, and data parallelism under torchrun (DDP, or FSDP2's
sharding: `STRATEGIES`).

    result = train(model, Batches(data.train, 16, tokenizer.pad_id), data.validation, tokenizer.pad_id,
                   TrainConfig(out_dir="runs/mine", max_steps=200))

`LOSSES`, `OPTIMIZERS` and `STRATEGIES` are the one list of each choice; "auto" means `default_loss(device)` and
`default_optimizer(device)`.
"""

from minift.training.loss import LOSSES, CompletionLoss, default_loss
from minift.training.optim import OPTIMIZERS, build_optimizer, default_optimizer, learning_rate
from minift.training.sharding import (
    STRATEGIES,
    Strategy,
    gathered_state_dict,
    get_strategy,
    is_sharded,
    parallelize,
    shard_model,
    shard_numel,
    shard_optimizer,
)
from minift.training.config import NONFINITE, SELECTIONS, TrainConfig
from minift.training.log import MetricsLog, plot_curves, read_metrics
from minift.training.snapshot import Snapshot, load_snapshot, save_snapshot
from minift.training.loop import RUN_FILES, TrainingDiverged, TrainResult, train

__all__ = [
    "LOSSES", "NONFINITE", "OPTIMIZERS", "RUN_FILES", "SELECTIONS", "STRATEGIES",
    "CompletionLoss", "MetricsLog", "Snapshot", "Strategy", "TrainConfig", "TrainResult", "TrainingDiverged",
    "build_optimizer", "default_loss", "default_optimizer", "gathered_state_dict", "get_strategy", "is_sharded", "parallelize",
    "learning_rate", "load_snapshot", "plot_curves",
    "read_metrics", "save_snapshot", "shard_model", "shard_numel", "shard_optimizer", "train",
]
