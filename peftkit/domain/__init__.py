"""Domain adaptation: train on a labelled source domain, do well on a target domain known from unlabelled text.

Each remedy is one `domain.method` of the recipe (`config.DomainConfig`):

| method | module | how it runs |
|---|---|---|
| `dapt` | `pretrain.py`, `stages.py` | continued pre-training on target text through LoRA, merged (or stacked under the task adapter: `dapt_mode: stack`), then task training |
| `intermediate` | `stages.py` | a related labelled task first, merged, then the task (two stages, one recipe) |
| `self_training` | `selftrain.py`, `stages.py` | rounds of pseudo-labelling target text and retraining |
| `dann` | `grl.py`, `dann.py` | a step hook and a loss term for the one training loop |
| `coral`, `mmd` | `alignment.py` | a loss term for the one training loop |

The staged methods call `api.finetune` once per stage; the loss-term methods add a penalty computed on a
target batch drawn at every training step, from pooled features captured at the head (`features.py`).
"""

from __future__ import annotations

from pathlib import Path

from peftkit.config import ConfigError, RunConfig

STAGED_METHODS = ("dapt", "intermediate", "self_training")
"""`domain.method` choices that run several trainings (`stages.run_staged`)."""
LOSS_METHODS = ("dann", "coral", "mmd")
"""`domain.method` choices that add a loss term to the one training loop (`strategies_for`)."""


def check_domain(config: RunConfig) -> None:
    """Refuse domain options out of range or missing what the method needs (called by `config.validate`)."""
    dc, method = config.domain, config.domain.method
    check_stack(config)
    if method == "none":
        return
    if method in ("dapt", "self_training", *LOSS_METHODS) and not dc.target_file:
        raise ConfigError(f"domain.method: {method} needs unlabelled target text: set domain.target_file")
    if method == "intermediate" and not dc.intermediate_file:
        raise ConfigError(
            "domain.method: intermediate needs the related labelled task: set domain.intermediate_file"
        )
    if dc.weight < 0:
        raise ConfigError(f"domain.weight: {dc.weight} must be >= 0")
    if not 0.0 < dc.threshold < 1.0:
        raise ConfigError(f"domain.threshold: {dc.threshold} must be in (0, 1) (a top-class probability)")
    if dc.rounds < 1:
        raise ConfigError(f"domain.rounds: {dc.rounds} must be >= 1")
    if dc.pretrain_steps < 1 or dc.pretrain_learning_rate <= 0 or dc.intermediate_epochs <= 0:
        raise ConfigError("domain.pretrain_steps, pretrain_learning_rate and intermediate_epochs must be > 0")
    if not 0.0 < dc.mlm_probability < 1.0:
        raise ConfigError(f"domain.mlm_probability: {dc.mlm_probability} must be in (0, 1)")
    a, t = config.adapter, config.training
    if method in LOSS_METHODS and a.method == "features":
        raise ConfigError(
            f"domain.method: {method} trains the features; adapter.method: features keeps them frozen. "
            "Use an adapter or adapter.method: full"
        )
    if method in STAGED_METHODS and t.resume:
        raise ConfigError(
            f"domain.method: {method} runs several trainings and cannot resume; set training.resume=null"
        )
    quantized = config.model.quantization != "none" or a.method == "qlora"
    if method in ("dapt", "intermediate") and quantized and dc.dapt_mode != "stack":
        raise ConfigError(
            f"domain.method: {method} merges an adapter into the base, which a quantized base cannot hold "
            "exactly; use model.quantization: none and an unquantized adapter method"
            + (", or domain.dapt_mode: stack" if method == "dapt" else "")
        )


def check_stack(config: RunConfig) -> None:
    """Refuse `domain.dapt_mode: stack` / `domain.stack_adapter` where a frozen domain LoRA cannot sit under the
    task adapter."""
    dc, a = config.domain, config.adapter
    stage = dc.method == "none" and dc.stack_adapter is not None  # the task stage of dapt_mode: stack
    if dc.dapt_mode == "stack" and dc.method != "dapt" and not stage:
        raise ConfigError(
            f"domain.dapt_mode: stack applies to domain.method: dapt, not {dc.method!r}; "
            "set domain.method=dapt or domain.dapt_mode=merge"
        )
    if dc.stack_adapter is not None and dc.method != "none":
        raise ConfigError(
            f"domain.stack_adapter loads an existing domain adapter with domain.method: none, not {dc.method!r} "
            "(domain.dapt_mode: stack trains its own); unset one of them"
        )
    if dc.dapt_mode != "stack" and dc.stack_adapter is None:
        return
    what = "domain.dapt_mode: stack" if dc.dapt_mode == "stack" else "domain.stack_adapter"
    if config.task != "classification" or config.data.tasks:
        raise ConfigError(f"{what} stacks adapters of a single-task classifier (task: classification)")
    if a.method not in ("lora", "qlora"):
        raise ConfigError(
            f"{what} keeps a frozen LoRA domain adapter under a LoRA task adapter: adapter.method must be "
            f"lora (DoRA and rsLoRA included) or qlora, not {a.method!r}"
        )
    if config.model.quantization == "8bit":
        raise ConfigError(
            f"{what} is for unquantized and 4-bit bases: set model.quantization to none or 4bit"
        )
    if dc.stack_adapter is not None and not (Path(dc.stack_adapter) / "adapter_config.json").is_file():
        raise ConfigError(
            f"domain.stack_adapter: {dc.stack_adapter!r} holds no adapter_config.json: give a dapt run's "
            "dapt/adapter folder"
        )
