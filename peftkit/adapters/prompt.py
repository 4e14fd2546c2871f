"""Prompt tuning (Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning") through peft:
`num_virtual_tokens` trained input embeddings put before every input.

Encoder classifiers (BERT-class) only: see `adapters.UNSUPPORTED` for why T5- and LLaMA-class
classifiers cannot take it. The prompts start random; prompt tuning wants a high learning rate (~1e-2 and up).
"""

from __future__ import annotations

import torch
from peft import PromptTuningConfig, TaskType

from peftkit.adapters.targets import head_modules
from peftkit.config import AdapterConfig
from peftkit.families import Family


def build_prompt_config(config: AdapterConfig, model: torch.nn.Module, family: Family) -> PromptTuningConfig:
    text_config = model.config.get_text_config()
    return PromptTuningConfig(
        task_type=TaskType.SEQ_CLS,
        num_virtual_tokens=config.num_virtual_tokens,
        # the prompts join the token embeddings, narrower than the hidden size in ELECTRA and ALBERT; and peft
        # 0.21.2 reads the sizes from config keys that DistilBERT names differently (`dim`, `n_heads`)
        token_dim=model.get_input_embeddings().embedding_dim,
        num_layers=text_config.num_hidden_layers,
        num_attention_heads=text_config.num_attention_heads,
        modules_to_save=head_modules(model, family, config.modules_to_save),
    )
