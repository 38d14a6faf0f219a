"""One rank's bytes under DDP and ZeRO-1/2/3: ZeRO's published arithmetic, FSDP2's shards, the CLI's JSON."""

import json

import pytest
import torch

from minift.cli import main
from minift.memory import CATEGORIES, RunSpec, model_config, predict
from minift.model import GPT, GPTConfig
from minift.peft import LoraConfig, apply_peft
from minift.training import STRATEGIES, shard_numel

# Rajbhandari et al. 2020, Figure 1: Psi = 7.5B, N = 64, K = 12. A GPT-2-shaped model of 7.500B parameters
# (36 layers of width 4096; the vocabulary chosen so that Psi lands on 7.5B, as the figure assumes).
ZERO_MODEL = GPTConfig(vocab_size=59065, block_size=2048, n_layer=36, n_head=32, n_embd=4096, dropout=0.0)
ZERO_FIGURE_1_GB = {"ddp": "120", "zero1": "31.4", "zero2": "16.6", "zero3": "1.9"}  # as printed in the figure
SMALL = GPTConfig(vocab_size=211, block_size=96, n_layer=3, n_head=2, n_embd=24)
MODEL_STATES = ("weights_frozen", "weights_trainable", "gradients", "optimizer_state")


def _states(prediction) -> int:
    return sum(prediction.sizes[c] for c in MODEL_STATES)


@pytest.mark.parametrize("strategy", list(ZERO_FIGURE_1_GB))
def test_zero_paper_figure_1_per_device_model_states(strategy):
    spec = RunSpec(ZERO_MODEL, dtype="bfloat16", precision="mixed", strategy=strategy, ranks=64, batch_size=1, seq_len=8)
    prediction = predict(spec)
    assert prediction.total_params == pytest.approx(7.5e9, rel=1e-6)
    gb = _states(prediction) / 1e9  # the figure's GB are 10^9 bytes
    printed = ZERO_FIGURE_1_GB[strategy]
    # the figure rounds to 3 significant digits (2 for 1.9): our value, rounded alike, is the printed one
    assert f"{gb:.{3 if gb >= 10 else 2}g}" == printed, gb


@pytest.mark.parametrize("shape", [(211, 24), (24,), (72, 24), (5, 3, 7), ()])
@pytest.mark.parametrize("ranks", [2, 3, 5])
def test_shard_is_fsdp2s_padded_dim0_chunk(shape, ranks):
    t = torch.empty(shape)
    # FSDP2 pads dim 0 to a multiple of the ranks: each shard has the rows of torch.chunk's first (largest) piece
    expected = t.numel() if t.dim() == 0 else torch.chunk(t, ranks, dim=0)[0].numel()
    assert shard_numel(t.shape, ranks) == expected


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_one_rank_is_one_process_whatever_the_strategy(strategy):
    assert predict(RunSpec(SMALL, strategy=strategy, seq_len=17)).sizes == predict(RunSpec(SMALL, seq_len=17)).sizes


@pytest.mark.parametrize("peft", [None, LoraConfig(rank=4)], ids=["full", "lora"])
@pytest.mark.parametrize("ranks", [2, 4])
def test_what_each_stage_shards(peft, ranks):
    p = {s: predict(RunSpec(SMALL, peft, strategy=s, ranks=ranks, seq_len=17)) for s in STRATEGIES}
    ddp = p["ddp"].sizes
    model = GPT(SMALL) if peft is None else apply_peft(GPT(SMALL), peft)
    frozen = [q for q in model.parameters() if not q.requires_grad]
    trainable = [q for q in model.parameters() if q.requires_grad]
    shard = lambda qs, per_element: sum(shard_numel(q.shape, ranks) for q in qs) * per_element
    # one rank's bytes when a category is sharded: FSDP2's shards, 4 B (fp32) per element, 8 for AdamW's
    # two moments, plus its 0-dim step per tensor, which is not split
    sharded = {"weights_frozen": shard(frozen, 4), "weights_trainable": shard(trainable, 4),
               "gradients": shard(trainable, 4), "optimizer_state": shard(trainable, 8) + 4 * len(trainable)}
    for stage, split in [("zero1", {"optimizer_state"}), ("zero2", {"optimizer_state", "gradients"}),
                         ("zero3", {"optimizer_state", "gradients", "weights_frozen", "weights_trainable"})]:
        for c in MODEL_STATES:
            assert p[stage].sizes[c] == (sharded[c] if c in split else ddp[c]), (stage, c)
            if c in split and ddp[c]:
                assert p[stage].sizes[c] < ddp[c] / ranks * 1.05  # the padding is a few rows at most
        assert p[stage].sizes["activations"] == ddp["activations"]  # each rank runs its own rows whole
    assert p["fsdp"].sizes == p["zero3"].sizes
    # DDP's buckets: one flat copy of the trainable gradients
    assert ddp["communication"] == p["ddp"].trainable_params * 4 == p["zero1"].sizes["communication"]


def test_zero3_gathers_the_root_and_two_blocks_and_zero2_keeps_its_shards():
    ranks, s = 2, 4
    p3 = predict(RunSpec(SMALL, strategy="zero3", ranks=ranks, seq_len=17))
    gpt = GPT(SMALL)
    block = sum(q.numel() for q in gpt.transformer.h[0].parameters()) * s
    root = p3.total_params * s - SMALL.n_layer * block
    forward = next(m for m in p3.moments if m.phase == "forward")
    assert forward.bytes["communication"] == root + 2 * block
    # backward adds the reduce-scatter's unsharded gradient and its flat copy, of the largest unit (the root)
    backward = next(m for m in p3.moments if m.phase == "backward")
    assert backward.bytes["communication"] == root + 2 * block + 2 * root
    p2 = predict(RunSpec(SMALL, strategy="zero2", ranks=ranks, seq_len=17))
    optimizer = next(m for m in p2.moments if m.phase == "optimizer")
    # by the optimizer step FSDP2 has resharded: the weights are the shards alone, no buffers
    assert optimizer.bytes["weights_trainable"] == sum(shard_numel(q.shape, ranks) for q in gpt.parameters()) * s
    assert optimizer.bytes["communication"] == 0


def test_mixed_precision_needs_16_bit_weights():
    with pytest.raises(ValueError, match="use dtype bfloat16 or float16, not float32"):
        RunSpec(SMALL, precision="mixed")


def test_cli_predicts_one_rank_of_a_config_json_as_json(tmp_path, capsys):
    config = {"model_type": "gpt2", "vocab_size": 211, "n_positions": 96, "n_layer": 3, "n_head": 2, "n_embd": 24}
    (tmp_path / "config.json").write_text(json.dumps(config))
    argv = ["memory", "--model", str(tmp_path / "config.json"), "--predict-only", "--json", "--strategy", "zero3",
            "--ranks", "4", "--seq", "17", "--batch", "2", "--device", "cpu", "--optimizer", "adamw", "--loss", "fused"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["predicted"]) == {"sizes", "peak", "phases", "moments", "gemm_workspace"}
    assert tuple(out["predicted"]["sizes"]) == CATEGORIES
    expected = predict(RunSpec(model_config(str(tmp_path / "config.json")), strategy="zero3", ranks=4, seq_len=17, batch_size=2,
                               optimizer="adamw", loss="fused"))
    assert out["predicted"]["sizes"] == expected.sizes
