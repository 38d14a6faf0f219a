import re
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minift.data import get_task, split_records


@pytest.fixture(scope="module")
def reviews():
    return get_task("reviews").generate(1000, 0)


def ids(records):
    return [r["id"] for r in records]


def test_sizes_follow_the_fractions_and_are_reported(reviews):
    splits = split_records(reviews, (0.8, 0.1, 0.1), seed=0)
    assert splits.sizes == {"train": 800, "validation": 100, "test": 100}
    assert str(splits) == "train 800, validation 100, test 100 (not stratified)"


def test_splits_are_disjoint_and_cover_every_record(reviews):
    splits = split_records(reviews, (0.7, 0.2, 0.1), seed=3, label_field="stars")
    train, validation, test = (set(ids(s)) for s in (splits.train, splits.validation, splits.test))
    assert not (train & validation) and not (train & test) and not (validation & test)
    assert train | validation | test == set(ids(reviews))
    # Built-in records are distinct in content too, so no input text is in two splits.
    bodies = [r["review_body"] for r in splits.train + splits.validation + splits.test]
    assert len(set(bodies)) == len(bodies)


def test_splits_are_deterministic_by_seed(reviews):
    first = split_records(reviews, seed=0, label_field="stars")
    assert split_records(reviews, seed=0, label_field="stars") == first
    assert ids(split_records(reviews, seed=1, label_field="stars").test) != ids(first.test)


def test_records_keep_their_input_order(reviews):
    position = {r["id"]: i for i, r in enumerate(reviews)}
    for split in split_records(reviews, seed=0, label_field="stars").train, :
        assert [position[i] for i in ids(split)] == sorted(position[i] for i in ids(split))


def test_stratified_splits_keep_the_label_distribution(reviews):
    splits = split_records(reviews, (0.8, 0.1, 0.1), seed=0, label_field="stars")
    assert str(splits).endswith("(stratified by 'stars')")
    per_label = Counter(r["stars"] for r in reviews)
    for name, fraction in zip(("train", "validation", "test"), (0.8, 0.1, 0.1)):
        counts = Counter(r["stars"] for r in getattr(splits, name))
        for label, n in per_label.items():
            assert abs(counts[label] - n * fraction) < 1, (name, label)


def test_largest_remainder_rounding_ties_go_to_the_earlier_split():
    records = [{"id": i} for i in range(10)]
    assert split_records(records, (0.5, 0.25, 0.25), seed=0).sizes == {"train": 5, "validation": 3, "test": 2}


@pytest.mark.parametrize("fractions", [(0.8, 0.1), (0.8, 0.3, 0.1), (1.1, -0.1, 0.0)])
def test_bad_fractions(fractions):
    with pytest.raises(ValueError, match=re.escape(f"fractions must be three numbers >= 0 summing to 1 (train, validation, test), got {fractions}")):
        split_records([{"a": 1}], fractions)


def test_no_records_and_missing_label_are_errors():
    with pytest.raises(ValueError, match="no records to split"):
        split_records([])
    with pytest.raises(ValueError, match=re.escape("record 1 has no label field 'stars' to stratify by")):
        split_records([{"stars": 1}, {"text": "x"}], label_field="stars")


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 300), weights=st.tuples(*[st.integers(0, 10)] * 3).filter(any), seed=st.integers(0, 2**31),
       n_labels=st.integers(1, 6))
def test_any_split_partitions_the_records(n, weights, seed, n_labels):
    fractions = tuple(w / sum(weights) for w in weights)
    records = [{"id": i, "label": i % n_labels} for i in range(n)]
    splits = split_records(records, fractions, seed=seed, label_field="label")
    all_ids = ids(splits.train) + ids(splits.validation) + ids(splits.test)
    assert sorted(all_ids) == list(range(n))
    for size, fraction in zip(splits.sizes.values(), fractions):
        assert abs(size - n * fraction) <= n_labels  # at most one off per label group
