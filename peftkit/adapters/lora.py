"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") and its family, through peft.

One builder serves `lora` and `qlora` (LoRA on a base that `load_model` quantized
to 4 bit; Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs"),
with the options: DoRA (Liu et al. 2024, `use_dora`), rsLoRA (Kalajdzievski 2023,
`use_rslora`), the init of A and B, and which blocks to adapt. LoRA+ (Hayou et
al. 2024) is an optimizer setting: `parameter_groups` gives B its own rate.
"""

from __future__ import annotations

import torch
from peft import LoraConfig, TaskType

from peftkit.adapters.targets import head_modules, resolve_target_modules, targets_conv1d
from peftkit.config import AdapterConfig, ConfigError
from peftkit.families import Family

_B_MATRICES = (".lora_B.", ".lora_embedding_B.")


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
        fan_in_fan_out=targets_conv1d(model, targets),  # said up front, peft would switch it with a warning
        use_dora=config.use_dora,
        use_rslora=config.use_rslora,
        init_lora_weights=config.init_lora_weights,
        layers_to_transform=_checked_layers(model, config.layers_to_transform, targets),
    )


def _checked_layers(model: torch.nn.Module, layers: list[int] | None, targets) -> list[int] | None:
    """`layers_to_transform`, checked against the model's block count."""
    if layers is None:
        return None
    if isinstance(targets, str):
        raise ConfigError(
            f"adapter.layers_to_transform needs named targets, but target_modules resolved to {targets!r}; "
            "list the module names in adapter.target_modules"
        )
    config = model.config.get_text_config()
    count = max(
        getattr(config, name, 0) or 0 for name in ("num_hidden_layers", "num_layers", "num_decoder_layers")
    )
    bad = [i for i in layers if i >= count]
    if count and bad:
        raise ConfigError(
            f"adapter.layers_to_transform: {bad} out of range: this model has {count} blocks (0..{count - 1})"
        )
    return list(layers)


def parameter_groups(
    model: torch.nn.Module, lr: float, weight_decay: float, loraplus_lr_ratio: float | None = None
) -> list[dict]:
    """AdamW parameter groups for the trainable parameters of `model`.

    Weight decay on matrices only (biases, norms and DoRA magnitudes are 1-d and
    get none). With `loraplus_lr_ratio` (LoRA+), the LoRA B matrices learn at
    `lr * loraplus_lr_ratio` and everything else, the head included, at `lr`.
    Empty groups are left out.
    """
    decay, no_decay, lora_b = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if loraplus_lr_ratio is not None and any(key in name for key in _B_MATRICES):
            lora_b.append(param)
        else:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [
        {"params": decay, "lr": lr, "weight_decay": weight_decay},
        {"params": no_decay, "lr": lr, "weight_decay": 0.0},
        {"params": lora_b, "lr": lr * (loraplus_lr_ratio or 1.0), "weight_decay": weight_decay},
    ]
    return [group for group in groups if group["params"]]
