"""Save a trained adapter, and export it for sharing: a standalone adapter or a merged model, with a card.

`save_adapter` (called by `api.finetune`) writes the run's adapter folder:
`adapter_model.safetensors` (the adapter, and a classifier's head), `adapter_config.json`,
the tokenizer (with a causal-lm run's chat template) and `peftkit.json` (task, labels or
label words, base model, data columns, quantization).

`export_model` turns a run or adapter folder of any task (classification, seq2seq,
causal-lm) into a folder to share, written atomically, with a model card (`card.py`)
and only portable names in it (no path of this machine):

- `merged=False`: the adapter as above; plain peft loads it on the stated base
  (`PeftModel.from_pretrained`, or `AutoPeftModelForSeq2SeqLM` / `AutoPeftModelForCausalLM`).
- `merged=True`: the adapter folded into the base weights (`merge.py`); plain
  transformers loads it (a classifier's labels in its config, a generative model's
  `generation_config.json` beside it).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from peftkit import __version__
from peftkit.adapters import quantization_for
from peftkit.adapters.stack import STACKED
from peftkit.config import RunConfig
from peftkit.io import atomic_dir, write_json
from peftkit.model import bundled_hub_id

logger = logging.getLogger(__name__)

METADATA_FILE = "peftkit.json"
RUN_RECORD = "run.json"
CARD_FILE = "README.md"


class ExportError(ValueError):
    """An export that cannot be done (or failed its check); the message says why and what to do."""


@dataclass
class ExportResult:
    output_dir: Path
    files: list[str]
    merge_check: dict | None = None
    """For merged exports: how closely the merged model reproduces the adapter model (see `merge.py`)."""
    pushed: dict = field(default_factory=dict)
    """With `push_to_hub`: the repo id, the files sent and the repo URL."""


def adapter_metadata(config: RunConfig, labels: list[str], model: PeftModel) -> dict:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # full fine-tuning: no peft
    base_config = base.config
    quantization = quantization_for(config.model, config.adapter.method)
    stacked = {"stacked": STACKED} if config.domain.stack_adapter else {}  # adapters/stack.py
    return stacked | {
        "peftkit_version": __version__,
        "task": config.task,
        "method": config.adapter.method,
        "base_model": config.model.name_or_path,
        "base_model_revision": config.model.revision,
        "model_type": base_config.model_type,
        "labels": labels,
        "pad_token_id": base_config.pad_token_id,
        "data": data_fields(config),
        "quantization": None
        if quantization == "none"
        else {
            "mode": quantization,
            "bnb_4bit_quant_type": config.model.bnb_4bit_quant_type,
            "bnb_4bit_use_double_quant": config.model.bnb_4bit_use_double_quant,
            "bnb_4bit_compute_dtype": config.model.bnb_4bit_compute_dtype,
        },
    }


def data_fields(config: RunConfig) -> dict:
    """The data columns and lengths that loading (and a card) need, for `config.task`."""
    d = config.data
    fields = {
        "text_column": d.text_column,
        "text_pair_column": d.text_pair_column,
        "label_column": d.label_column,
        "max_length": d.max_length,
    }
    if config.task == "seq2seq":
        fields |= {"target_column": d.target_column, "max_target_length": d.max_target_length}
    elif config.task == "causal-lm":
        fields |= {
            "prompt_column": d.prompt_column,
            "response_column": d.response_column,
            "messages_column": d.messages_column,
            "chat_template": d.chat_template,
        }
    return fields


def save_adapter(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    metadata: dict,
    folder: str | Path,
    state_dict: dict | None = None,
) -> Path:
    """Write the adapter folder atomically and return its path.

    `state_dict`: the model's full state dict when its own parameters are shards (FSDP, DeepSpeed).
    """
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        for weights in tmp.glob("*.safetensors"):
            check_adapter_weights(weights)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / METADATA_FILE, metadata)
    return Path(folder)


def check_adapter_weights(path: Path) -> None:
    """Refuse an adapter file with no tensors or with empty ones.

    Sharded models (ZeRO-3, FSDP) that were not gathered before saving write
    `torch.Size([0])` placeholders: such a file would load and silently do nothing.
    """
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        shapes = {key: f.get_slice(key).get_shape() for key in f.keys()}
    empty = sorted(key for key, shape in shapes.items() if 0 in shape)
    if not shapes or empty:
        raise ExportError(
            f"refusing to save an adapter with no data: {len(empty)} of {len(shapes)} tensors are empty "
            f"(e.g. {empty[:3]}); under ZeRO-3/FSDP the weights must be gathered before saving"
        )


# ---------------------------------------------------------------- export for sharing


def export_model(
    path: str | Path,
    output: str | Path,
    merged: bool = False,
    *,
    base_model_id: str | None = None,
    license: str = "apache-2.0",
    max_shard_size: str = "2GB",
    dtype: str = "float32",
    requantize: bool = False,
    push_to_hub: str | None = None,
    private: bool = False,
) -> ExportResult:
    """Export the run or adapter folder `path` to `output` as a standalone adapter or (`merged`) a merged model.

    `base_model_id` names the base model's Hub id in the card and configs (needed when
    the run used a local folder). Merged exports are checked against the adapter model
    and refused beyond the tolerance (`merge.py`); `dtype`, `requantize` and
    `max_shard_size` apply to them only. `push_to_hub` uploads the result (`hub.push_to_hub`).
    """
    from peftkit.predict import find_adapter_dir  # predict loads what this module writes

    full = full_model_dir(path)
    if full is not None:  # full fine-tuning: already a plain transformers model, copied with a card
        if merged or dtype != "float32" or requantize:
            raise ExportError(
                "a fully fine-tuned model has no adapter to merge: drop --merged, --dtype, --requantize"
            )
    folder = full or find_adapter_dir(path)
    metadata = json.loads((folder / METADATA_FILE).read_text())
    record = load_run_record(folder)
    output = Path(output)
    check_output(output, folder)
    if not merged and (dtype != "float32" or requantize):
        raise ExportError("--dtype and --requantize apply to merged exports (--merged), not to --adapter")
    if metadata.get("stacked") and not merged:
        raise ExportError(
            f"{str(folder)!r} holds a task adapter stacked on a domain adapter (domain.dapt_mode: stack), which "
            "plain peft does not load as one adapter (each added classifier adapter brings its own head): "
            "export --merged (both updates folded into the base), or share the run folder for peftkit"
        )
    portable = portable_metadata(metadata, base_model_id) | prompt_format(folder, metadata)
    if full is not None:
        check = None
        _export_full(folder, record, portable, output, license)
    elif merged:
        from peftkit.merge import export_merged

        check = export_merged(
            folder, metadata, record, portable, output, license, max_shard_size, dtype, requantize
        )
    else:
        check = None
        _export_adapter(folder, metadata, record, portable, output, license)
    result = ExportResult(output, sorted(p.name for p in output.iterdir()), check)
    logger.info(
        "exported %s to %s: %s", "merged model" if merged else "adapter", output, ", ".join(result.files)
    )
    if push_to_hub:
        from peftkit import hub

        result.pushed = hub.push_to_hub(output, push_to_hub, private=private)
    return result


def _export_adapter(
    folder: Path, metadata: dict, record: dict | None, portable: dict, output: Path, license: str
) -> None:
    from peftkit.card import model_card

    with atomic_dir(output) as tmp:
        for file in folder.iterdir():
            if file.is_file() and file.name != CARD_FILE:  # peft writes a placeholder card; ours replaces it
                shutil.copy2(file, tmp / file.name)
        config = json.loads((tmp / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = portable["base_model_id"]
        write_json(tmp / "adapter_config.json", config)
        write_json(tmp / METADATA_FILE, portable | {"format": "adapter"})
        card = model_card(portable, record, merged=False, license=license, peft_config=config)
        (tmp / CARD_FILE).write_text(card)


def full_model_dir(path: str | Path) -> Path | None:
    """The model folder of a full fine-tuning run (the run folder or its `model/`), or None."""
    for folder in (Path(path) / "model", Path(path)):
        meta = folder / METADATA_FILE
        if meta.is_file() and json.loads(meta.read_text()).get("format") == "full":
            return folder
    return None


def _export_full(folder: Path, record: dict | None, portable: dict, output: Path, license: str) -> None:
    from peftkit.card import model_card

    with atomic_dir(output) as tmp:
        for file in folder.iterdir():
            if file.is_file() and file.name != CARD_FILE:
                shutil.copy2(file, tmp / file.name)
        write_json(tmp / METADATA_FILE, portable | {"format": "full"})
        (tmp / CARD_FILE).write_text(model_card(portable, record, merged=True, license=license))


def prompt_format(folder: Path, metadata: dict) -> dict:
    """For a causal-lm adapter: how its tokenizer renders a prompt (`templates.describe_template`), for the card
    and the export's peftkit.json; nothing for other tasks."""
    if metadata.get("task") != "causal-lm":
        return {}
    from transformers import AutoTokenizer

    from peftkit.templates import describe_template

    return {"prompt": describe_template(AutoTokenizer.from_pretrained(folder))}


