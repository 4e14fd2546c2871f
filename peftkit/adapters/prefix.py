"""Prefix tuning (Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation") through
peft, in its deep-prompt form for classification (P-tuning v2, Liu et al. 2022): `num_virtual_tokens` trained
key/value vectors put before the keys and values of every attention layer.

BERT- and LLaMA-class classifiers; see `adapters.UNSUPPORTED` for why T5-class ones cannot take it. Not with
gradient checkpointing (refused by `check_method_compatible`).
"""

from __future__ import annotations

import inspect
import types

import torch
from peft import PrefixTuningConfig, TaskType

from peftkit.adapters.targets import head_modules
from peftkit.config import AdapterConfig
from peftkit.families import Family


def build_prefix_config(config: AdapterConfig, model: torch.nn.Module, family: Family) -> PrefixTuningConfig:
    hidden = model.config.get_text_config().hidden_size
    return PrefixTuningConfig(
        task_type=TaskType.SEQ_CLS,
        num_virtual_tokens=config.num_virtual_tokens,
        prefix_projection=config.prefix_projection,
        encoder_hidden_size=hidden,
        modules_to_save=head_modules(model, family, config.modules_to_save),
    )


def accept_prefix_cache(model: torch.nn.Module) -> None:
    """Let peft hand the prefix to `model`: the one workaround for prefix tuning.

    peft 0.21.2 passes the prefix as `past_key_values` and first checks that the
    classifier's (or its backbone's) `forward` signature has a parameter of that
    name, else raises "Model does not support past key values which are required
    for prefix tuning". transformers 5 renamed the parameter to `cache` (the old
    name is accepted, with a deprecation warning, until 5.40), so the check fails
    for every classifier. This gives this one model instance a `forward` with a
    `past_key_values` parameter that passes the prefix on as `cache`. Call it on
    the base before `get_peft_model` or `PeftModel.from_pretrained` (peftkit does,
    through `prepare_base`); it is a no-op where peft's check already passes.
    """
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), model)
    for module in (model, backbone):
        if "past_key_values" in inspect.signature(module.forward).parameters:
            return
    if "cache" not in inspect.signature(backbone.forward).parameters:
        return  # nothing to hand the prefix to: peft's own error stands
    model.forward = types.MethodType(_forward_with_prefix(type(model).forward), model)


def _forward_with_prefix(forward):
    """`forward` taking `past_key_values` as `cache`, with `forward`'s own signature plus that parameter.

    The signature matters beyond peft's check: `generate` validates its keyword arguments against it.
    """

    def wrapped(self, *args, past_key_values=None, **kwargs):
        if past_key_values is not None:
            kwargs["cache"] = past_key_values
        return forward(self, *args, **kwargs)

    signature = inspect.signature(forward)
    params = [p for p in signature.parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD]
    extra = inspect.Parameter("past_key_values", inspect.Parameter.KEYWORD_ONLY, default=None)
    tail = [p for p in signature.parameters.values() if p.kind == inspect.Parameter.VAR_KEYWORD]
    wrapped.__signature__ = signature.replace(parameters=[*params, extra, *tail])
    return wrapped
