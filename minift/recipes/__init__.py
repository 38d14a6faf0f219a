"""The course's recipes, end to end: pretrain the base model, fine-tune it on a task, compare full
fine-tuning with PEFT, and the experiments behind the course's claims.

    record = finetune(FinetuneConfig(task="reviews", method="lora"))
    rows = compare(CompareConfig(task="arithmetic"))
"""

from minift.recipes.tables import format_table
from minift.recipes.claims import Claim, claims_table
from minift.recipes.finetuning import DEFAULT_LR, FinetuneConfig, default_train_config, finetune
from minift.recipes.pretraining import PretrainConfig, pretrain
from minift.recipes.comparison import CompareConfig, compare, format_rows
from minift.recipes.experiments import EXPERIMENTS, ExperimentConfig, run_experiments

__all__ = [
    "DEFAULT_LR", "EXPERIMENTS",
    "Claim", "CompareConfig", "ExperimentConfig", "FinetuneConfig", "PretrainConfig",
    "claims_table", "compare", "default_train_config", "finetune", "format_rows", "format_table", "pretrain", "run_experiments",
]