def load_run_record(adapter_dir: Path) -> dict | None:
    """The run's `run.json` (config, metrics, versions) beside a run's `adapter/` folder, or None."""
    file = adapter_dir.parent / RUN_RECORD
    return json.loads(file.read_text()) if file.is_file() else None


def portable_metadata(metadata: dict, base_model_id: str | None = None) -> dict:
    """`metadata` for sharing: the base model by a name that means something on another machine.

    `base_model` stays loadable by peftkit (`bundled:NAME` or a Hub id); `base_model_id` is the Hub id
    for cards and `adapter_config.json`. A local folder is replaced by `base_model_id` or its folder name.
    """
    base = metadata["base_model"]
    if base.startswith("bundled:"):
        hub_id = base_model_id or bundled_hub_id(base)
        return metadata | {"base_model_id": hub_id}
    if is_local_path(base):
        name = base_model_id or Path(base).name
        if not base_model_id:
            logger.warning(
                "the base model is a local folder; the export names it only %r. Pass --base-model-id ORG/NAME "
                "(its Hub id) so that others can find it; load it here with --base-model %s",
                name,
                base,
            )
        return metadata | {"base_model": name, "base_model_id": name}
    return metadata | {"base_model_id": base_model_id or base}


def is_local_path(name: str) -> bool:
    path = Path(name).expanduser()
    return path.is_absolute() or path.exists() or name.startswith((".", "~"))


def check_output(output: Path, source: Path) -> None:
    """Refuse an output that would replace the source or a folder peftkit did not write."""
    out, src = output.resolve(), source.resolve()
    if out == src or src.is_relative_to(out) or out.is_relative_to(src):
        raise ExportError(f"--output {str(output)!r} overlaps the folder being exported ({str(source)!r})")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_export(out))):
        raise ExportError(
            f"--output {str(output)!r} exists and is not an earlier peftkit export; choose a new folder"
        )


def is_export(folder: Path) -> bool:
    """Whether `folder` was written by `export_model` (its peftkit.json says which format)."""
    meta = folder / METADATA_FILE
    return meta.is_file() and "format" in json.loads(meta.read_text())
