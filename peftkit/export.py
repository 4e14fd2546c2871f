"""Save a trained classifier as a standalone adapter folder that plain peft can load.

The folder holds `adapter_model.safetensors` (adapter and classifier head),
`adapter_config.json`, the tokenizer and `peftkit.json` (labels, base model and
the data columns the model was trained on). It is written atomically.
"""

from __future__ import annotations

from pathlib import Path

from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from peftkit import __version__
from peftkit.config import RunConfig
from peftkit.io import atomic_dir, write_json

METADATA_FILE = "peftkit.json"


def adapter_metadata(config: RunConfig, labels: list[str], model: PeftModel) -> dict:
    base_config = model.get_base_model().config
    return {
        "peftkit_version": __version__,
        "task": config.task,
        "method": config.adapter.method,
        "base_model": config.model.name_or_path,
        "base_model_revision": config.model.revision,
        "model_type": base_config.model_type,
        "labels": labels,
        "pad_token_id": base_config.pad_token_id,
        "data": {
            "text_column": config.data.text_column,
            "text_pair_column": config.data.text_pair_column,
            "label_column": config.data.label_column,
            "max_length": config.data.max_length,
        },
    }


def save_adapter(
    model: PeftModel, tokenizer: PreTrainedTokenizerBase, metadata: dict, folder: str | Path
) -> Path:
    """Write the adapter folder atomically and return its path."""
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / METADATA_FILE, metadata)
    return Path(folder)
