"""The training loop: schedule, accumulation, determinism, exact resume, divergence, early stopping."""

import json
import subprocess
import sys

import pytest
import torch

from minift.data import Batches
from minift.model import GPT, GPTConfig
from minift.training import CompletionLoss, TrainConfig, TrainingDiverged, train


def _config(tmp_path, **overrides):
    defaults = dict(out_dir=str(tmp_path / "run"), max_steps=6, batch_size=8, lr=3e-3, min_lr=3e-4,
                    warmup_steps=2, eval_every=2, progress=False, seed=0)
    return TrainConfig(**{**defaults, **overrides})


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _run(model, examples, config, pad_id):
    train_examples, val_examples = examples
    return train(model, Batches(train_examples, config.batch_size, pad_id, seed=config.seed), val_examples, pad_id, config)


def test_learning_rate_warms_up_then_follows_a_cosine():
    c = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=4, max_steps=104)
    assert [c.learning_rate(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert c.learning_rate(54) == pytest.approx(0.55)  # half way down the cosine: (lr + min_lr) / 2
    assert c.learning_rate(104) == pytest.approx(0.1) and c.learning_rate(500) == pytest.approx(0.1)


def test_bad_configs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="loss must be"):
        TrainConfig(loss="mse")
    with pytest.raises(ValueError, match="optimizer must be"):
        TrainConfig(optimizer="adam")
    with pytest.raises(ValueError, match="do not split into micro-batches of 3"):
        train(GPT(GPTConfig(vocab_size=512, block_size=128, n_layer=1, n_head=1, n_embd=8)), iter([]), [], 0,
              _config(tmp_path, micro_batch_size=3))


def test_the_loss_is_the_mean_over_completion_tokens_of_the_whole_step(tiny_gpt, review_examples, tiny_tokenizer):
    batch = next(Batches(review_examples[0], 8, tiny_tokenizer.pad_id, seed=0))
    loss_sum, n = CompletionLoss(tiny_gpt, "torch")(batch["input_ids"], batch["labels"], batch["attention_mask"])
    assert n == int((batch["labels"] != -100).sum())  # every completion token (eot included) is scored once
    logits = tiny_gpt(batch["input_ids"], attention_mask=batch["attention_mask"])
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), reduction="sum")
    torch.testing.assert_close(loss_sum, expected, rtol=1e-5, atol=1e-5)  # gathering rows before the head: same fp32 sums


def test_gradient_accumulation_equals_one_big_batch(tiny_tokenizer, qa_examples, tmp_path):
    """8 rows at once == 4 micro-batches of 2, with completions of different lengths (SGD: updates are linear in grads)."""
    lengths = {e.n_completion_tokens for e in qa_examples[0]}
    assert len(lengths) > 1  # the test needs completions of different lengths to mean anything
    results = []
    for micro in (None, 2):
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=tiny_tokenizer.vocab_size, block_size=128, n_layer=2, n_head=2, n_embd=32))
        _run(model, (qa_examples[0], []), _config(tmp_path / str(micro), optimizer="sgd", micro_batch_size=micro, max_steps=3), tiny_tokenizer.pad_id)
        results.append(_weights(model))
    for key in results[0]:
        # the same sums in another order: fp32 rounding only
        torch.testing.assert_close(results[1][key], results[0][key], rtol=1e-5, atol=1e-6)


def test_a_mean_of_micro_batch_means_would_differ(tiny_gpt, qa_examples, tiny_tokenizer):
    """The control for the test above: averaging per-micro-batch means weights tokens unequally.

    A micro-batch with n tokens gives each of its tokens weight 1/(k n) instead of 1/N, so the
    gradient differs by far more than the 1e-5 the accumulation test allows.
    """
    batch = next(Batches(qa_examples[0], 8, tiny_tokenizer.pad_id, seed=0))
    loss = CompletionLoss(tiny_gpt, "torch")
    parts = [loss(*(batch[k][i : i + 2] for k in ("input_ids", "labels", "attention_mask"))) for i in range(0, 8, 2)]
    assert len({n for _, n in parts}) > 1
    grad = lambda total: torch.autograd.grad(total, tiny_gpt.transformer.wte.weight, retain_graph=True)[0]
    token_mean = grad(sum(s for s, _ in parts) / sum(n for _, n in parts))
    mean_of_means = grad(sum(s / n for s, n in parts) / len(parts))
    assert (token_mean - mean_of_means).norm() > 1e-2 * token_mean.norm()


