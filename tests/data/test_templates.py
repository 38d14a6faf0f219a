import json
import re
from collections import Counter

import pytest

from minift.data import (
    ALPACA_FORMAT,
    ALPACA_TEMPLATE,
    Example,
    InstructionFormat,
    PromptTemplate,
    TemplateError,
    TemplateLibrary,
)


def test_fields_are_found_at_construction_in_order_without_repeats():
    t = PromptTemplate("t", "Rate {{ review_body }} by {{reviewer}} ({{review_body}})", "{{stars}}")
    assert t.fields == ("review_body", "reviewer", "stars")


def test_render_fills_fields_and_strips():
    t = PromptTemplate("reviews/predict", "Predict the star rating of this review:\n{{review_body}}\n", " {{stars}}")
    prompt, completion = t.render({"review_body": "It is good.", "stars": 4})
    assert prompt == "Predict the star rating of this review:\nIt is good."
    assert completion == "4"


def test_single_braces_are_plain_text():
    t = PromptTemplate("json", '{"x": {{x}}}', "{{y}}")
    assert t.fields == ("x", "y")
    assert t.render({"x": 5, "y": "ok"}) == ('{"x": 5}', "ok")


def test_missing_field_names_template_field_and_record():
    t = PromptTemplate("reviews/predict", "{{review_body}}", "{{stars}}")
    message = "template 'reviews/predict' needs field 'stars', which is missing or null in record 3 (id 'r-3') (its fields: id, review_body)"
    with pytest.raises(TemplateError, match=re.escape(message)):
        t.render({"id": "r-3", "review_body": "Nice."}, index=3)


def test_missing_field_without_id_names_the_index():
    t = PromptTemplate("t", "{{a}}", "{{b}}")
    with pytest.raises(TemplateError, match=re.escape("needs field 'b', which is missing or null in record 7 (its fields: a, b)")):
        t.render({"a": "x", "b": None}, index=7)


def test_empty_completion_is_an_error():
    t = PromptTemplate("t", "{{a}}", "{{b}}")
    with pytest.raises(TemplateError, match=re.escape("template 't' renders an empty completion for record 0")):
        t.render({"a": "x", "b": "  "}, index=0)


@pytest.mark.parametrize(
    "prompt, message",
    [
        ("Rate {{}}", "template 'bad': empty placeholder '{{}}' in the prompt text"),
        ("Rate {{  }}", "template 'bad': empty placeholder '{{  }}' in the prompt text"),
        ("Rate {{review", "template 'bad': unbalanced '{{' in the prompt text 'Rate {{review'"),
        ("Rate review}}", "template 'bad': unbalanced '}}' in the prompt text 'Rate review}}'"),
        ("Rate {{review body}}", "template 'bad': placeholder '{{review body}}' in the prompt text is not a field name"),
        ("Rate {{a{{b}}", "template 'bad': placeholder '{{a{{b}}' in the prompt text is not a field name"),
        ("   ", "template 'bad': the prompt text is empty"),
    ],
)
def test_bad_templates_are_rejected_when_made(prompt, message):
    with pytest.raises(TemplateError, match=re.escape(message)):
        PromptTemplate("bad", prompt, "{{stars}}")


def test_bad_completion_is_rejected_when_made():
    with pytest.raises(TemplateError, match=re.escape("template 'bad': unbalanced '}}' in the completion text 'stars}}'")):
        PromptTemplate("bad", "{{review}}", "stars}}")


def _library(n_templates: int = 3) -> TemplateLibrary:
    return TemplateLibrary("lib", tuple(PromptTemplate(f"t{i}", f"Wording {i}: {{{{x}}}}", "{{y}}") for i in range(n_templates)))


