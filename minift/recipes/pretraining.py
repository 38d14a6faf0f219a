"""Pretraining the tiny base model on the built-in corpus, with the same loop as fine-tuning.

Pretraining is next-token prediction on plain text. In minift's terms it is fine-tuning in which
every token is a completion token: the corpus is packed into blocks of `block_size` tokens
(documents joined by end-of-text, so the model learns where a text ends), each block an example
whose labels are its own ids. The training loop, snapshots and logs are the fine-tuning ones.

    minift pretrain --out runs/base

builds a tokenizer and weights like those that ship with minift as its default base model
(minift/assets/tiny-m, made with the defaults), and records in pretrain.json how they were made
(the README gives the time it took).
"""

from __future__ import annotations

import dataclasses
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from minift._files import run_directory, write_json
from minift.data import Batches, CorpusConfig, generate_corpus, pack
from minift.evaluation import evaluate
from minift.model import GPT, GPTConfig, save_model
from minift.tokenizer import Tokenizer
import minift.training.distributed as dist
from minift.training import TrainConfig, gathered_state_dict, is_sharded, train


# what `pretrain` writes into its output directory (a checkpoint, its tokenizer and record, the run)
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "pretrain.json", "train")


@dataclass
class PretrainConfig:
    out: str = "runs/base"  # where the model, tokenizer and pretrain.json go
    n_documents: int = 8000  # corpus size (the generator's documents); ~3.6 MB of text
    vocab_size: int = 2048  # enough for the world's few hundred words plus their inflections
    size: str = "tiny-m"  # the base model's depth and width, one of TINY_SIZES
    block_size: int = 512  # train on full-length blocks so every position embedding is learned
    val_fraction: float = 0.02  # share of the packed blocks held out for validation
    seed: int = 0  # the corpus, the initialisation and the data order
    overwrite: bool = False  # replace a model an earlier run wrote into OUT (refused otherwise)
    train: TrainConfig | None = None  # None: the recipe of the shipped base model, writing to OUT/train

    def __post_init__(self):
        if self.train is None:
            self.train = TrainConfig(out_dir=str(Path(self.out) / "train"), max_steps=1500, batch_size=16, lr=2e-3,
                                     warmup_steps=100, weight_decay=0.1, eval_every=250, select_by="loss", overwrite=self.overwrite,
                                     seed=self.seed)


def pretrain(config: PretrainConfig) -> tuple[GPT, Tokenizer, dict]:
    """Generate the corpus, train the tokenizer, pretrain the model; save all three into `config.out`.

    Returns the model, the tokenizer and the record written to pretrain.json.
    """
    t0 = time.perf_counter()
    dist.setup()  # under torchrun: join the ranks now, so that one of them alone claims the output directory
    # --overwrite writes the new model beside the old one and swaps it in at the end (minift._files.run_directory)
    with run_directory(config.out, MODEL_FILES, config.overwrite, claim=dist.rank() == 0) as work:
        dist.barrier()  # the directory exists before any rank writes into it
        model, tokenizer, record = _pretrain(config, work, t0)
        dist.barrier()  # every rank is done with it before rank 0 swaps it into place
    return model, tokenizer, record


def _pretrain(config: PretrainConfig, work: Path, t0: float) -> tuple[GPT, Tokenizer, dict]:
    """The run itself, writing into `work` (the output directory, or its staging copy under --overwrite)."""
    out = Path(config.out)
    train_dir = Path(config.train.out_dir)
    if train_dir.resolve().is_relative_to(out.resolve()):  # the default OUT/train: staged with the model
        train_dir = work / train_dir.resolve().relative_to(out.resolve())
    documents = generate_corpus(CorpusConfig(n_documents=config.n_documents, seed=config.seed))
    tokenizer = Tokenizer.train(documents, config.vocab_size)
    blocks = pack(tokenizer, documents, config.block_size)
    n_val = max(1, int(len(blocks) * config.val_fraction))
    train_blocks, val_blocks = blocks[n_val:], blocks[:n_val]
    t_data = time.perf_counter() - t0

    torch.manual_seed(config.seed)
    model_config = GPTConfig.from_name(config.size, vocab_size=tokenizer.vocab_size, block_size=config.block_size)
    model = GPT(model_config)
    batches = Batches(train_blocks, config.train.batch_size, tokenizer.pad_id, seed=config.seed)
    result = train(model, batches, val_blocks, tokenizer.pad_id, dataclasses.replace(config.train, out_dir=str(train_dir)))
    if is_sharded(model):  # FSDP2 under torchrun: the trained weights, gathered into an unsharded copy
        state = gathered_state_dict(model)
        model = GPT(model_config)
        model.load_state_dict(state)
    val = evaluate(model, val_blocks, tokenizer.pad_id)
    model.cpu()
    if dist.rank() == 0:  # every rank holds the same model: one writes it
        save_model(model, tokenizer, work)
    record = {
        "command": "minift pretrain " + " ".join(f"--{k} {v}" for k, v in _flags(config).items()),
        "config": asdict(config),
        "model": asdict(model_config),
        "parameters": model.num_parameters(),
        "corpus": {"documents": len(documents), "characters": sum(map(len, documents)),
                   "tokens": sum(len(b.input_ids) for b in blocks), "blocks": len(blocks)},
        "steps": result.steps,
        "tokens_seen": result.steps * config.train.batch_size * config.block_size,
        "final_train_loss": result.final_train_loss,
        "val_loss": val.loss,
        "data_time_s": round(t_data, 1),
        "train_time_s": round(result.wall_time_s, 1),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
    }
    if dist.rank() == 0:
        write_json(work / "pretrain.json", record)
    return model, tokenizer, record


def _flags(config: PretrainConfig) -> dict:
    """The command-line flags that reproduce `config` (see minift/cli's pretrain parser)."""
    return {"out": config.out, "size": config.size, "n-documents": config.n_documents, "steps": config.train.max_steps,
            "seed": config.seed}