def test_training_is_deterministic_and_learns(tiny_tokenizer, review_examples, tmp_path):
    runs = []
    for name in ("a", "b"):
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=tiny_tokenizer.vocab_size, block_size=128, n_layer=2, n_head=2, n_embd=32, dropout=0.1))
        result = _run(model, review_examples, _config(tmp_path / name, max_steps=20, eval_every=10), tiny_tokenizer.pad_id)
        runs.append((result, _weights(model)))
    (a, wa), (b, wb) = runs
    strip = lambda h: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in h]
    assert strip(a.history) == strip(b.history)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    losses = [r["loss"] for r in a.history if r["kind"] == "train"]
    assert losses[-1] < 0.75 * losses[0]  # from ln(512) ~ 6.2 at init; 20 steps reach ~4.1 (seen), well below



@pytest.mark.slow
def test_full_fine_tuning_gives_the_same_weights_at_any_thread_count_and_load(tiny_tokenizer, review_examples, tmp_path):
    """Same command, same numbers: a full fine-tune on 1 thread, and on 2 threads beside a CPU-bound
    process, ends in bitwise the same weights (torch's CPU LayerNorm backward alone would differ)."""
    runs, before = [], torch.get_num_threads()
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # another agent's busy loop
    try:
        for threads in (1, max(2, before)):
            torch.set_num_threads(threads)
            torch.manual_seed(0)
            model = GPT(GPTConfig(vocab_size=tiny_tokenizer.vocab_size, block_size=128, n_layer=2, n_head=2, n_embd=32))
            _run(model, review_examples, _config(tmp_path / str(threads), eval_every=6), tiny_tokenizer.pad_id)
            runs.append(_weights(model))
    finally:
        hog.kill()
        hog.wait()
        torch.set_num_threads(before)
    assert [k for k in runs[0] if not torch.equal(runs[0][k], runs[1][k])] == []


class _Crash(Exception):
    pass


class _CrashingBatches(Batches):
    """Batches that raise on the `after`-th draw: a run killed mid-training."""

    def __init__(self, *args, after, **kwargs):
        super().__init__(*args, **kwargs)
        self.left = after

    def __next__(self):
        self.left -= 1
        if self.left < 0:
            raise _Crash
        return super().__next__()


def test_resume_gives_exactly_the_uninterrupted_run(tiny_tokenizer, review_examples, tmp_path):
    train_ex, val_ex = review_examples
    pad = tiny_tokenizer.pad_id
    config = GPTConfig(vocab_size=tiny_tokenizer.vocab_size, block_size=128, n_layer=2, n_head=2, n_embd=32, dropout=0.1)

    torch.manual_seed(0)
    straight = GPT(config)
    full = _run(straight, review_examples, _config(tmp_path / "straight", max_steps=9, eval_every=3, batch_size=4), pad)

    torch.manual_seed(0)
    crashed = GPT(config)
    c = _config(tmp_path / "resumed", max_steps=9, eval_every=3, batch_size=4)
    with pytest.raises(_Crash):  # killed during step 5, after the step-3 snapshot
        train(crashed, _CrashingBatches(train_ex, 4, pad, seed=0, after=4), val_ex, pad, c)
    torch.manual_seed(123)  # a fresh process: other weights and RNG state, all restored from the snapshot
    resumed = GPT(config)
    c.resume = True
    again = train(resumed, Batches(train_ex, 4, pad, seed=0), val_ex, pad, c)

    strip = lambda h: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in h]
    assert strip(again.history) == strip(full.history)  # the log holds each step once, with the same numbers
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
    assert again.best == full.best


def test_resume_refuses_another_configuration(tiny_gpt, tiny_tokenizer, review_examples, tmp_path):
    _run(tiny_gpt, review_examples, _config(tmp_path, max_steps=2), tiny_tokenizer.pad_id)
    with pytest.raises(ValueError, match=r"differs from the snapshot's in lr \(0.003 -> 0.01\)"):
        _run(tiny_gpt, review_examples, _config(tmp_path, max_steps=2, lr=1e-2, resume=True), tiny_tokenizer.pad_id)


class _PoisonedBatches(Batches):
    """Batches that set a weight of `model` to NaN on the `after`-th draw: a run that diverges."""

    def __init__(self, *args, model, after, **kwargs):
        super().__init__(*args, **kwargs)
        self.model, self.left = model, after

    def __next__(self):
        self.left -= 1
        if self.left == 0:
            with torch.no_grad():
                self.model.transformer.ln_f.weight.fill_(float("nan"))
        return super().__next__()


