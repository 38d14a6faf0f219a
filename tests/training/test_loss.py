"""The loss of a step: the scale folded into each loss, and a step's forward and backward without host syncs."""

import pytest
import torch

from minift.model import GPT, GPTConfig
from minift.training import LOSSES, CompletionLoss
from minift.training.loop import _allow_tf32
from minift.training.loss import scored_rows

CONFIG = GPTConfig(vocab_size=97, block_size=16, n_layer=1, n_head=2, n_embd=16)


def _batch(B=3, T=12):
    input_ids = torch.randint(0, CONFIG.vocab_size, (B, T))
    labels = input_ids.clone()
    labels[:, :5] = -100  # the prompt
    labels[0, 9:] = -100  # a shorter completion, then padding
    return input_ids, labels, torch.ones(B, T, dtype=torch.long)


@pytest.mark.parametrize("loss", LOSSES)
def test_scale_multiplies_the_loss_and_its_gradient(loss):
    model = GPT(CONFIG)
    ids, labels, mask = _batch()
    loss_module = CompletionLoss(model, loss)
    plain, n = loss_module(ids, labels, mask)
    grad = torch.autograd.grad(plain, model.transformer.wte.weight)[0]
    scaled, n_scaled = loss_module(ids, labels, mask, scale=1 / 7)
    grad_scaled = torch.autograd.grad(scaled, model.transformer.wte.weight)[0]
    assert n == n_scaled == int((labels[:, 1:] != -100).sum())
    torch.testing.assert_close(scaled, plain / 7, rtol=1e-6, atol=0)  # one fp32 multiply apart
    # the same sums, scaled before or after: an entry that cancels near zero keeps the rounding of the large
    # terms it summed (2**-24 relative each, over the 16 scored tokens): an atol relative to the largest entry
    torch.testing.assert_close(grad_scaled, grad / 7, rtol=1e-5, atol=1e-6 * grad.abs().max().item() / 7)


def test_rows_given_equal_rows_computed():
    model = GPT(CONFIG)
    ids, labels, mask = _batch()
    rows = scored_rows(labels)
    # flat positions whose next token is scored: (row, t) with labels[row, t + 1] kept, counted as row * T + t
    kept = (labels[:, 1:] != -100).nonzero().tolist()
    assert rows.tolist() == [r * labels.shape[1] + t for r, t in kept]
    torch.testing.assert_close(CompletionLoss(model, "fused")(ids, labels, mask, rows=rows)[0],
                               CompletionLoss(model, "fused")(ids, labels, mask)[0])


def test_a_step_reads_nothing_back_from_the_device():
    # On a GPU every read of a device value on the host (.item(), bool(), a boolean-mask index) waits for
    # the device. The meta device stands in for one: it has no values, so any such read raises here.
    with torch.device("meta"):
        model = GPT(CONFIG)
    ids, labels, _ = (t.to("meta") for t in _batch())
    rows = scored_rows(_batch()[1]).to("meta")  # computed on the host, as the training loop does
    loss, n = CompletionLoss(model, "torch")(ids, labels, None, scale=0.5, rows=rows)
    loss.backward()
    assert model.transformer.wte.weight.grad.device.type == "meta" and n == len(rows)


def test_tf32_is_set_on_cuda_only():
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        _allow_tf32(torch.device("cpu"), True)
        assert torch.backends.cuda.matmul.allow_tf32 is False
        _allow_tf32(torch.device("cuda"), True)  # sets the flag; needs no GPU
        assert torch.backends.cuda.matmul.allow_tf32 is True and torch.backends.cudnn.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def test_the_loop_folds_the_step_normalisation_into_the_loss(monkeypatch, tmp_path, review_examples, tiny_tokenizer):
    # The loop passes 1 / (the step's tokens) as the loss's scale and calls backward() on what the loss returns:
    # the gradient arriving at that loss is exactly 1, so the fused losses have nothing to rescale.
    import minift.training.loop as loop
    from minift.data import Batches
    from minift.training import TrainConfig, train

    seen = []

    class Recording(CompletionLoss):
        def forward(self, *args, **kwargs):
            loss, n = super().forward(*args, **kwargs)
            loss.register_hook(lambda grad: seen.append((kwargs.get("scale"), float(grad))))
            return loss, n

    monkeypatch.setattr(loop, "CompletionLoss", Recording)
    model = GPT(GPTConfig(vocab_size=tiny_tokenizer.vocab_size, block_size=128, n_layer=1, n_head=2, n_embd=16))
    config = TrainConfig(out_dir=str(tmp_path / "run"), max_steps=1, batch_size=8, micro_batch_size=4, progress=False)
    batches = Batches(review_examples[0], 8, tiny_tokenizer.pad_id, seed=0)
    first = next(Batches(review_examples[0], 8, tiny_tokenizer.pad_id, seed=0))
    train(model, batches, [], tiny_tokenizer.pad_id, config)
    n_tokens = int((first["labels"][:, 1:] != -100).sum())
    assert seen == [(1 / n_tokens, 1.0), (1 / n_tokens, 1.0)]  # two micro-batches, one scale for the whole step
