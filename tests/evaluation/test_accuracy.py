"""Evaluation: teacher-forced exact match is greedy generation's exact match, in one forward pass."""

import pytest
import torch

from minift.data import Batches, TokenizedExample
from minift.evaluation import evaluate, greedy_completions, rouge_scores
from minift.training import TrainConfig, train


@pytest.fixture(scope="module")
def half_trained(tiny_tokenizer, qa_examples, review_examples, tmp_path_factory):
    """A tiny GPT trained briefly on reviews + QA: right on some examples, wrong on others."""
    from minift.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tiny_tokenizer.vocab_size, block_size=128, n_layer=2, n_head=2, n_embd=64))
    examples = review_examples[0] + qa_examples[0]
    config = TrainConfig(out_dir=str(tmp_path_factory.mktemp("run")), max_steps=150, batch_size=16, lr=3e-3,
                         warmup_steps=5, eval_every=150, progress=False)
    train(model, Batches(examples, 16, tiny_tokenizer.pad_id, seed=0), [], tiny_tokenizer.pad_id, config)
    return model.eval()


@pytest.mark.parametrize("task", ["review_examples", "qa_examples"])
def test_teacher_forcing_accuracy_equals_greedy_generation(half_trained, tiny_tokenizer, task, request):
    examples = request.getfixturevalue(task)[1] + request.getfixturevalue(task)[0][:32]
    result = evaluate(half_trained, examples, tiny_tokenizer.pad_id, batch_size=8)
    generated = greedy_completions(half_trained, examples, tiny_tokenizer.eot_id, batch_size=8)
    by_generation = [g == e.input_ids[e.n_prompt_tokens :] for g, e in zip(generated, examples)]
    assert result.correct == by_generation
    assert result.accuracy == sum(by_generation) / len(examples)
    assert 0 < sum(by_generation) < len(examples)  # a mix of right and wrong rows (seen: 59% reviews, 44% QA)


def test_loss_is_the_mean_per_completion_token(half_trained, tiny_tokenizer, review_examples):
    examples = review_examples[1]
    result = evaluate(half_trained, examples, tiny_tokenizer.pad_id, batch_size=5)
    total, n = 0.0, 0
    with torch.no_grad():
        for e in examples:  # one example at a time, no padding: the definition
            logits = half_trained(torch.tensor([e.input_ids]))[0]
            for t in range(e.n_prompt_tokens, len(e.input_ids)):
                total += torch.nn.functional.cross_entropy(logits[t - 1], torch.tensor(e.input_ids[t])).item()
                n += 1
    assert result.n_tokens == n and result.n_examples == len(examples)
    assert result.loss == pytest.approx(total / n, rel=1e-5)  # padded batches vs single rows: fp32 rounding


def test_a_perfect_and_a_hopeless_completion():
    """Hand-made logits: the model is right on every token of row 0 and wrong on one token of row 1."""

    class Oracle(torch.nn.Module):
        def __init__(self, answers):
            super().__init__()
            self.answers = answers
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, ids, attention_mask=None):
            logits = torch.zeros(*ids.shape, 10)
            for b, row in enumerate(self.answers):
                for t, token in row.items():
                    logits[b, t, token] = 5.0
            return logits

    examples = [TokenizedExample([1, 2, 3, 4], [-100, -100, 3, 4], 2, 0), TokenizedExample([1, 2, 3, 4], [-100, -100, 3, 4], 2, 0)]
    # row 0 predicts 3 at position 1 and 4 at position 2; row 1 gets the last token wrong (5, not 4)
    oracle = Oracle([{1: 3, 2: 4}, {1: 3, 2: 5}])
    result = evaluate(oracle, examples, pad_id=0)
    assert result.correct == [True, False] and result.accuracy == 0.5 and result.n_tokens == 4


def test_rouge_of_a_model_that_copies_the_reference_is_one(tiny_tokenizer, qa_examples, half_trained):
    examples = qa_examples[1]
    score = rouge_scores(half_trained, tiny_tokenizer, examples)
    result = evaluate(half_trained, examples, tiny_tokenizer.pad_id)
    # every exactly matched completion scores ROUGE-L 1; the rest score in [0, 1]
    assert result.accuracy <= score <= 1.0