def test_a_nan_loss_stops_the_run_and_keeps_the_last_snapshot(tiny_gpt, tiny_tokenizer, review_examples, tmp_path):
    train_ex, val_ex = review_examples
    pad = tiny_tokenizer.pad_id
    batches = _PoisonedBatches(train_ex, 8, pad, seed=0, model=tiny_gpt, after=5)
    with pytest.raises(TrainingDiverged, match="the training loss is nan and the gradient norm nan at step 5; stopped before"):
        train(tiny_gpt, batches, val_ex, pad, _config(tmp_path, max_steps=8, eval_every=2))
    snapshots = tmp_path / "run" / "snapshots"
    assert sorted(p.name for p in snapshots.iterdir()) == ["latest.json", "step-0000004"]
    state = json.loads((snapshots / "step-0000004" / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["data"] == {"epoch": 0, "index": 32}


def test_a_new_run_does_not_mix_into_an_earlier_one(tiny_gpt, tiny_tokenizer, review_examples, tmp_path):
    _run(tiny_gpt, review_examples, _config(tmp_path, max_steps=2), tiny_tokenizer.pad_id)
    with pytest.raises(FileExistsError, match=r"already holds metrics.jsonl.* from an earlier run: overwrite=True \(--overwrite\) replaces them, resume=True"):
        _run(tiny_gpt, review_examples, _config(tmp_path, max_steps=2), tiny_tokenizer.pad_id)
    _run(tiny_gpt, review_examples, _config(tmp_path, max_steps=2, overwrite=True), tiny_tokenizer.pad_id)
    records = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in records] == [1, 2, 2]  # one run's log: train 1, train 2, eval 2


def test_early_stopping_and_best_weights(tiny_gpt, tiny_tokenizer, review_examples, tmp_path):
    # lr 0 after warmup's first steps: validation cannot improve, so patience 2 stops at the third evaluation
    result = _run(tiny_gpt, review_examples, _config(tmp_path, lr=0.0, min_lr=0.0, max_steps=20, eval_every=1, early_stopping_patience=2), tiny_tokenizer.pad_id)
    assert result.stopped_early and result.steps == 3 and result.best_step == 1
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [1, 2, 3]
    assert (tmp_path / "run" / "curves.png").stat().st_size > 10_000


def test_the_best_checkpoint_is_loaded_at_the_end(tiny_gpt, tiny_tokenizer, review_examples, tmp_path):
    from safetensors.torch import load_file

    result = _run(tiny_gpt, review_examples, _config(tmp_path, max_steps=6, eval_every=2), tiny_tokenizer.pad_id)
    best = load_file(tmp_path / "run" / "best" / "trainable.safetensors")
    assert result.best_step in (2, 4, 6)
    for name, p in tiny_gpt.named_parameters():
        assert torch.equal(p.detach(), best[name]), name


def test_activation_checkpointing_trains_identically(tiny_tokenizer, review_examples, tmp_path):
    results = []
    for flag in (False, True):
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=tiny_tokenizer.vocab_size, block_size=128, n_layer=2, n_head=2, n_embd=32))
        _run(model, (review_examples[0], []), _config(tmp_path / str(flag), max_steps=3, activation_checkpointing=flag), tiny_tokenizer.pad_id)
        results.append(_weights(model))
    for key in results[0]:
        torch.testing.assert_close(results[1][key], results[0][key], rtol=0, atol=0)  # recomputation repeats the same ops


@pytest.mark.parametrize("device, loss, optimizer", [("cpu", "fused", "adamw"), ("cuda", "fused-linear", "fused-adamw")])
def test_auto_loss_and_optimizer_by_device(device, loss, optimizer):
    # no GPU needed: resolve only names the device
    assert TrainConfig(device=device).resolve() == (torch.device(device), loss, optimizer)
    assert TrainConfig(device=device, loss="torch", optimizer="sgd").resolve()[1:] == ("torch", "sgd")


@pytest.mark.slow
@pytest.mark.parametrize("loss, optimizer", [("fused", "fused-adamw"), ("fused-linear", "fused-adamw")])
def test_the_kernels_train_the_same_loss_curve(tiny_tokenizer, qa_examples, tmp_path, loss, optimizer):
    """With TRITON_INTERPRET=1 (tests/conftest.py) the kernels run as Triton programs on the CPU."""
    curves = []
    for name, (l, o) in {"torch": ("torch", "adamw"), "kernels": (loss, optimizer)}.items():
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=tiny_tokenizer.vocab_size, block_size=128, n_layer=2, n_head=2, n_embd=32))
        result = _run(model, (qa_examples[0], []), _config(tmp_path / name, max_steps=6, loss=l, optimizer=o), tiny_tokenizer.pad_id)
        curves.append([r["loss"] for r in result.history if r["kind"] == "train"])
    # fp32 sums in another order (chunks, one program per row) and AdamW's 1/sqrt(v): differences
    # of ~1e-6 relative, far below the loss's change per step (~1e-1)
    assert curves[1] == pytest.approx(curves[0], rel=1e-4)
    assert curves[0][-1] < curves[0][0] - 0.2  # it trains: 6.21 -> 5.87 in 6 steps (seen)


