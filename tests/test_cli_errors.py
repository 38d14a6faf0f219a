"""Every failure the command can meet is one line on stderr naming what is wrong, and exit code 2.

One table: each row a command (with {placeholders} for files the fixture makes), the expected exit code
and the words the message must contain.
"""

import errno
import json
import shutil

import pytest

from minift.cli import main
from minift.model import load_model
from minift.peft import LoraConfig, apply_peft, save_trainable

SMALL = ["--n-train", "8", "--n-val", "4", "--n-test", "4", "--batch-size", "8", "--no-progress"]

ROWS = [
    # bad numbers: refused before anything is created (the row checks that {out} does not exist)
    (["finetune", "--base", "{ckpt}", "--lr", "-1", "--out", "{out}"], 2, ["lr and min_lr must be >= 0, got lr -1.0"]),
    (["finetune", "--base", "{ckpt}", "--method", "lora", "--rank", "1000", "--out", "{out}", *SMALL], 2,
     ["LoRA rank 1000 is above min(in, out) = 32 of transformer.h.0.attn.c_attn (32 -> 96)"]),
    (["finetune", "--base", "{ckpt}", "--n-train", "most", "--out", "{out}"], 2,
     ["the number of train examples must be a number or 'all', got 'most'"]),
    # own data: the file and line
    (["finetune", "--base", "{ckpt}", "--task", "{data}/notes.txt", "--out", "{out}"], 2,
     ["notes.txt: unknown file type '.txt'; expected .jsonl, .json, .csv"]),
    (["finetune", "--base", "{ckpt}", "--task", "{data}/gap.jsonl", "--templates", "{data}/t.json", "--out", "{out}", *SMALL], 2,
     ["needs field 'a', which is missing or null in", "gap.jsonl line 7"]),
    (["finetune", "--base", "{ckpt}", "--task", "{data}/gap.jsonl", "--n-train", "20", "--out", "{out}"], 2,
     ["gap.jsonl line 1: missing field 'instruction'"]),
    # truncated or corrupt files: named, no SafetensorError traceback
    (["generate", "{cut}", "--prompt", "x"], 2, ["cut/model.safetensors: not a readable safetensors file, truncated or corrupt"]),
    (["evaluate", "{ckpt}", "--adapter", "{data}/adapter", "--tasks", "reviews", "--n", "2"], 2,
     ["adapter/adapter_model.safetensors: not a readable safetensors file"]),
    (["finetune", "--base", "{ckpt}", "--resume", "--out", "{data}/killed", *SMALL], 2,
     ["killed/snapshots/latest.json: not valid JSON"]),
    # an output directory that cannot be written: said before the model is loaded (the base does not exist)
    (["finetune", "--base", "/nonexistent", "--out", "{data}/notes.txt/run"], 2,
     ["cannot write into the output directory", "notes.txt/run"]),
    # --overwrite replaces a whole run directory, so it refuses one that holds other files
    (["finetune", "--base", "{ckpt}", "--overwrite", "--out", "{data}", *SMALL], 2,
     ["holds gap.jsonl, killed, notes.txt, t.json besides an earlier run's outputs"]),
    # divergence: caught before the optimizer steps, a message and exit 2, not a traceback
    (["finetune", "--base", "{ckpt}", "--lr", "1e6", "--warmup-steps", "0", "--steps", "5", "--out", "{out}", *SMALL], 2,
     ["and the gradient norm", "stopped before the optimizer stepped", "--on-nonfinite skip"]),
]


@pytest.fixture
def files(tmp_path, tiny_checkpoint):
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("not a data file")
    rows = [{"q": f"q{i}", "a": str(i)} for i in range(40)]
    del rows[6]["a"]  # line 7
    (data / "gap.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "t.json").write_text(json.dumps({"templates": [{"name": "t", "prompt": "{{q}}", "completion": "{{a}}"}]}))
    cut = tmp_path / "cut"
    shutil.copytree(tiny_checkpoint, cut)
    weights = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(weights[: len(weights) // 2])  # a download cut off half way
    model, _ = load_model(tiny_checkpoint)
    save_trainable(apply_peft(model, LoraConfig(rank=2)), data / "adapter")
    (data / "adapter" / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    (data / "killed" / "snapshots").mkdir(parents=True)
    (data / "killed" / "snapshots" / "latest.json").write_text('{"step": 2, "direc')  # killed mid-write
    (data / "result.json").write_text("{}")  # an earlier run's output, beside the other files
    return {"ckpt": str(tiny_checkpoint), "data": str(data), "cut": str(cut), "out": str(tmp_path / "out")}


@pytest.mark.parametrize("argv, code, words", ROWS, ids=[" ".join(r[0][:1] + r[0][3:5]) for r in ROWS])
def test_every_failure_exits_2_with_a_message_naming_what_is_wrong(argv, code, words, files, capsys):
    assert main([a.format(**files) for a in argv]) == code
    captured = capsys.readouterr()
    for w in words:
        assert w in captured.err
    assert "Traceback" not in captured.err and len(captured.err.strip().splitlines()) <= 2
    if "--lr" in argv and "-1" in argv:
        assert not (files["out"] and __import__("pathlib").Path(files["out"]).exists())  # nothing created


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    from minift._files import atomic_write, write_json

    target = tmp_path / "result.json"
    write_json(target, {"run": 1})

    def full(tmp):
        tmp.write_text("{half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=f"cannot write {target}: No space left on device"):
        atomic_write(target, full)
    assert json.loads(target.read_text()) == {"run": 1} and [p.name for p in tmp_path.iterdir()] == ["result.json"]
