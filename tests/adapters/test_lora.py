"""LoRA family options (DoRA, rsLoRA, init, layers_to_transform) and LoRA+ parameter groups, on tiny models."""

from __future__ import annotations

import math

import pytest
import tiny
import torch

from peftkit.adapters import apply_adapter
from peftkit.adapters.lora import parameter_groups
from peftkit.config import AdapterConfig, ConfigError, ModelConfig
from peftkit.model import load_model, load_tokenizer

LABELS = ["negative", "positive"]


def adapted(tiny_models, family: str, **options):
    config = ModelConfig(name_or_path=str(tiny_models[family]))
    tokenizer = load_tokenizer(config)
    loaded = load_model(config, LABELS, tokenizer)
    torch.manual_seed(0)
    base_weights = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    model = apply_adapter(
        loaded.model, AdapterConfig(method="lora", lora_dropout=0.0, **options), loaded.family
    )
    return model, tokenizer, base_weights


@torch.no_grad()
def logits(model, tokenizer) -> torch.Tensor:
    model.eval()
    rows = tiny.toy_sentiment(8)
    return model(**tokenizer([r["text"] for r in rows], padding=True, return_tensors="pt")).logits


def lora_layers(model) -> list:
    return [m for m in model.modules() if hasattr(m, "lora_A") and "default" in m.lora_A]


def test_dora_trains_a_magnitude_per_output(tiny_models):
    model, _, _ = adapted(tiny_models, "llama", use_dora=True)
    magnitudes = [n for n, p in model.named_parameters() if "lora_magnitude_vector" in n and p.requires_grad]
    assert len(magnitudes) == len(lora_layers(model))


@pytest.mark.parametrize("rslora,scale", [(False, 16 / 8), (True, 16 / math.sqrt(8))])
def test_rslora_scales_by_the_root_of_the_rank(tiny_models, rslora, scale):
    model, _, _ = adapted(tiny_models, "bert", use_rslora=rslora, r=8, lora_alpha=16)
    scales = [layer.scaling["default"] for layer in lora_layers(model)]
    assert scales and all(value == pytest.approx(scale) for value in scales)


@pytest.mark.parametrize(
    "init,identity", [(True, True), ("gaussian", True), ("orthogonal", True), (False, False)]
)
def test_init_keeps_the_base_weights(tiny_models, init, identity):
    model, tokenizer, base_weights = adapted(tiny_models, "llama", init_lora_weights=init)
    frozen = {
        name.replace(".base_layer", "").replace(".original_module", ""): param
        for name, param in model.get_base_model().named_parameters()
        if "lora_" not in name and ".modules_to_save." not in name
    }
    assert frozen.keys() == base_weights.keys()
    for name, weight in base_weights.items():
        assert torch.equal(frozen[name], weight), name
    with model.disable_adapter():
        expected = logits(model, tokenizer)
    assert torch.allclose(logits(model, tokenizer), expected, atol=1e-5) == identity


@pytest.mark.parametrize(
    "family,blocks",
    [("bert", {"encoder.layer.1"}), ("t5", {"encoder.block.1", "decoder.block.1"}), ("llama", {"layers.1"})],
)
def test_layers_to_transform_adapts_only_those_blocks(tiny_models, family, blocks):
    model, _, _ = adapted(tiny_models, family, layers_to_transform=[1])
    names = [n for n, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    assert names
    assert all(any(f".{block}." in n for block in blocks) for n in names), names
    with pytest.raises(
        ConfigError, match=r"layers_to_transform: \[5\] out of range: this model has 2 blocks"
    ):
        adapted(tiny_models, family, layers_to_transform=[1, 5])


def test_parameter_groups_without_loraplus_split_by_weight_decay(tiny_models):
    model, _, _ = adapted(tiny_models, "bert")
    groups = parameter_groups(model, lr=1e-3, weight_decay=0.01)
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(1e-3, 0.01), (1e-3, 0.0)]
    assert all(p.ndim >= 2 for p in groups[0]["params"]) and all(p.ndim < 2 for p in groups[1]["params"])
    _assert_partition(model, groups)


def test_loraplus_gives_b_its_own_learning_rate(tiny_models):
    model, _, _ = adapted(tiny_models, "llama")
    groups = parameter_groups(model, lr=1e-3, weight_decay=0.01, loraplus_lr_ratio=16)
    by_id = {id(p): g for g in groups for p in g["params"]}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        group = by_id[id(param)]
        assert group["lr"] == pytest.approx(16e-3 if ".lora_B." in name else 1e-3), name
        assert group["weight_decay"] == (0.0 if param.ndim < 2 else 0.01), name
    _assert_partition(model, groups)
    torch.optim.AdamW(groups, lr=1e-3)  # the groups are what AdamW takes


def _assert_partition(model, groups) -> None:
    grouped = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable), "every trainable parameter in exactly one group"


def test_loraplus_optimizer_gives_b_matrices_the_higher_rate(tiny_models):
    from transformers import AutoModelForSequenceClassification

    from peftkit.adapters import apply_adapter
    from peftkit.config import AdapterConfig, TrainingConfig
    from peftkit.families import family_for
    from peftkit.train import build_optimizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_models["bert"], num_labels=2)
    model = apply_adapter(model, AdapterConfig(loraplus_lr_ratio=16.0), family_for("bert"))
    optimizer = build_optimizer(model, TrainingConfig(learning_rate=1e-3), loraplus_lr_ratio=16.0)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for param in group["params"]:
            expected = 16e-3 if "lora_B" in names[id(param)] else 1e-3
            assert group["lr"] == pytest.approx(expected), names[id(param)]
    assert sum(len(g["params"]) for g in optimizer.param_groups) == sum(
        p.requires_grad for p in model.parameters()
    )


def test_loraplus_and_layerwise_decay_are_refused_together():
    from peftkit.config import ConfigError, config_from_dict, validate

    values = {"data": {"train_file": "x.csv"}, "adapter": {"loraplus_lr_ratio": 8.0},
              "training": {"layerwise_lr_decay": 0.9}}  # fmt: skip
    with pytest.raises(ConfigError, match="use one of them"):
        validate(config_from_dict(values))