def test_cuda_rng_states_are_restored_in_device_order():
    from minift.training.snapshot import cuda_rng_keys

    keys = {f"rank0.rng.cuda.{i}": i for i in range(12)} | {"rank1.rng.cuda.0": 0, "rank0.rng.cpu": 0}
    assert cuda_rng_keys(keys, "rank0.") == [f"rank0.rng.cuda.{i}" for i in range(12)]  # 11 GPUs and more: 2 before 10


def _strict_json(line: str):
    """json.loads that refuses NaN and Infinity, which Python's json writes by default but JSON does not have."""
    return json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in a metrics line: {line}"))


def _poison_gradient_at(model, step):
    """A finite loss whose gradient holds a NaN on optimizer step `step` (1-based) only."""
    calls = {"n": 0}

    def hook(grad):
        calls["n"] += 1
        return grad * float("nan") if calls["n"] == step else grad

    model.transformer.ln_f.bias.register_hook(hook)  # one backward per step: no micro-batches here


@pytest.mark.slow
@pytest.mark.parametrize("on_nonfinite", ["stop", "skip"])
def test_a_nan_gradient_never_reaches_the_weights_or_a_snapshot(tiny_gpt, tiny_tokenizer, review_examples, tmp_path,
                                                                 on_nonfinite):
    _poison_gradient_at(tiny_gpt, step=3)  # the loss stays finite: only a check of the gradient catches it
    config = _config(tmp_path, max_steps=4, eval_every=2, on_nonfinite=on_nonfinite)
    optimizer = torch.optim.AdamW(tiny_gpt.parameters(), lr=config.lr)
    run = lambda: train(tiny_gpt, Batches(review_examples[0], 8, tiny_tokenizer.pad_id, seed=0), review_examples[1],
                        tiny_tokenizer.pad_id, config, optimizer=optimizer)
    if on_nonfinite == "stop":
        with pytest.raises(TrainingDiverged, match=r"the training loss is [\d.]+ and the gradient norm nan at step 3"):
            run()
    else:
        with pytest.warns(UserWarning, match="step 3: non-finite loss or gradient; its update was skipped"):
            run()
    assert {int(state["step"]) for state in optimizer.state.values()} == {2 if on_nonfinite == "stop" else 3}
    assert all(bool(torch.isfinite(v).all()) for v in tiny_gpt.state_dict().values())
    from safetensors.torch import load_file
    for saved in (tmp_path / "run").rglob("*.safetensors"):
        assert all(bool(torch.isfinite(t).all()) for t in load_file(str(saved)).values() if t.is_floating_point())
    records = [_strict_json(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["kind"] == "train"]
    # "stop" logs steps 1-2 (step 3 raised); "skip" logs step 3 with its NaN norm as null, then step 4
    assert [r["step"] for r in train_records] == ([1, 2] if on_nonfinite == "stop" else [1, 2, 3, 4])
    if on_nonfinite == "skip":
        assert train_records[2]["grad_norm"] is None and train_records[3]["grad_norm"] > 0


def test_resume_without_a_snapshot_starts_clean_and_says_so(tiny_gpt, tiny_tokenizer, review_examples, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    killed = [{"step": s, "kind": "train", "loss": 9.0} for s in range(1, 48)]  # a run killed before its first snapshot
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in killed))
    result = _run(tiny_gpt, review_examples, _config(tmp_path, max_steps=2, eval_every=2, resume=True), tiny_tokenizer.pad_id)
    assert "resume: no snapshot in" in capsys.readouterr().err and result.steps == 2
    records = [_strict_json(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["kind"]) for r in records] == [(1, "train"), (2, "train"), (2, "eval")]
    assert all(r["loss"] != 9.0 for r in records)


@pytest.mark.parametrize("field, value", [("lr", -1.0), ("lr", float("nan")), ("min_lr", -1e-4), ("warmup_steps", -1),
                                          ("grad_clip", 0.0), ("on_nonfinite", "ignore")])
def test_bad_numbers_are_refused_at_construction(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_a_non_finite_parameter_is_never_saved(tiny_gpt, tmp_path):
    from minift.training.snapshot import save_trainable_tensors

    with torch.no_grad():
        tiny_gpt.transformer.ln_f.weight[3] = float("inf")
    with pytest.raises(ValueError, match=r"not saving .*best: 1 trainable tensors hold NaN or inf \(first: transformer.ln_f.weight\)"):
        save_trainable_tensors(tiny_gpt, tmp_path / "best")
    assert not (tmp_path / "best").exists()


def test_a_full_disk_under_the_metrics_log_names_the_file():
    from pathlib import Path

    from minift.training import MetricsLog

    log = MetricsLog(Path("/dev/full"))  # every write to /dev/full fails with ENOSPC, as on a full disk
    with pytest.raises(OSError, match="cannot write /dev/full: No space left on device"):
        log.write({"step": 1, "loss": float("nan")})
