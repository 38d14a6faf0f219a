"""What each fine-tuning method is configured by: one dataclass per PEFT family, and the list of methods.

Everything that needs a method's name or its settings (the recipes, the memory ledger, the CLI) reads
them from here: `METHODS` is the one list, `PEFT_CONFIGS` maps a method to its configuration class,
and the defaults below are the only defaults.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

METHODS = ("full", "lora", "qlora", "prompt-tuning", "selective")
ALL_LINEAR = "all-linear"  # LoRA on every linear layer except the output head (PEFT's name)
PROMPT_INITS = ("vocab", "text", "random")  # how a soft prompt starts (PromptTuningConfig.init)
QUANTIZATIONS = ("nf4",)  # how QLoRA stores the frozen base (LoraConfig.quantize; minift.kernels.nf4)


@dataclass(frozen=True)
class LoraConfig:
    """One LoRA adapter: its rank, scaling, the layers it adapts and its name (the same in every layer).

    `quantize` is QLoRA's one knob (Dettmers et al. 2023): None keeps the frozen base as it is (LoRA),
    "nf4" stores the base's block linear layers in 4-bit NormalFloat with double-quantised scales
    (blocks of 64 and 256, the paper's). The method "qlora" is a LoraConfig with quantize="nf4".
    """

    rank: int = 8  # Hu et al. 2021, table 6: r as low as 1-8 on W_q, W_v already matches r = 64
    alpha: float = 16.0  # scaling alpha / rank = 2; keeping alpha fixed lets r change without retuning the lr
    targets: str | tuple[str, ...] = ("c_attn",)  # module names or suffixes, a regular expression, or all-linear
    dropout: float = 0.0  # dropout on the adapter branch's input
    rslora: bool = False  # scale by alpha / sqrt(rank) (Kalajdzievski 2023)
    adapter_name: str = "default"  # the name to switch to, save and delete the adapter by
    quantize: str | None = None  # the frozen base's storage: None (LoRA) or nf4 (QLoRA); --method qlora sets nf4

    def __post_init__(self):
        if not (isinstance(self.rank, int) and self.rank > 0):
            raise ValueError(f"LoRA rank must be a positive integer, got {self.rank!r}")
        if not self.alpha > 0:
            raise ValueError(f"LoRA alpha must be positive, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        if self.quantize not in (None, *QUANTIZATIONS):
            raise ValueError(f"LoRA quantize must be None or one of {QUANTIZATIONS}, got {self.quantize!r}")
        if not isinstance(self.targets, str):  # a list (JSON, the command line) becomes a hashable tuple
            targets = tuple(self.targets)
            object.__setattr__(self, "targets", ALL_LINEAR if targets == (ALL_LINEAR,) else targets)

    @property
    def scaling(self) -> float:
        # alpha / r (Hu et al. 2021, sec. 4.1); alpha / sqrt(r) with rsLoRA (Kalajdzievski 2023)
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)


@dataclass(frozen=True)
class PromptTuningConfig:
    num_virtual_tokens: int = 20  # Lester et al. 2021, fig. 3(a): beyond ~20 tokens the gains are marginal
    # "vocab": embeddings of tokens drawn uniformly from the vocabulary (PEFT's SAMPLE_VOCAB; Lester et
    #   al. fig. 3(b): starting from real token embeddings beats random init, most for small models);
    # "text": embeddings of `init_token_ids` (the caller tokenizes, e.g. "Answer the question:"),
    #   repeated or cut to length as PEFT's TEXT init does;
    # "random": normal with the std of the token-embedding matrix, so the virtual tokens have the scale
    #   of real ones (PEFT's RANDOM draws N(0, 1), far larger than GPT-2's embeddings).
    init: str = "vocab"  # how the soft prompt starts: vocab, text or random (PROMPT_INITS)
    init_token_ids: tuple[int, ...] = ()

    def __post_init__(self):
        if self.init not in PROMPT_INITS:
            raise ValueError(f"unknown prompt init {self.init!r}; choose from {PROMPT_INITS}")
        object.__setattr__(self, "init_token_ids", tuple(self.init_token_ids))


@dataclass(frozen=True)
class SelectiveConfig:
    train: str = "last-2-blocks"  # last-K-blocks, bias (BitFit), layernorm, or several joined by + (bias+layernorm)


# "lora" and "qlora" share LoraConfig (QLoRA is LoRA over a quantised base): one set of LoRA options
PEFT_CONFIGS = {"lora": LoraConfig, "qlora": LoraConfig, "prompt-tuning": PromptTuningConfig, "selective": SelectiveConfig}
PeftConfig = LoraConfig | PromptTuningConfig | SelectiveConfig


def method_of(config: PeftConfig | None) -> str:
    """The method a PEFT configuration describes ("full" for None)."""
    if config is None:
        return "full"
    if isinstance(config, LoraConfig):
        return "lora" if config.quantize is None else "qlora"
    for method, cls in PEFT_CONFIGS.items():
        if isinstance(config, cls):
            return method
    raise TypeError(f"not a PEFT configuration: {type(config).__name__} (expected one of {list(PEFT_CONFIGS.values())})")


def check_method(method: str, config: PeftConfig | None) -> PeftConfig | None:
    """The configuration of `method`: `config` if it is of the method's kind, the defaults if None.

    For "qlora" a LoraConfig without `quantize` gets quantize="nf4" (the method says the base is
    quantised; the LoRA fields are kept); for "lora" a quantised LoraConfig is an error.

    Raises:
        ValueError: an unknown method, a configuration for full fine-tuning, or one of another kind.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "full":
        if config is not None:
            raise ValueError("full fine-tuning takes no PEFT configuration")
        return None
    cls = PEFT_CONFIGS[method]
    if config is None:
        return check_method(method, cls())
    if not isinstance(config, cls):
        raise ValueError(f"method {method!r} needs a {cls.__name__}, got {type(config).__name__}")
    if method == "qlora" and config.quantize is None:
        return dataclasses.replace(config, quantize=QUANTIZATIONS[0])
    if method == "lora" and config.quantize is not None:
        raise ValueError(f"method 'lora' keeps the base as it is; quantize={config.quantize!r} is method 'qlora'")
    return config
