"""Per-architecture knowledge: which linears an adapter targets and which modules form the head.

Keyed by `config.model_type`. An architecture not listed here falls back to
`all-linear` targets with a warning (see `family_for`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    name: str
    target_modules: tuple[str, ...]
    """Attention and MLP linear layers (LoRA's default targets)."""
    head_modules: tuple[str, ...]
    """Modules of the *ForSequenceClassification head: trained in full and saved with the adapter."""
    kind: str
    """`encoder`, `encoder-decoder` or `decoder`."""


_LLAMA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family("bert", ("query", "key", "value", "dense"), ("classifier",), "encoder"),
        Family("roberta", ("query", "key", "value", "dense"), ("classifier",), "encoder"),
        Family("xlm-roberta", ("query", "key", "value", "dense"), ("classifier",), "encoder"),
        Family("electra", ("query", "key", "value", "dense"), ("classifier",), "encoder"),
        Family(
            "distilbert",
            ("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"),
            ("pre_classifier", "classifier"),
            "encoder",
        ),
        Family(
            "deberta-v2",
            ("query_proj", "key_proj", "value_proj", "dense"),
            ("pooler", "classifier"),
            "encoder",
        ),
        Family(
            "t5",
            ("q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo"),
            ("classification_head",),
            "encoder-decoder",
        ),
        Family(
            "mt5",
            ("q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo"),
            ("classification_head",),
            "encoder-decoder",
        ),
        Family(
            "bart",
            ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
            ("classification_head",),
            "encoder-decoder",
        ),
        Family("llama", _LLAMA_LINEARS, ("score",), "decoder"),
        Family("mistral", _LLAMA_LINEARS, ("score",), "decoder"),
        Family("qwen2", _LLAMA_LINEARS, ("score",), "decoder"),
        Family("gemma", _LLAMA_LINEARS, ("score",), "decoder"),
        Family("gemma2", _LLAMA_LINEARS, ("score",), "decoder"),
        Family("phi", ("q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"), ("score",), "decoder"),
        Family("phi3", ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"), ("score",), "decoder"),
        Family("gpt2", ("c_attn", "c_proj", "c_fc"), ("score",), "decoder"),
    ]
}

# Head names of classification models in transformers, for architectures we do not list.
_KNOWN_HEADS = ("classifier", "score", "classification_head", "pre_classifier")


def family_for(model_type: str, model=None) -> Family:
    """The family of `model_type`; unknown types fall back to all-linear targets with a warning."""
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    logger.warning(
        "architecture %r has no peftkit family entry: targeting all linear layers ('all-linear') "
        "and guessing the head. Set adapter.target_modules to choose the layers yourself.",
        model_type,
    )
    heads = tuple(h for h in _KNOWN_HEADS if model is not None and hasattr(model, h)) or (
        "classifier",
        "score",
    )
    return Family(model_type, ("all-linear",), heads, "unknown")
