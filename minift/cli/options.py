"""Command-line options generated from the configuration dataclasses and the library functions' signatures.

Each dataclass field becomes a flag with the field's type, its default and, as help, the comment beside
it (tyro reads dataclasses the same way); a flag left out keeps the dataclass's default. `CHOICES` is the
one list of the values each choice field accepts.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import re
import tokenize
import types
import typing

from minift.data import TRUNCATIONS
from minift.model import TINY_SIZES
from minift.memory import DTYPES, PRECISIONS, RunSpec
from minift.peft import METHODS, PEFT_CONFIGS, PROMPT_INITS, LoraConfig, PromptTuningConfig, SelectiveConfig, check_method
from minift.training import LOSSES, NONFINITE, OPTIMIZERS, SELECTIONS, STRATEGIES, TrainConfig

# The one list of every choice, by field name: flags with these names accept only these values.
CHOICES = {
    "method": METHODS, "methods": METHODS, "loss": ("auto", *LOSSES), "optimizer": ("auto", *OPTIMIZERS),
    "truncation": TRUNCATIONS, "dtype": tuple(DTYPES), "init": PROMPT_INITS, "select_by": SELECTIONS,
    "strategy": tuple(STRATEGIES), "precision": PRECISIONS, "on_nonfinite": NONFINITE, "size": tuple(TINY_SIZES),
}
# Flag names that differ from the field's: shorter forms kept from earlier versions, and names that would
# otherwise be ambiguous on a command line that mixes several dataclasses.
FLAGS = {
    (TrainConfig, "out_dir"): ["--out"], (TrainConfig, "max_steps"): ["--steps", "--max-steps"],
    (TrainConfig, "early_stopping_patience"): ["--early-stopping"],
    (LoraConfig, "dropout"): ["--lora-dropout"], (LoraConfig, "adapter_name"): ["--adapter-name"],
    (PromptTuningConfig, "num_virtual_tokens"): ["--virtual-tokens", "--num-virtual-tokens"],
    (PromptTuningConfig, "init"): ["--prompt-init"], (SelectiveConfig, "train"): ["--train"],
    (RunSpec, "batch_size"): ["--batch", "--batch-size"], (RunSpec, "seq_len"): ["--seq", "--seq-len"],
}
PEFT_OPTION_SKIP = {PromptTuningConfig: ("init_token_ids",)}  # token ids come from a tokenizer, not a flag


# ----------------------------------------------------------------------------------------------
# Options from dataclasses and signatures


def field_comments(cls) -> dict[str, str]:
    """The comment beside each field of a dataclass, or else the comment lines just above it, by field name."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):  # no source (a frozen install): options without help
        return {}
    comments, name, above = {}, None, []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and tok.start[1] == 4 and name is None:
            above.append(tok.string.lstrip("# ").strip())  # a comment line of the class body
        elif tok.type == tokenize.NAME and tok.start[1] == 4 and name is None:
            name = tok.string  # the first name of a class-body line: a field, if a ':' follows
            if above:
                comments[name] = " ".join(above)
        elif tok.type == tokenize.COMMENT and name:
            comments[name] = tok.string.lstrip("# ").strip()  # beside the field: it wins
        elif tok.type == tokenize.NEWLINE:
            name, above = None, []
        elif tok.type == tokenize.NL and name is not None:
            name = None
    return comments


