"""Evaluation: loss and exact-match accuracy in one teacher-forced pass, ROUGE-L of generated
summaries, and accuracy on a task's test split, zero-shot or few-shot.

    result = evaluate(model, tokenized_examples, tokenizer.pad_id)       # .loss, .accuracy
    record = evaluate_task(model, tokenizer, "reviews", shots=3, score_end=False)
"""

from minift.evaluation.metrics import exact_match, lcs_length, rouge_l, words
from minift.evaluation.accuracy import EvalResult, evaluate, greedy_completions, rouge_scores
from minift.evaluation.task_accuracy import evaluate_task, few_shot_examples

__all__ = [
    "EvalResult", "evaluate", "evaluate_task", "exact_match", "few_shot_examples", "greedy_completions",
    "lcs_length", "rouge_l", "rouge_scores", "words",
]
