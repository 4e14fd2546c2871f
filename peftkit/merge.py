"""Merge a trained adapter into its base model's weights, and combine LoRA adapters into one.

Merging folds the adapter into the base with peft's `merge_and_unload`: LoRA, DoRA
and rsLoRA add their low-rank update to each target weight, IA3 rescales it. The
result is a plain transformers model: a classifier (labels in its config), or a
seq2seq / causal-lm model with its `generation_config.json`. Methods that add modules
or inputs instead of changing weights (bottleneck adapters, prefix and prompt tuning)
cannot merge.

An adapter trained on a quantized base (QLoRA) is never merged into 4-bit weights:
the base is loaded quantized exactly as in training and dequantized to float32
(`PreTrainedModel.dequantize`), so the merged weights are the dequantized weights
the adapter was trained against plus its update. `requantize` then saves the merged
model quantized to 4 bit again (bitsandbytes serialization).

Every merge is checked on a probe batch (`probe.py`: the run's validation texts, else
fixed sentences; label logits for a classifier, the vocabulary logits of a greedy
continuation for a generative model) against the adapter model, and refused beyond
the tolerance:

- float32 merge of an adapter trained on a float32 base: max |logit difference| <= 1e-4
  (only the order of the sums changes: measured below 2e-6 on the test models and MiniLM);
- lossy exports (quantized base, 16-bit `dtype`, `requantize`): max |probability
  difference| <= 0.05 against the adapter model as it was trained (4-bit base for
  QLoRA): bfloat16 moves MiniLM's logits by ~3e-2, and requantizing re-rounds the
  merged weights to the 4-bit grid, which can undo part of a small update (a toy model
  moved by 0.05 and is refused).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from pathlib import Path

import torch
from peft import PeftConfig, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, PreTrainedModel

from peftkit.config import ModelConfig
from peftkit.export import CARD_FILE, METADATA_FILE, ExportError, check_output
from peftkit.io import atomic_dir, write_json
from peftkit.model import load_generative_model, load_model
from peftkit.predict import find_adapter_dir, load_peft_model
from peftkit.probe import Probe, make_probe

logger = logging.getLogger(__name__)

MERGEABLE = ("lora", "qlora", "ia3")
NOT_MERGEABLE = {
    "bottleneck": "bottleneck adapters add layers (down and up projections around a non-linearity), "
    "which no change of the base weights can reproduce",
    "prefix": "prefix tuning adds trained key/value vectors to every attention layer, not a weight update",
    "prompt": "prompt tuning adds trained input embeddings, not a weight update",
}
LOGIT_TOLERANCE = 1e-4
PROBABILITY_TOLERANCE = 0.05
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_mergeable(method: str) -> None:
    """Refuse, before any work, an adapter method that cannot be merged into the base weights."""
    if method in MERGEABLE:
        return
    reason = NOT_MERGEABLE.get(method, "peftkit does not know how to merge it")
    raise ExportError(
        f"cannot merge a {method!r} adapter into the base model: {reason}. "
        "Use --adapter to export it as a standalone adapter"
    )


def export_merged(
    folder: Path,
    metadata: dict,
    record: dict | None,
    portable: dict,
    output: Path,
    license: str = "apache-2.0",
    max_shard_size: str = "2GB",
    dtype: str = "float32",
    requantize: bool = False,
) -> dict:
    """Merge the adapter in `folder`, check it, and write the merged model to `output`; return the check."""
    from peftkit.card import model_card

    check_mergeable(metadata["method"])
    if dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if requantize:
        _check_bitsandbytes()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    probe = make_probe(record, metadata, tokenizer)
    model, reference = merge_adapter(folder, metadata, tokenizer, probe)
    model = model.to(DTYPES[dtype])
    with atomic_dir(output) as tmp:
        if requantize:
            with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.merged-") as staging:
                model.save_pretrained(staging)
                model = _load_quantized(staging, metadata, tokenizer)
        lossy = quantization_of(metadata) is not None or dtype != "float32" or requantize
        check = compare(reference, probe.logits(model), lossy, probe)
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        tokenizer.save_pretrained(tmp)
        merged_meta = portable | {"format": "merged", "dtype": dtype, "requantized": requantize}
        write_json(tmp / METADATA_FILE, merged_meta | {"merge_check": check})
        peft_config = json.loads((folder / "adapter_config.json").read_text())
        card = model_card(
            merged_meta, record, merged=True, license=license, check=check, peft_config=peft_config
        )
        (tmp / CARD_FILE).write_text(card)
    return check


def merge_adapter(
    folder: Path, metadata: dict, tokenizer, probe: Probe
) -> tuple[PreTrainedModel, torch.Tensor]:
    """(the merged float32 model, the adapter model's logits on the probe)."""
    quantized = quantization_of(metadata) is not None
    if quantized:  # the reference is the model as trained: adapter on the quantized base
        reference_model = load_peft_model(_load_base(metadata, tokenizer, quantized=True), folder, metadata)
        reference = probe.reference(reference_model.eval())
        del reference_model
        base = _load_base(metadata, tokenizer, quantized=True).dequantize()
    else:
        base = _load_base(metadata, tokenizer, quantized=False)
    model = load_peft_model(base, folder, metadata).eval()  # with a stacked domain adapter, both merge
    if not quantized:
        reference = probe.reference(model)
    return model.merge_and_unload(), reference


def compare(reference: torch.Tensor, merged: torch.Tensor, lossy: bool, probe: Probe) -> dict:
    """The largest logit and probability differences; raise ExportError beyond the tolerance."""
    logit_diff = (merged - reference).abs().max().item()
    prob_diff = (merged.softmax(-1) - reference.softmax(-1)).abs().max().item()
    space, tolerance, value = (
        ("probability", PROBABILITY_TOLERANCE, prob_diff) if lossy else ("logit", LOGIT_TOLERANCE, logit_diff)
    )
    check = {
        "probe": probe.source,
        "texts": probe.size,
        "max_logit_diff": logit_diff,
        "max_probability_diff": prob_diff,
        **probe.agreement(reference, merged),
        "checked": f"max |{space} diff| <= {tolerance:g}",
    }
    if not value <= tolerance:  # also refuses NaN
        raise ExportError(
            f"the merged model differs from the adapter model: max |{space} diff| = {value:.3g} > {tolerance:g} "
            f"on {probe.size} probe texts ({probe.source}); nothing was written"
        )
    logger.info("merge check passed: %s", check)
    return check


def quantization_of(metadata: dict) -> dict | None:
    """The quantization the adapter was trained on: recorded in peftkit.json (4-bit defaults for old qlora)."""
    if metadata.get("quantization"):
        return metadata["quantization"]
    return {"mode": "4bit"} if metadata["method"] == "qlora" else None


def _load_base(metadata: dict, tokenizer, quantized: bool) -> PreTrainedModel:
    """The base model as training loaded it (float32, or quantized as recorded): a classifier with the labels
    in its config, or the seq2seq / causal-lm model with its LM head."""
    quantization = quantization_of(metadata) if quantized else None
    return _load(
        metadata["base_model"], metadata, tokenizer, quantization, metadata.get("base_model_revision")
    )


def _load_quantized(folder: str, metadata: dict, tokenizer) -> PreTrainedModel:
    """Reload a saved merged model with its linear layers quantized to 4 bit (the head stays full precision)."""
    return _load(folder, metadata, tokenizer, (quantization_of(metadata) or {}) | {"mode": "4bit"})


def _load(
    name_or_path: str, metadata: dict, tokenizer, quantization: dict | None, revision: str | None = None
) -> PreTrainedModel:
    options = {k: v for k, v in (quantization or {}).items() if k.startswith("bnb_4bit_")}
    config = ModelConfig(
        name_or_path=name_or_path,
        revision=revision,
        dtype="float32",
        quantization=quantization["mode"] if quantization else "none",
        **options,
    )
    task = metadata.get("task", "classification")
    if task == "classification":
        return load_model(config, metadata["labels"], tokenizer).model
    return load_generative_model(config, task, tokenizer).model


def _check_bitsandbytes() -> None:
    try:
        import bitsandbytes  # noqa: F401
    except Exception as err:  # missing, or without a working native library
        raise ExportError(
            f"--requantize needs bitsandbytes, which does not import ({type(err).__name__}: {err}): "
            "pip install 'peftkit[qlora]'"
        ) from None


# ---------------------------------------------------------------- combining LoRA adapters


def combine_adapters(
    paths: list[str | Path],
    weights: list[float],
    output: str | Path,
    combination_type: str = "cat",
) -> Path:
    """Combine LoRA adapters trained on one base into a new adapter folder: sum of weight_i x update_i.

    Built on peft's `add_weighted_adapter`; `cat` (the default) concatenates the
    low-rank factors, so the combined update is exactly the weighted sum (rank: the sum
    of the ranks); `svd`, `ties`, `dare_*`... are peft's approximations.

    Heads: peft refuses to combine adapters that each train the classifier head
    (`modules_to_save`), and every classification adapter does. The combined adapter
    keeps the head of the first adapter (a warning says so); the other heads are dropped,
    so the labels are the first adapter's.
    """
    folders = [find_adapter_dir(p) for p in paths]
    output = Path(output)
    for folder in folders:
        check_output(output, folder)
    metas = [json.loads((f / METADATA_FILE).read_text()) for f in folders]
    configs = [PeftConfig.from_pretrained(f) for f in folders]
    _check_combinable(folders, metas, configs, weights)
    first, first_meta = folders[0], metas[0]
    logger.warning(
        "combined adapter: keeps the classifier head of %s (labels %s); the heads of %s are dropped",
        first.name,
        first_meta["labels"],
        ", ".join(f.name for f in folders[1:]),
    )
    tokenizer = AutoTokenizer.from_pretrained(first)
    base = _load_base(first_meta, tokenizer, quantized=False)
    names = [f"adapter{i}" for i in range(len(folders))]
    model = None
    for name, folder, config in zip(names, folders, configs, strict=True):
        headless = dataclasses.replace(config, task_type=None, modules_to_save=None)
        if model is None:
            model = get_peft_model(base, headless, adapter_name=name)
        else:
            model.add_adapter(name, headless)
        lora_weights = {
            k: v for k, v in load_file(folder / "adapter_model.safetensors").items() if "lora_" in k
        }
        set_peft_model_state_dict(model, lora_weights, adapter_name=name)
    model.add_weighted_adapter(names, list(weights), "combined", combination_type=combination_type)
    head = {k: v for k, v in load_file(first / "adapter_model.safetensors").items() if "lora_" not in k}
    with tempfile.TemporaryDirectory() as staging, atomic_dir(output) as tmp:
        model.save_pretrained(staging, selected_adapters=["combined"])  # peft saves it under staging/combined
        combined = load_file(Path(staging) / "combined" / "adapter_model.safetensors")
        save_file(combined | head, tmp / "adapter_model.safetensors", metadata={"format": "pt"})
        config = model.peft_config["combined"]
        config.task_type, config.modules_to_save = configs[0].task_type, configs[0].modules_to_save
        config.inference_mode = True
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        sources = [{"adapter": f.name, "weight": w} for f, w in zip(folders, weights, strict=True)]
        write_json(
            tmp / METADATA_FILE,
            first_meta | {"combined_from": sources, "combination_type": combination_type},
        )
    return output


def _check_combinable(folders: list[Path], metas: list[dict], configs: list, weights: list[float]) -> None:
    if len(folders) < 2 or len(weights) != len(folders):
        raise ExportError(
            f"combine: give two or more adapters and one weight each (got {len(folders)} and {weights})"
        )
    for folder, meta, config in zip(folders, metas, configs, strict=True):
        if meta.get("stacked"):
            raise ExportError(
                f"combine: {folder.name} is stacked on a domain adapter (domain.dapt_mode: stack); "
                "stacked adapters do not combine"
            )
        if meta["method"] not in ("lora", "qlora"):
            raise ExportError(
                f"combine: {folder.name} is a {meta['method']!r} adapter; only LoRA adapters combine"
            )
        if config.use_dora or config.use_rslora:
            raise ExportError(
                f"combine: {folder.name} uses {'DoRA' if config.use_dora else 'rsLoRA'}; peft 0.21's "
                "add_weighted_adapter combines plain LoRA only (DoRA magnitudes do not add; rsLoRA gets the "
                "combined scale wrong)"
            )
    first = metas[0]
    for folder, meta in zip(folders[1:], metas[1:], strict=True):
        if (meta["base_model"], meta["model_type"]) != (first["base_model"], first["model_type"]):
            raise ExportError(
                f"combine: {folder.name} was trained on {meta['base_model']!r}, {folders[0].name} on "
                f"{first['base_model']!r}; adapters combine only on the same base model"
            )
        if len(meta["labels"]) != len(first["labels"]):
            raise ExportError(
                f"combine: {folder.name} has {len(meta['labels'])} labels, {folders[0].name} "
                f"{len(first['labels'])}; the combined adapter keeps the first's head, so the label counts must match"
            )
        if meta["labels"] != first["labels"]:
            logger.warning(
                "combine: %s has labels %s, the combined adapter uses %s (the first's)",
                folder.name,
                meta["labels"],
                first["labels"],
            )