def _converter(kind):
    """(argparse type, nargs) for a field's type hint: X, X | None, tuple[X, ...], str | tuple[str, ...],
    int | str (a number or a word, e.g. a size or "all")."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    optional = type(None) in typing.get_args(kind)
    if set(args) == {int, str}:
        return (lambda text: None if optional and text.lower() == "none" else _int_or_word(text)), None
    if typing.get_origin(kind) in (typing.Union, types.UnionType) and len(args) == 1:
        inner, nargs = _converter(args[0])
        return (lambda text: None if text.lower() == "none" else inner(text)) if optional else inner, nargs
    if typing.get_origin(kind) in (typing.Union, types.UnionType):  # str | tuple[str, ...]: one value or several
        return str, "+"
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        return item, "+" if typing.get_args(kind)[-1] is Ellipsis else len(typing.get_args(kind))
    return kind, None


def _int_or_word(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return text


def add_options(group, cls, key: str, defaults=None, skip=(), shown: dict | None = None) -> None:
    """Add one flag per field of dataclass `cls` to `group`, under dest "key.field"; left out = not given.

    defaults: the instance whose values `--help` shows (default: the fields' defaults); shown: the
    default to show instead, by field, where the command derives it.
    """
    hints, comments = typing.get_type_hints(cls), field_comments(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        flags = FLAGS.get((cls, f.name), ["--" + f.name.replace("_", "-")])
        if defaults is not None:
            default = getattr(defaults, f.name)
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        text = comments.get(f.name, "")
        default = ", ".join(map(str, default)) if isinstance(default, tuple) else default
        default = (shown or {}).get(f.name, default)
        kwargs = dict(dest=f"{key}.{f.name}", default=argparse.SUPPRESS, help=_escape(f"{text} (default: {default})"))
        if hints[f.name] is bool:
            group.add_argument(*flags, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        convert, nargs = _converter(hints[f.name])
        choices = CHOICES.get(f.name)
        group.add_argument(*flags, type=convert, nargs=nargs, choices=choices, metavar=None if choices else f.name.upper(),
                           **kwargs)


def add_signature_options(group, fn, key: str, skip=(), defaults: dict | None = None) -> None:
    """Add one flag per keyword parameter of `fn` that has a default; help from its docstring's Args.

    defaults: the command's own default for some parameters, shown in --help (the command applies them).
    """
    doc = inspect.getdoc(fn) or ""
    helps = dict(re.findall(r"^\s{4}(\w+): (.+?)(?=\n\s{4}\w+:|\n\n|\Z)", doc, re.S | re.M))
    for name, param in inspect.signature(fn).parameters.items():
        if name in skip or param.default is inspect.Parameter.empty:
            continue
        kwargs = dict(dest=f"{key}.{name}", default=argparse.SUPPRESS,
                      help=_escape(f"{' '.join(helps.get(name, '').split())} "
                                   f"(default: {(defaults or {}).get(name, param.default)})"))
        flag = "--" + name.replace("_", "-")
        if isinstance(param.default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            convert, _ = _converter(typing.get_type_hints(fn)[name])
            choices = CHOICES.get(name)
            group.add_argument(flag, type=convert, choices=choices, metavar=None if choices else name.upper(), **kwargs)


def _escape(text: str) -> str:
    return text.replace("%", "%%")  # argparse formats help with %


def given(args: argparse.Namespace, key: str) -> dict:
    """The options of group `key` that were given on the command line, as field -> value."""
    prefix = key + "."
    found = {name[len(prefix):]: value for name, value in vars(args).items() if name.startswith(prefix)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in found.items()}


def _option_key(method: str) -> str:
    """The key a method's flags are stored under: the first method of its dataclass (qlora's is lora's)."""
    return next(m for m, cls in PEFT_CONFIGS.items() if cls is PEFT_CONFIGS[method])


def add_peft_options(p) -> None:
    """One option group per PEFT dataclass, each flag under its first method's key (LoRA's serve QLoRA too)."""
    for key in dict.fromkeys(map(_option_key, PEFT_CONFIGS)):
        cls = PEFT_CONFIGS[key]
        methods = " or ".join(f"--method {m}" for m in PEFT_CONFIGS if _option_key(m) == key)
        add_options(p.add_argument_group(f"{key} (with {methods})"), cls, key, skip=PEFT_OPTION_SKIP.get(cls, ()))


def peft_configs(args) -> dict:
    """Each PEFT method's configuration: its dataclass with the options given for it."""
    return {method: check_method(method, cls(**given(args, _option_key(method)))) for method, cls in PEFT_CONFIGS.items()}


def peft_config(args, method: str):
    """The configuration of the chosen method; options given for another method are an error."""
    own = _option_key(method) if method in PEFT_CONFIGS else None
    stray = [m for m in PEFT_CONFIGS if _option_key(m) == m and m != own and given(args, m)]
    if stray:
        raise ValueError(f"options {sorted(given(args, stray[0]))} are for --method {stray[0]}, not {method}")
    return peft_configs(args)[method] if method in PEFT_CONFIGS else None


