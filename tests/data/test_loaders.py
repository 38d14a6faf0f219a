import json
import re

import pytest

from minift.data import (
    ALPACA_TEMPLATE,
    DataFileError,
    PromptTemplate,
    TemplateLibrary,
    load_alpaca,
    load_csv,
    load_jsonl,
    load_records,
)


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_records_in_order_blank_lines_skipped(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"a": 1}\n\n{"a": 2, "b": "x"}\n')
    assert load_jsonl(path) == [{"a": 1}, {"a": 2, "b": "x"}]


def test_jsonl_bad_line_names_file_and_line(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"a": 1}\n{"a": 2,}\n')
    with pytest.raises(DataFileError, match=re.escape(f"{path} line 2: not valid JSON (Expecting property name")):
        load_jsonl(path)


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = write(tmp_path / "d.jsonl", '[1, 2]\n')
    with pytest.raises(DataFileError, match=re.escape(f"{path} line 1: expected a JSON object, got list")):
        load_jsonl(path)


def test_jsonl_missing_field_names_file_line_and_field(tmp_path):
    path = write(tmp_path / "alpaca.jsonl", json.dumps({"instruction": "a", "input": "", "output": "b"}) + "\n"
                 + json.dumps({"instruction": "c", "input": ""}) + "\n")
    with pytest.raises(DataFileError, match=re.escape(f"{path} line 2: missing field 'output' (has: instruction, input)")):
        load_alpaca(path)


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_jsonl_empty_file(tmp_path, text):
    path = write(tmp_path / "d.jsonl", text)
    with pytest.raises(DataFileError, match=re.escape(f"{path}: empty file, no records")):
        load_jsonl(path)


def test_alpaca_file_renders_with_the_builtin_template(tmp_path):
    rows = [{"instruction": "Translate to French.", "input": "cat", "output": "chat"},
            {"instruction": "Say hello.", "input": "", "output": "Hello!"}]
    path = write(tmp_path / "alpaca.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    examples = TemplateLibrary("alpaca", (ALPACA_TEMPLATE,)).render(load_alpaca(path), seed=0)
    assert [(e.prompt, e.completion) for e in examples] == [("Translate to French.\n\ncat", "chat"), ("Say hello.", "Hello!")]


def test_csv_of_reviews_with_a_user_template(tmp_path):
    path = write(tmp_path / "reviews.csv", 'text,rating\n"Great, I love it.",5\n"Bad.\nIt broke.",1\n')
    records = load_csv(path, required_fields=("text", "rating"))
    assert records == [{"text": "Great, I love it.", "rating": "5"}, {"text": "Bad.\nIt broke.", "rating": "1"}]
    mine = TemplateLibrary("mine", (PromptTemplate("mine", "Rate this review:\n{{text}}", "{{rating}}"),))
    assert mine.render(records, seed=0)[0].prompt == "Rate this review:\nGreat, I love it."


def test_csv_row_with_wrong_field_count_names_the_line(tmp_path):
    # The quoted field spans lines 2-3, so the short row is on line 4.
    path = write(tmp_path / "r.csv", 'text,rating\n"two\nlines",5\nno rating\n')
    with pytest.raises(DataFileError, match=re.escape(f"{path} line 4: 1 fields, but the header has 2 (text, rating)")):
        load_csv(path)


def test_csv_missing_required_column(tmp_path):
    path = write(tmp_path / "r.csv", "text,score\nGood.,4\n")
    with pytest.raises(DataFileError, match=re.escape(f"{path} line 1: missing field 'rating' (has: text, score)")):
        load_csv(path, required_fields=("text", "rating"))


def test_csv_empty_file_and_header_only(tmp_path):
    empty = write(tmp_path / "e.csv", "")
    with pytest.raises(DataFileError, match=re.escape(f"{empty}: empty file, no header and no records")):
        load_csv(empty)
    header = write(tmp_path / "h.csv", "text,rating\n")
    with pytest.raises(DataFileError, match=re.escape(f"{header}: no records after the header")):
        load_csv(header)


def test_load_records_dispatches_on_suffix(tmp_path):
    assert load_records(write(tmp_path / "d.jsonl", '{"a": 1}\n')) == [{"a": 1}]
    assert load_records(write(tmp_path / "d.CSV", "a\n1\n")) == [{"a": "1"}]
    txt = write(tmp_path / "d.txt", "a")
    with pytest.raises(DataFileError, match=re.escape(f"{txt}: unknown file type '.txt'; expected .jsonl, .json, .csv")):
        load_records(txt)


def test_json_array_alpaca_layout_loads_with_the_line_of_each_record(tmp_path):
    rows = [{"instruction": "Say hi.", "input": "", "output": "Hi!"}, {"instruction": "Add.", "input": "1 2", "output": "3"}]
    path = write(tmp_path / "alpaca_data.json", json.dumps(rows, indent=4))  # Alpaca's own layout: an indented array
    records = load_records(path, required_fields=("instruction", "input", "output"))
    assert records == rows
    # json.dumps(indent=4) puts "[" on line 1 and each object's "{" on lines 2 and 7
    assert [r.origin for r in records] == [f"{path} line 2", f"{path} line 7"]


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"a": 1}', "line 1: expected a JSON array of objects"),
        ('[\n{"a": 1},\n7\n]', "line 3: expected a JSON object, got int"),
        ('[\n{"a": 1},\n{"a": 2,}\n]', "line 3: not valid JSON (Expecting property name"),
        ('[\n{"a": 1}\n{"a": 2}\n]', "line 3: not valid JSON (expected ',' or ']'"),
        ('[{"a": 1}]\n[]', "line 2: not valid JSON (text after the array)"),
        ("[ ]", "empty array, no records"),
        ('[\n{"a": 1},\n{"b": 2}\n]', "line 3: missing field 'a' (has: b)"),
    ],
)
def test_bad_json_arrays_name_file_and_line(tmp_path, text, message):
    path = write(tmp_path / "d.json", text)
    with pytest.raises(DataFileError, match=re.escape(f"{path}") + ".*" + re.escape(message)):
        load_records(path, required_fields=("a",))


