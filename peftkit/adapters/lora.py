"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") through peft."""

from __future__ import annotations

import torch
from peft import LoraConfig, TaskType

from peftkit.adapters.targets import head_modules, resolve_target_modules
from peftkit.config import AdapterConfig
from peftkit.families import Family


def build_lora_config(config: AdapterConfig, model: torch.nn.Module, family: Family) -> LoraConfig:
    targets = resolve_target_modules(model, family, config.target_modules)
    heads = head_modules(model, family, config.modules_to_save)
    return LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=config.r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        modules_to_save=heads,
    )
