"""`config.validate` refuses adapter options a method does not read and combinations that cannot run."""

from __future__ import annotations

import sys

import pytest

from peftkit.config import ConfigError, config_from_dict, validate


def recipe(adapter: dict, model: dict | None = None, training: dict | None = None):
    return config_from_dict(
        {
            "model": model or {},
            "adapter": adapter,
            "data": {"train_file": "train.csv"},
            "training": training or {},
        }
    )


@pytest.mark.parametrize(
    "option,value",
    [
        ("use_dora", True),
        ("use_rslora", True),
        ("init_lora_weights", "gaussian"),
        ("layers_to_transform", [0]),
        ("loraplus_lr_ratio", 16.0),
    ],
)
@pytest.mark.parametrize("method", ["ia3", "prefix", "prompt", "bottleneck"])
def test_lora_options_are_refused_for_other_methods(method, option, value):
    with pytest.raises(
        ConfigError, match=rf"adapter\.{option} applies to LoRA methods \(lora, qlora\), not '{method}'"
    ):
        validate(recipe({"method": method, option: value}))
    validate(recipe({"method": "lora", option: value}))
    validate(recipe({"method": "qlora", option: value}))


def test_lora_option_values_are_checked():
    with pytest.raises(ConfigError, match="loraplus_lr_ratio: 0.0 must be > 0"):
        validate(recipe({"method": "lora", "loraplus_lr_ratio": 0}))
    for layers in ([], [-1]):
        with pytest.raises(ConfigError, match="layers_to_transform"):
            validate(recipe({"method": "lora", "layers_to_transform": layers}))
    with pytest.raises(ConfigError, match="needs named targets.*'all-linear'"):
        validate(recipe({"method": "lora", "layers_to_transform": [0], "target_modules": "all-linear"}))
    # PiSSA / OLoRA rewrite the base weights, so the saved adapter would not fit the original base
    with pytest.raises(ConfigError, match="init_lora_weights: 'pissa' is not one of"):
        recipe({"method": "lora", "init_lora_weights": "pissa"})
    with pytest.raises(ConfigError, match="num_virtual_tokens: 0 must be > 0"):
        validate(recipe({"method": "prompt", "num_virtual_tokens": 0}))


def test_prefix_tuning_refuses_gradient_checkpointing():
    with pytest.raises(ConfigError, match="prefix cannot train with training.gradient_checkpointing") as err:
        validate(recipe({"method": "prefix"}, training={"gradient_checkpointing": True}))
    assert "gradient_checkpointing=false" in str(err.value)
    validate(recipe({"method": "prompt"}, training={"gradient_checkpointing": True}))
    validate(recipe({"method": "prefix"}))


@pytest.mark.parametrize("method", ["ia3", "prefix", "prompt", "bottleneck"])
def test_quantization_is_for_lora_methods(method):
    with pytest.raises(ConfigError, match=f"model.quantization: '4bit' is for LoRA methods.*'{method}'"):
        validate(recipe({"method": method}, model={"quantization": "4bit"}))


@pytest.mark.parametrize(
    "adapter,model", [({"method": "qlora"}, {}), ({"method": "lora"}, {"quantization": "8bit"})]
)
def test_quantization_without_bitsandbytes_says_how_to_install(monkeypatch, adapter, model):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` now raises ImportError
    with pytest.raises(ConfigError, match=r"needs bitsandbytes.*pip install 'peftkit\[qlora\]'"):
        validate(recipe(adapter, model=model))
    monkeypatch.undo()
    validate(recipe(adapter, model=model))
