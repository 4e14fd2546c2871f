"""Adapter methods: one builder per method, chosen by `adapter.method` in the recipe.

`METHODS` is the extension point: a builder takes the adapter section, the
model and its family, and returns a peft config (checking target and head
module names against the model). `apply_adapter` wraps the model with peft.
`check_method_compatible` (called by `config.validate`) and
`check_method_supported` (called before the weights load) refuse what a method
cannot do, with the reason.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import torch
from peft import PeftConfig, PeftModel, TaskType, get_peft_model

from peftkit.adapters.bottleneck import build_bottleneck_config
from peftkit.adapters.ia3 import build_ia3_config
from peftkit.adapters.lora import build_lora_config
from peftkit.adapters.prefix import accept_prefix_cache, build_prefix_config
from peftkit.adapters.prompt import build_prompt_config
from peftkit.config import AdapterConfig, ConfigError, ModelConfig, RunConfig
from peftkit.families import Family
from peftkit.numerics import upcast_trainable

logger = logging.getLogger(__name__)

Builder = Callable[[AdapterConfig, torch.nn.Module, Family], PeftConfig]

METHODS: dict[str, Builder] = {
    "lora": build_lora_config,
    "qlora": build_lora_config,  # LoRA on the 4-bit base that `load_model` quantizes
    "ia3": build_ia3_config,
    "prefix": build_prefix_config,
    "prompt": build_prompt_config,
    "bottleneck": build_bottleneck_config,
}

LORA_METHODS = ("lora", "qlora")

# `RunConfig.task` -> the peft task type (the builders write SEQ_CLS; `apply_adapter` swaps it).
TASK_TYPES = {
    "classification": TaskType.SEQ_CLS,
    "seq2seq": TaskType.SEQ_2_SEQ_LM,
    "causal-lm": TaskType.CAUSAL_LM,
}

# (method, family kind or model_type) -> why it cannot work; checked with peft 0.21.2 and transformers 5.24.
UNSUPPORTED: dict[tuple[str, str], str] = {
    ("prefix", "encoder-decoder"): (
        "peft's prefix tuning for sequence classification lengthens the attention mask by the virtual tokens "
        "and hands the prefix to the decoder cache, but T5/BART classifiers pass that mask to the encoder, "
        "whose input has no prefix (shape mismatch)"
    ),
    ("prompt", "encoder-decoder"): (
        "prompt tuning feeds input embeddings, and T5/BART *ForSequenceClassification refuse inputs_embeds"
    ),
    ("prompt", "decoder"): (
        "prompt tuning feeds input embeddings, and decoder classifiers (LLaMA-class) find the last non-pad "
        "token from input_ids only: with inputs_embeds they pool the last position, a pad token in padded "
        "batches"
    ),
    ("prefix", "distilbert"): (
        "peft hands the prefix to every attention layer as a key/value cache, and DistilBERT's attention takes none"
    ),
    ("prefix", "deberta-v2"): (
        "peft hands the prefix to every attention layer as a key/value cache, and DeBERTa-v2's disentangled "
        "attention takes none"
    ),
}

# Options that only LoRA methods read: name -> the value that means "not set".
_LORA_OPTIONS = {
    "use_dora": False,
    "use_rslora": False,
    "init_lora_weights": True,
    "layers_to_transform": None,
    "loraplus_lr_ratio": None,
}


def apply_adapter(
    model: torch.nn.Module, config: AdapterConfig, family: Family, task: str = "classification"
) -> PeftModel:
    """Attach the adapter of `config.method` to `model`; the classifier head is trained and saved with it.

    `task` (`RunConfig.task`) sets the peft task type; `UNSUPPORTED` lists classifier limits only.
    """
    if task == "classification":
        check_method_supported(config.method, family)
    if config.method == "qlora" and not getattr(model, "is_quantized", False):
        raise ConfigError(
            "adapter.method: qlora needs a quantized base; load it with load_model(..., adapter=config.adapter)"
        )
    prepare_base(model, config.method)
    peft_config = METHODS[config.method](config, model, family)
    if task != "classification":
        peft_config = dataclasses.replace(peft_config, task_type=TASK_TYPES[task])
    peft_model = get_peft_model(model, peft_config)
    upcast_trainable(peft_model)  # the head on a 16-bit base trains in float32 too
    trainable, total = count_parameters(peft_model)
    logger.info(
        "%s adapter on %s: trainable params %s / %s (%.2f%%)",
        config.method,
        _describe_targets(peft_config),
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / total,
    )
    return peft_model


def prepare_base(model: torch.nn.Module, method: str) -> None:
    """Ready a freshly loaded base model for an adapter of `method` (before training or loading one)."""
    if method == "prefix":
        accept_prefix_cache(model)


def check_method_supported(method: str, family: Family) -> None:
    """Refuse a method x model-family pair that cannot work, saying why."""
    reason = _why_unsupported(method, family)
    if reason:
        works = sorted(m for m in METHODS if not _why_unsupported(m, family))
        raise ConfigError(
            f"adapter.method: {method!r} does not work with {family.name} ({family.kind}) models: {reason}. "
            f"Methods that do: {', '.join(works)}"
        )


def _why_unsupported(method: str, family: Family) -> str | None:
    return UNSUPPORTED.get((method, family.kind)) or UNSUPPORTED.get((method, family.name))


def check_method_compatible(config: RunConfig) -> None:
    """Refuse options the method does not read and combinations it cannot run (called by `validate`)."""
    a = config.adapter
    _check_lora_options(a)
    _positive(a.num_virtual_tokens, "adapter.num_virtual_tokens")
    if a.method == "prefix" and config.training.gradient_checkpointing:
        raise ConfigError(
            "adapter.method: prefix cannot train with training.gradient_checkpointing: transformers turns the "
            "key/value cache, which carries the prefix, off in checkpointed layers. Set "
            "training.gradient_checkpointing=false (or use prompt tuning, which supports it)"
        )
    quantization = quantization_for(config.model, a.method)
    if quantization != "none":
        _check_quantization(quantization, a.method)


def quantization_for(model: ModelConfig, method: str | None) -> str:
    """The quantization the base loads with: `model.quantization`, or 4bit for `adapter.method: qlora`."""
    if model.quantization == "none" and method == "qlora":
        return "4bit"
    return model.quantization


def _check_lora_options(a: AdapterConfig) -> None:
    if a.method not in LORA_METHODS:
        for name, unset in _LORA_OPTIONS.items():
            if getattr(a, name) != unset:
                raise ConfigError(
                    f"adapter.{name} applies to LoRA methods ({', '.join(LORA_METHODS)}), not {a.method!r}"
                )
        return
    if a.loraplus_lr_ratio is not None:
        _positive(a.loraplus_lr_ratio, "adapter.loraplus_lr_ratio")
    if a.layers_to_transform is not None:
        if not a.layers_to_transform or min(a.layers_to_transform) < 0:
            raise ConfigError(
                f"adapter.layers_to_transform: {a.layers_to_transform} must list block indexes >= 0 (or be null)"
            )
        if a.target_modules == "all-linear":
            raise ConfigError(
                "adapter.layers_to_transform needs named targets: peft refuses it with target_modules "
                "'all-linear'; use 'auto' or a list of module names"
            )


def _check_quantization(quantization: str, method: str) -> None:
    if method not in LORA_METHODS:
        raise ConfigError(
            f"model.quantization: {quantization!r} is for LoRA methods ({', '.join(LORA_METHODS)}); "
            f"{method!r} trains on a full-precision base: set model.quantization=none"
        )
    try:
        import bitsandbytes  # noqa: F401
    except Exception as err:  # missing, or installed without a working native library
        raise ConfigError(
            f"{quantization} quantization (model.quantization / adapter.method: qlora) needs bitsandbytes, "
            f"which does not import ({type(err).__name__}: {err}): pip install 'peftkit[qlora]'"
        ) from None


def _positive(value: float, key: str) -> None:
    if value <= 0:
        raise ConfigError(f"{key}: {value} must be > 0")


def _describe_targets(peft_config: PeftConfig) -> str:
    targets = getattr(peft_config, "target_modules", None)
    if targets is None and hasattr(peft_config, "num_virtual_tokens"):
        return f"{peft_config.num_virtual_tokens} virtual tokens"
    return targets if isinstance(targets, str | None) else ",".join(sorted(targets))


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
