"""Shared test setup: kernels run in Triton's interpreter on CPU, and every test starts seeded."""

import os

# Triton reads TRITON_INTERPRET when it is first imported, so this must come before any import of
# triton (through `kernels`). setdefault: a GPU run can set TRITON_INTERPRET=0 to test compiled kernels.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

# Property tests draw the same examples on every run by default, so CI passes or fails on the code and
# not on the draw; `pytest --hypothesis-profile=explore` draws new random examples on every run.
settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("explore", derandomize=False, deadline=None)
settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --- tiny, in-process building blocks shared by the tests of the training loop, PEFT and evaluation ---


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE of 512 tokens trained on a small sample of the built-in corpus (about 1 s)."""
    from minift.data import CorpusConfig, generate_corpus
    from minift.tokenizer import Tokenizer

    return Tokenizer.train(generate_corpus(CorpusConfig(n_documents=300, seed=1)), vocab_size=512)


def _task_examples(tokenizer, name):
    from minift.data import get_task, split_records, tokenize_examples

    task = get_task(name)
    splits = split_records(task.generate(100, seed=0), (0.64, 0.16, 0.2), seed=0, label_field=task.label_field)
    render = lambda records: tokenize_examples(tokenizer, task.templates.render(records, seed=0), max_length=128)
    return render(splits.train), render(splits.validation)


@pytest.fixture(scope="session")
def review_examples(tiny_tokenizer):
    """Tokenized `reviews` examples (completions: a digit + eot): (train, validation), 64 and 16."""
    return _task_examples(tiny_tokenizer, "reviews")


@pytest.fixture(scope="session")
def qa_examples(tiny_tokenizer):
    """Tokenized `qa` examples (completions of different lengths): (train, validation), 64 and 16."""
    return _task_examples(tiny_tokenizer, "qa")


@pytest.fixture
def model(request):
    """A random GPT of the requesting test module's `CONFIG`, in eval mode (test_lora, test_peft)."""
    from minift.model import GPT

    return GPT(request.module.CONFIG).eval()


@pytest.fixture
def ids(request):
    """Three rows of 12 random token ids in the requesting test module's `CONFIG.vocab_size`."""
    return torch.randint(0, request.module.CONFIG.vocab_size, (3, 12))


@pytest.fixture
def tiny_gpt(tiny_tokenizer):
    """A freshly initialised 2-layer GPT over the tiny tokenizer's vocabulary."""
    from minift.model import GPT, GPTConfig

    return GPT(GPTConfig(vocab_size=tiny_tokenizer.vocab_size, block_size=128, n_layer=2, n_head=2, n_embd=32))


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_tokenizer, tmp_path_factory):
    """A checkpoint directory (config.json, model.safetensors, tokenizer.json) of a random tiny GPT."""
    from minift.model import save_model
    from minift.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tiny_tokenizer.vocab_size, block_size=256, n_layer=2, n_head=2, n_embd=32))
    path = tmp_path_factory.mktemp("tiny-checkpoint")
    save_model(model, tiny_tokenizer, path)
    return path
