"""IA3 (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning") through peft: learned vectors that rescale the keys, the values and the feed-forward input.

With `target_modules: auto` the targets are peft's per-architecture defaults (keys, values, and the
feed-forward output projection, whose *input* is rescaled). A list of names rescales those modules' outputs.
"""

from __future__ import annotations

import torch
from peft import IA3Config, TaskType
from peft.utils.constants import (
    TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING,
    TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING,
)

from peftkit.adapters.targets import head_modules, resolve_target_modules, targets_conv1d
from peftkit.config import AdapterConfig, ConfigError
from peftkit.families import Family

# families peftkit knows whose layer names are those of an architecture peft has IA3 defaults for
_SAME_LAYOUT = {"xlm-roberta": "roberta", "electra": "bert"}


def build_ia3_config(config: AdapterConfig, model: torch.nn.Module, family: Family) -> IA3Config:
    heads = head_modules(model, family, config.modules_to_save)
    if config.target_modules != "auto":
        targets = resolve_target_modules(model, family, config.target_modules)
        return IA3Config(
            task_type=TaskType.SEQ_CLS,
            target_modules=targets,
            feedforward_modules=[],
            modules_to_save=heads,
            fan_in_fan_out=targets_conv1d(model, targets),
        )
    model_type = _SAME_LAYOUT.get(family.name, family.name)
    if model_type not in TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING:
        raise ConfigError(
            f"adapter.method: ia3 has no default targets for {family.name!r} models; "
            "set adapter.target_modules to the attention/MLP linear layers to rescale"
        )
    targets = list(TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING[model_type])
    return IA3Config(
        task_type=TaskType.SEQ_CLS,
        target_modules=targets,
        feedforward_modules=list(TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING[model_type]),
        modules_to_save=heads,
        fan_in_fan_out=targets_conv1d(model, targets),  # GPT-2's Conv1D; peft would switch it with a warning
    )
