"""Continued pre-training: each objective corrupts the share of tokens it says, and its loss goes down."""

import random

import pytest
import tiny
import torch
from transformers import AutoModelForSequenceClassification

from peftkit.config import RunConfig
from peftkit.domain.pretrain import (
    SpanCorruptionCollator,
    continued_pretraining,
    pretraining_collator,
    span_corruption,
)
from peftkit.model import load_tokenizer

TEXTS = [r["text"] for r in tiny.toy_sentiment(400, seed=5)]
TARGET_DOMAIN = [
    "the food was really good",
    "the service was very bad",
    "i love this product",
    "we hate it",
] * 40
"""Repetitive target-domain text: a language model can learn it in a few steps."""


@pytest.mark.parametrize("probability", [0.15, 0.4])
def test_masked_lm_masks_the_configured_share(probability):
    tokenizer = tiny.build_tokenizer("bert")
    collator = pretraining_collator("encoder", tokenizer, probability, seed=0)
    rows = [{"input_ids": ids} for ids in tokenizer(TEXTS)["input_ids"]]
    batch = collator(rows)
    special = torch.isin(batch["input_ids"], torch.tensor(tokenizer.all_special_ids)) & (
        batch["labels"] == -100
    )
    ordinary = ~special & (batch["attention_mask"] == 1)
    share = (batch["labels"][ordinary] != -100).float().mean().item()
    assert share == pytest.approx(probability, abs=0.03)
    chosen = batch["labels"] != -100
    assert (batch["input_ids"][chosen] == tokenizer.mask_token_id).float().mean().item() == pytest.approx(
        0.8, abs=0.08
    )


def test_span_corruption_share_and_reconstruction():
    rng = random.Random(0)
    sentinels = [1000 + k for k in range(100)]
    corrupted = total = 0
    for n in range(5, 60):
        ids = list(range(10, 10 + n)) + [1]  # eos 1 at the end stays out of the noise
        inputs, targets = span_corruption(ids, 0.15, sentinels, 1, rng)
        assert inputs[-1] == 1 and targets[-1] == 1
        noise = [t for t in targets[:-1] if t not in sentinels]
        corrupted, total = corrupted + len(noise), total + n
        assert len(noise) == max(1, round(0.15 * n))
        # putting the spans back where their sentinels are gives the original text
        spans, current = {}, None
        for t in targets[:-1]:
            current = t if t in sentinels else current
            if t not in sentinels:
                spans.setdefault(current, []).append(t)
        rebuilt = [x for t in inputs[:-1] for x in (spans[t] if t in sentinels else [t])]
        assert rebuilt == ids[:-1]
    assert corrupted / total == pytest.approx(0.15, abs=0.02)


def test_span_corruption_collator_pads_labels_with_ignore_index():
    tokenizer = tiny.build_tokenizer("t5")
    collator = SpanCorruptionCollator(tokenizer, 0.3, seed=0)
    batch = collator([{"input_ids": ids} for ids in tokenizer(TEXTS[:8])["input_ids"]])
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert (batch["labels"] == -100).any() and (batch["labels"] != -100).sum(1).min() >= 2


@pytest.mark.parametrize("family", ["bert", "t5", "llama"])
def test_continued_pretraining_lowers_its_loss_and_saves_a_loadable_base(
    family, tiny_models, tmp_path, one_thread
):
    config = RunConfig()
    config.model.name_or_path = str(tiny_models[family])
    config.adapter.lora_dropout = 0.0
    config.data.max_length = 32
    t = config.training
    t.batch_size, t.log_every_steps, t.progress_bar, t.warmup_ratio, t.seed = 16, 5, False, 0.0, 0
    config.domain.pretrain_steps, config.domain.pretrain_learning_rate = 40, 5e-2
    config.domain.mlm_probability = 0.3
    tokenizer = load_tokenizer(config.model)
    result = continued_pretraining(config, TARGET_DOMAIN, tokenizer, tmp_path / "dapt")
    assert len(result.losses) == 8
    assert result.losses[-1] < result.losses[0] - 0.2, result.losses  # window noise is ~0.03 nats
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    merged = AutoModelForSequenceClassification.from_pretrained(result.base_dir, num_labels=2)
    original = AutoModelForSequenceClassification.from_pretrained(tiny_models[family], num_labels=2)
    changed = [
        name for name, p in merged.base_model.named_parameters()
        if not torch.equal(p, dict(original.base_model.named_parameters())[name])
    ]  # fmt: skip
    assert changed and all("embed" not in n and "shared" not in n for n in changed)  # LoRA targets only
