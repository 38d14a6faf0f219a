r"""Prompt templates: turning a record (a dict of fields) into a prompt and a completion.

A `PromptTemplate` is two texts with `{{field}}` placeholders, the prompt (instruction and input)
and the completion (the answer), e.g.

    PromptTemplate("reviews/predict",
                   prompt="Predict the star rating of this review:\n{{review_body}}",
                   completion="{{stars}}")

A `TemplateLibrary` holds several wordings of one task and picks one per record, deterministically
from a seed. Many wordings teach the task rather than one sentence (FLAN, Wei et al. 2022, used
ten templates per data set for this reason).

An `InstructionFormat` is the text around every prompt and completion. minift uses one,
`ALPACA_FORMAT` (Taori et al. 2023), everywhere a model is prompted: training, evaluation and
in-context examples:

    ### Instruction:
    <prompt>

    ### Response:
    <completion><|endoftext|>

Rendered prompts and completions are stripped of surrounding whitespace (`normalize`, the one answer
normalisation of minift, which exact match also applies), so the completion text of a record is its
canonical answer, the one exact match compares with.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# A placeholder is `{{name}}` (spaces inside the braces allowed); anything else between double
# braces, or a lone `{{` or `}}`, is an error at construction. Single braces are plain text.
_BRACES = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def normalize(text: str) -> str:
    """The one answer normalisation of minift: strip surrounding whitespace.

    Case and inner spacing count, because every built-in task has one canonical answer text (the
    rendered completion) and a model must learn to produce exactly it.
    """
    return text.strip()


class TemplateError(ValueError):
    """A template that cannot be made, or a record it cannot render."""


@dataclass(frozen=True)
class Example:
    """One rendered record: the prompt (without the instruction format) and its canonical completion."""

    prompt: str
    completion: str
    template: str  # the name of the template that rendered it
    record: int | str  # the record's "id" field if it has one, else its file and line, else its index in the list


@dataclass(frozen=True)
class PromptTemplate:
    """A named prompt text and completion text with `{{field}}` placeholders.

    Raises:
        TemplateError: at construction, for an empty text, an empty placeholder `{{}}`, a
            placeholder that is not a name, or an unbalanced `{{` / `}}`.
    """

    name: str
    prompt: str
    completion: str
    fields: tuple[str, ...] = field(init=False)  # every field used, in order of first appearance

    def __post_init__(self):
        names: list[str] = []
        for part, text in (("prompt", self.prompt), ("completion", self.completion)):
            if not text.strip():
                raise TemplateError(f"template {self.name!r}: the {part} text is empty")
            names += _placeholders(self.name, part, text)
        object.__setattr__(self, "fields", tuple(dict.fromkeys(names)))

    def render(self, record: Mapping, index: int | None = None) -> tuple[str, str]:
        """Fill the placeholders from `record`; return (prompt, completion), both stripped.

        Args:
            record: a dict of fields; values are written with `str()` (so `{"stars": 4}` gives "4").
            index: the record's position in its list, named in errors.

        Raises:
            TemplateError: a field is missing or None (naming the template, the field and the
                record), or the completion renders empty.
        """
        for name in self.fields:
            if record.get(name) is None:
                raise TemplateError(
                    f"template {self.name!r} needs field {name!r}, which is missing or null in "
                    f"{describe_record(record, index)} (its fields: {', '.join(map(str, record)) or 'none'})"
                )
        prompt = normalize(_fill(self.prompt, record))
        completion = normalize(_fill(self.completion, record))
        if not completion:
            raise TemplateError(f"template {self.name!r} renders an empty completion for {describe_record(record, index)}")
        return prompt, completion


def describe_record(record: Mapping, index: int | None) -> str:
    """'record 3', "record 3 (id 'qa-17')" or "record 'qa-17'": how errors name a record.

    A record read from a file (`minift.data.loaders.FileRecord`) is named by its file and line
    instead of its index, which after splitting is a position in a shuffled split.
    """
    origin = getattr(record, "origin", None)
    where = origin or ("record" if index is None else f"record {index}")
    if origin is not None:
        return f"{where} (id {record['id']!r})" if "id" in record else where
    if "id" in record:
        return f"{where} (id {record['id']!r})" if index is not None else f"record {record['id']!r}"
    return where


def _placeholders(template: str, part: str, text: str) -> list[str]:
    names = []
    for match in _BRACES.finditer(text):
        name = match.group(1).strip()
        if not name:
            raise TemplateError(f"template {template!r}: empty placeholder {match.group(0)!r} in the {part} text")
        if not _FIELD_NAME.fullmatch(name):
            raise TemplateError(f"template {template!r}: placeholder {match.group(0)!r} in the {part} text is not a field name")
        names.append(name)
    rest = _BRACES.sub("", text)
    for brace in ("{{", "}}"):
        if brace in rest:
            raise TemplateError(f"template {template!r}: unbalanced {brace!r} in the {part} text {text!r}")
    return names


def _fill(text: str, record: Mapping) -> str:
    return _BRACES.sub(lambda m: str(record[m.group(1).strip()]), text)


@dataclass(frozen=True)
class TemplateLibrary:
    """Several templates (wordings) for one task; each record is rendered by one of them.

    The template of a record depends only on (seed, the record's index), not on the other records,
    so the same list and seed always give the same examples.
    """

    name: str
    templates: tuple[PromptTemplate, ...]

    def __post_init__(self):
        if not self.templates:
            raise TemplateError(f"template library {self.name!r} has no templates")
        names = [t.name for t in self.templates]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise TemplateError(f"template library {self.name!r}: duplicate template names {duplicates}")

    def choose(self, index: int, seed: int) -> PromptTemplate:
        # Random seeded with a string hashes it with SHA-512: stable across runs and Python versions.
        return self.templates[random.Random(f"{seed}:{index}").randrange(len(self.templates))]

    def render(self, records: Sequence[Mapping], seed: int) -> list[Example]:
        """Render every record with its chosen template (see `choose`)."""
        examples = []
        for i, record in enumerate(records):
            template = self.choose(i, seed)
            prompt, completion = template.render(record, index=i)
            examples.append(Example(prompt, completion, template.name, record.get("id", getattr(record, "origin", i))))
        return examples

    def with_templates(self, *templates: PromptTemplate) -> TemplateLibrary:
        """A new library with `templates` added (e.g. your own wordings for a built-in task)."""
        return TemplateLibrary(self.name, self.templates + tuple(templates))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> TemplateLibrary:
        """Load `{"name": ..., "templates": [{"name": ..., "prompt": ..., "completion": ...}, ...]}`."""
        path = Path(path)
        try:
            spec = json.loads(path.read_text("utf-8"))
        except json.JSONDecodeError as e:
            raise TemplateError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(spec, dict) or not isinstance(spec.get("templates"), list):
            raise TemplateError(f'{path}: expected an object {{"name": ..., "templates": [...]}}')
        templates = []
        for i, t in enumerate(spec["templates"]):
            missing = [k for k in ("name", "prompt", "completion") if not isinstance(t, dict) or k not in t]
            if missing:
                raise TemplateError(f"{path}: template {i} lacks {', '.join(map(repr, missing))}")
            templates.append(PromptTemplate(t["name"], t["prompt"], t["completion"]))
        return cls(spec.get("name", path.stem), tuple(templates))


@dataclass(frozen=True)
class InstructionFormat:
    """The text around a prompt: `prompt_prefix + prompt + response_prefix`, then the completion.

    Two rules keep token boundaries where the text's parts meet (the byte-level pre-tokenizer
    starts a new pre-token after a newline, and merges never cross pre-tokens):
    - `response_prefix` ends with a newline, so the completion's ids are the same alone as after
      the prompt: the label boundary is exact, and a model prompted with the formatted prompt at
      inference sees exactly the ids it was trained on;
    - `prompt_prefix` does not start with whitespace, so a prompt's ids are the same alone as
      after the blank line that ends a few-shot example.
    """

    name: str
    prompt_prefix: str
    response_prefix: str

    def __post_init__(self):
        if not self.response_prefix.endswith("\n"):
            raise ValueError(f"instruction format {self.name!r}: response_prefix must end with a newline, got {self.response_prefix!r}")
        if self.prompt_prefix[:1].isspace():
            raise ValueError(f"instruction format {self.name!r}: prompt_prefix must not start with whitespace, got {self.prompt_prefix!r}")

    def format_prompt(self, prompt: str) -> str:
        return self.prompt_prefix + prompt + self.response_prefix


# The one instruction format of minift (Stanford Alpaca's layout, without its preamble sentence,
# which would cost ~30 tokens of a 256-token context in every example).
ALPACA_FORMAT = InstructionFormat("alpaca", prompt_prefix="### Instruction:\n", response_prefix="\n\n### Response:\n")

# The template for Alpaca-style records (`instruction`, `input`, `output`). An empty input leaves
# only the instruction, because rendered prompts are stripped.
ALPACA_TEMPLATE = PromptTemplate("alpaca", prompt="{{instruction}}\n\n{{input}}", completion="{{output}}")