def test_empty_evaluation_is_an_error(half_trained):
    with pytest.raises(ValueError, match="empty list of examples"):
        evaluate(half_trained, [], pad_id=0)


def test_few_shot_prompts_score_the_answer_with_or_without_its_end(tiny_checkpoint):
    from minift.model import load_model
    from minift.evaluation import evaluate_task

    model, tokenizer = load_model(tiny_checkpoint)
    with_end = evaluate_task(model, tokenizer, "reviews", n=6, shots=1)
    answer_only = evaluate_task(model, tokenizer, "reviews", n=6, shots=1, score_end=False)
    # a review's answer is one digit: 2 scored tokens per example with end-of-text, 1 without
    assert (with_end["n_tokens"], answer_only["n_tokens"]) == (12, 6)
    assert with_end["loss"] != answer_only["loss"] and 0.1 < with_end["shot_fraction"] < 0.5
    zero_shot = evaluate_task(model, tokenizer, "reviews", n=6, shots=0, score_end=False)
    assert zero_shot["shot_tokens"] == 0.0


class _Scripted(torch.nn.Module):
    """Greedy decoding of this model writes `script`, one token per call, whatever the prompt."""

    def __init__(self, config, script):
        super().__init__()
        self.config, self.script, self.calls = config, script, 0
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, ids, attention_mask=None, kv_cache=None):
        logits = torch.zeros(*ids.shape, self.config.vocab_size)
        logits[:, -1, self.script[min(self.calls, len(self.script) - 1)]] = 1.0
        self.calls += 1
        return logits


def test_rouge_scores_the_generated_summary_against_the_reference(tiny_tokenizer):
    """The hand-computed case of test_metrics (F = 0.75), through generation: a prediction that is not the
    reference must not score 1, as it would if it were compared with itself."""
    from minift.model import GPTConfig

    tok = tiny_tokenizer
    prompt = tok.encode("Summarize: Ben and Anna plan a meeting.\n")
    reference = tok.encode("Ben will meet Anna at the cafe on Friday.") + [tok.eot_id]
    prediction = tok.encode("Ben will meet Anna at the park.") + [tok.eot_id]
    example = TokenizedExample(prompt + reference, [-100] * len(prompt) + reference, len(prompt), 0)
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=1, n_head=1, n_embd=8)
    assert greedy_completions(_Scripted(config, prediction), [example], tok.eot_id) == [prediction]
    assert rouge_scores(_Scripted(config, prediction), tok, [example]) == pytest.approx(0.75)
    assert rouge_scores(_Scripted(config, reference), tok, [example]) == 1.0


def test_few_shot_examples_are_drawn_from_the_training_split_never_the_test_split(tiny_checkpoint, monkeypatch):
    import minift.evaluation.task_accuracy as task_accuracy
    from minift.data import load_task_data
    from minift.evaluation import evaluate_task
    from minift.model import load_model

    model, tokenizer = load_model(tiny_checkpoint)
    drawn = []  # (query, shots) of every prompt evaluate_task builds
    real = task_accuracy.few_shot_prompt
    monkeypatch.setattr(task_accuracy, "few_shot_prompt",
                        lambda tok, query, shots, *a, **k: drawn.append((query, list(shots))) or real(tok, query, shots, *a, **k))
    evaluate_task(model, tokenizer, "reviews", n=16, shots=1, seed=0, score_end=False)
    data = load_task_data("reviews", tokenizer, model.config.block_size, n_train="all", n_val=0, n_test=16, seed=0, tokenize=())
    train, test = {e.record for e in data.rendered["train"]}, {e.record for e in data.rendered["test"]}
    assert [q for q, _ in drawn] == data.rendered["test"]  # one prompt per test query
    shots = [s for _, ss in drawn for s in ss]
    assert len(shots) == 16
    assert all(s.record in train for s in shots) and not any(s.record in test for s in shots)
