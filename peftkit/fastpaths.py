"""Opt-in fast paths that upstream offers: the optimizer, torch.compile and the attention kernel.

Always on where they apply (see docs/performance.md): fused AdamW on a GPU
(`train.build_optimizer`), bf16 autocast on a GPU that has it (`training.mixed_precision: auto`),
padding to a multiple of 8 on a GPU (`api.finetune`) and transformers' default attention (SDPA for
every family peftkit knows). The options here change memory or numerics, so they are off by default:

- `training.optimizer`: AdamW with 8-bit states from bitsandbytes (Dettmers et al. 2022), ~75% less
  optimizer memory; `paged_adamw_8bit` also pages the states to host memory under GPU memory pressure.
- `training.compile`: `torch.compile` of the model's forward (in place: parameter names and saving
  are unchanged); pays a compilation per new batch shape before it is faster.
- `model.attn_implementation`: which attention kernel transformers uses.
"""

from __future__ import annotations

import importlib.util

import torch

from peftkit.config import ConfigError, RunConfig, TrainingConfig

# training.optimizer -> (module, class name); bitsandbytes classes take the same arguments as torch's AdamW
OPTIMIZERS = {
    "adamw": ("torch.optim", "AdamW"),
    "adamw_8bit": ("bitsandbytes.optim", "AdamW8bit"),
    "paged_adamw_8bit": ("bitsandbytes.optim", "PagedAdamW8bit"),
}


def check_fast_paths(config: RunConfig) -> None:
    """Refuse fast paths this machine or install cannot run (called by `config.validate`)."""
    t, m = config.training, config.model
    if t.optimizer != "adamw" and importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(
            f"training.optimizer: {t.optimizer} needs bitsandbytes: pip install 'peftkit[qlora]' "
            "(or use training.optimizer=adamw)"
        )
    if t.optimizer.startswith("paged_") and not torch.cuda.is_available():
        raise ConfigError(
            f"training.optimizer: {t.optimizer} pages optimizer state between GPU and host memory and needs a "
            "CUDA GPU (bitsandbytes falls back to the unpaged optimizer on a CPU); use training.optimizer="
            "adamw_8bit on a CPU"
        )
    if m.attn_implementation == "flash_attention_2":
        if not torch.cuda.is_available():
            raise ConfigError(
                "model.attn_implementation: flash_attention_2 needs a CUDA GPU; use auto or sdpa on a CPU"
            )
        if importlib.util.find_spec("flash_attn") is None:
            raise ConfigError(
                "model.attn_implementation: flash_attention_2 needs the flash-attn package "
                "(pip install flash-attn); or use auto (SDPA)"
            )


def make_optimizer(groups: list[dict], config: TrainingConfig, fused: bool) -> torch.optim.Optimizer:
    """The `training.optimizer` over parameter `groups`; `fused` (torch AdamW on CUDA) runs one kernel per step."""
    module, name = OPTIMIZERS[config.optimizer]
    cls = getattr(importlib.import_module(module), name)
    if config.optimizer == "adamw":
        return cls(groups, lr=config.learning_rate, fused=fused or None)
    return cls(groups, lr=config.learning_rate)


def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    """Compile `model`'s forward in place (`nn.Module.compile`): no wrapper, so names and saving are unchanged.

    `dynamic=None` lets torch.compile mark the batch and sequence sizes dynamic after it sees
    them change (length-grouped batches vary in length), instead of recompiling for each.
    """
    model.compile(dynamic=None)
    return model


def attn_implementation(setting: str) -> dict:
    """`from_pretrained` arguments for `model.attn_implementation` (`auto`: transformers' choice, SDPA)."""
    return {} if setting == "auto" else {"attn_implementation": setting}
