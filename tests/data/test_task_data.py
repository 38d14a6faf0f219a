"""Sizes of a run's data: a file is used whole by default, split 80/10/10; "all" takes a whole split."""

import json
import re

import pytest

from minift.data import OWN_DATA_EXAMPLE, load_task_data
from minift.data.task_data import BUILTIN_SIZES


@pytest.fixture
def alpaca_file(tmp_path):
    rows = [{"instruction": f"Repeat {i}.", "input": "", "output": str(i)} for i in range(300)]
    path = tmp_path / "mine.JSONL"  # the suffix in capitals: still a data file, not a task name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_file_is_used_whole_by_default(tokenizer, alpaca_file):
    data = load_task_data(str(alpaca_file), tokenizer, max_length=64)
    assert (len(data.train), len(data.validation), len(data.test)) == (240, 30, 30)
    assert data.chance_accuracy is None


@pytest.mark.parametrize("sizes, expected", [(dict(n_train="all", n_val=5, n_test="all"), (240, 5, 30)),
                                             (dict(n_train=10), (10, 30, 30))])
def test_all_and_numbers_for_a_file(tokenizer, alpaca_file, sizes, expected):
    data = load_task_data(str(alpaca_file), tokenizer, max_length=64, **sizes)
    assert (len(data.train), len(data.validation), len(data.test)) == expected


def test_a_built_in_task_keeps_its_default_sizes_and_all_takes_the_whole_split(tokenizer):
    data = load_task_data("reviews", tokenizer, max_length=128, n_train="all", tokenize=())
    assert [len(data.rendered[s]) for s in ("validation", "test")] == [BUILTIN_SIZES["validation"], BUILTIN_SIZES["test"]]
    assert len(data.rendered["train"]) == 1399  # POOL_SIZE 2000 x 0.7, rounded per label (stratified)
    default = load_task_data("reviews", tokenizer, max_length=128, tokenize=())
    assert len(default.rendered["train"]) == BUILTIN_SIZES["train"]


@pytest.mark.parametrize("sizes, message", [
    (dict(n_train=241), "241 train examples asked, but the train split holds 240 (of 300 records); ask for 'all'"),
    (dict(n_val="most"), "the number of validation examples must be a number or 'all', got 'most'"),
])
def test_bad_sizes_say_what_the_file_holds(tokenizer, alpaca_file, sizes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_task_data(str(alpaca_file), tokenizer, max_length=64, **sizes)


def test_templates_for_a_built_in_task_are_refused(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="templates .* are for a data file"):
        load_task_data("reviews", tokenizer, max_length=64, templates=str(tmp_path / "t.json"))


def test_the_own_data_example_shows_both_files():
    assert '{"question": ' in OWN_DATA_EXAMPLE and '"templates": [' in OWN_DATA_EXAMPLE
