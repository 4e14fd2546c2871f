"""Tiny BERT-, T5- and LLaMA-class models and word-level tokenizers, built locally.

Every test model is saved to a folder so that it goes through the same loading
path as a real checkpoint (a local folder instead of a Hub id), with no network.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    LlamaConfig,
    PreTrainedTokenizerFast,
    T5Config,
)

WORDS = (
    "good great excellent love wonderful fine happy best bad awful terrible hate poor "
    "worst boring sad the a movie film was is it this that and but not very really "
    "plot acting story music food service product i you we they"
).split()

FAMILIES = ("bert", "t5", "llama")


def build_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with the special tokens each family expects."""
    if family == "bert":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    elif family == "t5":
        specials = ["<pad>", "</s>", "<unk>"]
    else:
        specials = ["<unk>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials + WORDS)}
    unk = specials[1] if family == "bert" else ("<unk>")
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if family == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
        kwargs = dict(
            pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]"
        )
    elif family == "t5":
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", vocab["</s>"])]
        )
        kwargs = dict(pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    else:  # LLaMA-class: BOS prefix, and no pad token, as in the real checkpoints
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
        )
        kwargs = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=64, **kwargs)


T5_SHAPE = dict(
    d_model=32,
    d_kv=8,
    d_ff=64,
    num_layers=2,
    num_decoder_layers=2,
    num_heads=4,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)
"""A tiny T5 (width 32, 2 blocks per stack), less its vocabulary size."""


def build_config(family: str, vocab_size: int):
    if family == "bert":
        return BertConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
            pad_token_id=0,
        )
    if family == "t5":
        return T5Config(vocab_size=vocab_size, **T5_SHAPE)
    if family == "llama":
        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            bos_token_id=1,
            eos_token_id=2,
        )
    raise ValueError(f"unknown family {family!r}")


def save_tiny_model(family: str, path: str | Path, seed: int = 0) -> Path:
    """Build a randomly initialised tiny classifier of `family` and save it with its tokenizer."""
    import torch

    path = Path(path)
    tokenizer = build_tokenizer(family)
    config = build_config(family, len(tokenizer))
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


POSITIVE = "good great excellent love wonderful fine happy best".split()
NEGATIVE = "bad awful terrible hate poor worst boring sad".split()
FILLER = "the a movie film was is it this that and really plot acting story music food service".split()


def toy_sentiment(n: int, seed: int = 0) -> list[dict]:
    """A learnable two-class set: the label is which word list the sentence draws from."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = rng.sample(FILLER, rng.randint(2, 6)) + rng.sample(POSITIVE if label else NEGATIVE, 2)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": "positive" if label else "negative"})
    return rows


def save_tiny_generative_model(family: str, path: str | Path, seed: int = 0) -> Path:
    """A randomly initialised tiny T5 (text-to-text) or LLaMA (causal LM) with its LM head, and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    path = Path(path)
    tokenizer = build_tokenizer(family)
    config = build_config(family, len(tokenizer))
    torch.manual_seed(seed)
    auto_class = AutoModelForSeq2SeqLM if family == "t5" else AutoModelForCausalLM
    model = auto_class.from_config(config)
    if family == "llama":
        # A trained head's scale: with the init's 0.02, the final norm bounds the logits to about +-0.2, so
        # no adapter under the frozen LM head could get the loss much below log(vocabulary size).
        torch.nn.init.normal_(model.lm_head.weight, std=0.2)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def dequantized_base(auto_class, path: str | Path, quantization: dict, skip: str, compute_dtype=None):
    """`path` loaded in 4 bit as a run's `quantization` record (peftkit.json) says, then dequantized: the
    weights a QLoRA merge adds its update to. `skip`: the head kept out of quantization."""
    import torch
    from transformers import BitsAndBytesConfig

    bnb = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantization["bnb_4bit_quant_type"],
        bnb_4bit_use_double_quant=quantization["bnb_4bit_use_double_quant"],
        bnb_4bit_compute_dtype=compute_dtype or torch.float32,
        llm_int8_skip_modules=[skip],
    )
    return auto_class.from_pretrained(path, quantization_config=bnb).dequantize()