@pytest.mark.parametrize("name", ["D.JSONL", "d.Jsonl", "d.CSV", "D.JSON"])
def test_suffixes_in_any_case_load(tmp_path, name):
    text = {"jsonl": '{"a": "1"}\n', "csv": "a\n1\n", "json": '[{"a": "1"}]'}[name.rsplit(".", 1)[1].lower()]
    assert load_records(write(tmp_path / name, text)) == [{"a": "1"}]


def test_every_record_knows_its_file_and_line(tmp_path):
    jsonl = write(tmp_path / "d.jsonl", '{"a": 1}\n\n{"a": 2}\n')
    csv_path = write(tmp_path / "r.csv", 'text,rating\n"two\nlines",5\nok,4\n')  # the second row starts on line 4
    assert [r.origin for r in load_records(jsonl)] == [f"{jsonl} line 1", f"{jsonl} line 3"]
    assert [r.origin for r in load_records(csv_path)] == [f"{csv_path} line 2", f"{csv_path} line 4"]


def test_a_template_error_after_splitting_names_the_file_and_line(tmp_path):
    from minift.data import split_records

    rows = [{"q": f"question {i}", "a": str(i)} for i in range(300)]
    del rows[200]["a"]  # file line 201
    path = write(tmp_path / "mine.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    splits = split_records(load_records(path), (0.8, 0.1, 0.1), seed=0)
    library = TemplateLibrary("mine", (PromptTemplate("mine", "{{q}}", "{{a}}"),))
    split = next(s for s in (splits.train, splits.validation, splits.test) if any("a" not in r for r in s))
    with pytest.raises(Exception, match=re.escape(f"needs field 'a', which is missing or null in {path} line 201 (its fields: q)")):
        library.render(split, seed=0)
