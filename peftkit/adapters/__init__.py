"""Adapter methods: one builder per method, chosen by `adapter.method` in the recipe.

`METHODS` is the extension point: a builder takes the adapter section, the
model and its family, and returns a peft config (checking target and head
module names against the model). `apply_adapter` wraps the model with peft.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from peft import PeftConfig, PeftModel, get_peft_model

from peftkit.adapters.bottleneck import build_bottleneck_config
from peftkit.adapters.lora import build_lora_config
from peftkit.config import AdapterConfig
from peftkit.families import Family

logger = logging.getLogger(__name__)

Builder = Callable[[AdapterConfig, torch.nn.Module, Family], PeftConfig]

METHODS: dict[str, Builder] = {
    "lora": build_lora_config,
    "bottleneck": build_bottleneck_config,
}


def apply_adapter(model: torch.nn.Module, config: AdapterConfig, family: Family) -> PeftModel:
    """Attach the adapter of `config.method` to `model`; the classifier head is trained and saved with it."""
    peft_config = METHODS[config.method](config, model, family)
    peft_model = get_peft_model(model, peft_config)
    trainable, total = count_parameters(peft_model)
    targets = peft_config.target_modules
    logger.info(
        "%s adapter on %s: trainable params %s / %s (%.2f%%)",
        config.method,
        targets if isinstance(targets, str | None) else ",".join(sorted(targets)),
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / total,
    )
    return peft_model


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit packed weights count as their unpacked size."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel()
        if param.__class__.__name__ == "Params4bit":
            n *= 2
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total