def test_library_choice_is_deterministic_per_record_and_seed():
    lib = _library()
    records = [{"x": i, "y": i} for i in range(300)]
    first = lib.render(records, seed=0)
    assert lib.render(records, seed=0) == first
    assert [e.template for e in lib.render(records, seed=1)] != [e.template for e in first]
    # The choice of record i does not depend on the other records.
    assert lib.render(records[:10], seed=0) == first[:10]
    counts = Counter(e.template for e in first)
    assert set(counts) == {"t0", "t1", "t2"} and min(counts.values()) > 70  # about 100 each


def test_library_render_gives_examples_with_record_ids():
    lib = _library(1)
    examples = lib.render([{"id": "a", "x": 1, "y": 2}, {"x": 3, "y": 4}], seed=0)
    assert examples == [Example("Wording 0: 1", "2", "t0", "a"), Example("Wording 0: 3", "4", "t0", 1)]


def test_library_render_error_names_the_record_index():
    with pytest.raises(TemplateError, match=re.escape("needs field 'y', which is missing or null in record 1 (id 'b')")):
        _library(1).render([{"x": 1, "y": 2}, {"id": "b", "x": 3}], seed=0)


def test_library_rejects_no_templates_and_duplicate_names():
    with pytest.raises(TemplateError, match="template library 'lib' has no templates"):
        TemplateLibrary("lib", ())
    t = PromptTemplate("same", "{{x}}", "{{y}}")
    with pytest.raises(TemplateError, match=re.escape("template library 'lib': duplicate template names ['same']")):
        TemplateLibrary("lib", (t, t))


def test_with_templates_adds_user_wordings():
    mine = PromptTemplate("mine", "My wording: {{x}}", "{{y}}")
    lib = _library(2).with_templates(mine)
    assert [t.name for t in lib.templates] == ["t0", "t1", "mine"]
    assert len(_library(2).templates) == 2  # the original library is unchanged


def test_library_from_json(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"name": "mine", "templates": [
        {"name": "a", "prompt": "Rate:\n{{text}}", "completion": "{{rating}}"},
        {"name": "b", "prompt": "{{text}}\nStars?", "completion": "{{rating}}"},
    ]}))
    lib = TemplateLibrary.from_json(path)
    assert lib.name == "mine" and [t.name for t in lib.templates] == ["a", "b"]
    assert lib.templates[1].render({"text": "Good.", "rating": "4"}) == ("Good.\nStars?", "4")


def test_library_from_json_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TemplateError, match=re.escape(f"{bad}: not valid JSON")):
        TemplateLibrary.from_json(bad)
    bad.write_text(json.dumps({"templates": [{"name": "a", "prompt": "{{x}}"}]}))
    with pytest.raises(TemplateError, match=re.escape(f"{bad}: template 0 lacks 'completion'")):
        TemplateLibrary.from_json(bad)
    bad.write_text(json.dumps([{"name": "a"}]))
    with pytest.raises(TemplateError, match=re.escape(f"{bad}: expected an object")):
        TemplateLibrary.from_json(bad)


def test_alpaca_format_layout():
    assert ALPACA_FORMAT.name == "alpaca"
    assert ALPACA_FORMAT.format_prompt("Say hi.") == "### Instruction:\nSay hi.\n\n### Response:\n"


def test_instruction_format_token_boundary_rules():
    with pytest.raises(ValueError, match=re.escape("instruction format 'bad': response_prefix must end with a newline, got 'Answer: '")):
        InstructionFormat("bad", "Question: ", "Answer: ")
    with pytest.raises(ValueError, match=re.escape("instruction format 'bad': prompt_prefix must not start with whitespace, got '\\nQ: '")):
        InstructionFormat("bad", "\nQ: ", "\nA:\n")


def test_alpaca_template_with_and_without_input():
    record = {"instruction": "Translate to French.", "input": "cat", "output": "chat"}
    assert ALPACA_TEMPLATE.render(record) == ("Translate to French.\n\ncat", "chat")
    assert ALPACA_TEMPLATE.render({**record, "input": ""}) == ("Translate to French.", "chat")
