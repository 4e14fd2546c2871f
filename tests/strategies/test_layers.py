"""Layer groups of the tiny BERT, T5 and LLaMA models, plain and with a LoRA adapter."""

import logging

import pytest
import tiny
import torch
from transformers import AutoModelForSequenceClassification

from peftkit.adapters import apply_adapter
from peftkit.config import AdapterConfig
from peftkit.families import FAMILIES
from peftkit.strategies.layers import layer_groups

EXPECTED = {
    "bert": ["head", "encoder.1", "encoder.0", "embeddings"],
    "t5": ["head", "decoder.1", "decoder.0", "encoder.1", "encoder.0", "embeddings"],
    "llama": ["head", "layers.1", "layers.0", "embeddings"],
}
HEAD = {
    "bert": {"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"},
    "t5": {
        "transformer.decoder.final_layer_norm.weight",
        "classification_head.dense.weight",
        "classification_head.dense.bias",
        "classification_head.out_proj.weight",
        "classification_head.out_proj.bias",
    },
    "llama": {"model.norm.weight", "score.weight"},
}


def tiny_model(family):
    tokenizer = tiny.build_tokenizer(family)
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(tiny.build_config(family, len(tokenizer)))


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_groups_per_family(family):
    model = tiny_model(family)
    groups = layer_groups(model)
    assert [g.name for g in groups] == EXPECTED[family]
    assert [g.depth for g in groups] == list(range(len(groups)))
    assert {n for n, _ in groups[0].params} == HEAD[family]
    names = [n for g in groups for n, _ in g.params]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())  # each parameter exactly once


def test_t5_encoder_final_norm_joins_last_encoder_block():
    groups = {g.name: [n for n, _ in g.params] for g in layer_groups(tiny_model("t5"))}
    assert "transformer.encoder.final_layer_norm.weight" in groups["encoder.1"]
    assert groups["embeddings"] == ["transformer.shared.weight"]


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_adapter_weights_belong_to_their_block(family):
    model = apply_adapter(tiny_model(family), AdapterConfig(method="lora", r=2), FAMILIES[family])
    groups = layer_groups(model, trainable_only=True)
    assert [g.name for g in groups] == [n for n in EXPECTED[family] if n != "embeddings"]
    block_word = {"bert": "layer", "t5": "block", "llama": "layers"}[family]
    for group in groups[1:]:
        stack, index = group.name.split(".")
        prefix = f"{stack}.{block_word}.{index}." if family != "llama" else f"layers.{index}."
        assert group.params and all("lora_" in n and prefix in n for n, _ in group.params)
    head = [n for n, _ in groups[0].params]
    assert any("modules_to_save" in n for n in head)
    assert all("modules_to_save" in n or "pooler" in n for n in head)  # BERT's pooler.dense gets LoRA too


def test_unknown_architecture_is_one_group_with_a_warning(caplog):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    with caplog.at_level(logging.WARNING):
        groups = layer_groups(model)
    assert [g.name for g in groups] == ["all"] and len(groups[0].params) == 4
    assert "one group" in caplog.text
