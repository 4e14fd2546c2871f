"""Continued pre-training on unlabelled target-domain text through a LoRA adapter (DAPT/TAPT; Gururangan et
al. 2020, "Don't Stop Pretraining").

The objective follows the family: masked-LM for encoders (BERT-class; transformers' collator, 80/10/10),
span corruption for encoder-decoders (T5-class; Raffel et al. 2020: spans of mean length 3 become sentinels,
the target spells them out) and next-token prediction for decoders (LLaMA-class). The LoRA adapter trains in
the same loop as task training (`train.train_loop`), is saved on its own, and is merged into the backbone
(`merge_and_unload`), which is saved as a plain transformers model folder for task training to start from.
With `domain.dapt_mode: stack` nothing is merged: `stack_domain_adapter` maps the adapter's backbone weights
onto the classifier, where it stays frozen under the task adapter (`adapters/stack.py`).
"""

from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    DataCollatorForLanguageModeling,
)

from peftkit.adapters.stack import STACKED, activate_stack, add_frozen_adapter
from peftkit.adapters.targets import resolve_target_modules
from peftkit.config import ConfigError, RunConfig
from peftkit.families import family_for

logger = logging.getLogger(__name__)

LM_CLASSES = {
    "encoder": AutoModelForMaskedLM,
    "encoder-decoder": AutoModelForSeq2SeqLM,
    "decoder": AutoModelForCausalLM,
}
"""Family kind -> the language-model class continued pre-training trains."""


# ---------------------------------------------------------------- objectives


def span_corruption(
    ids: list[int],
    density: float,
    sentinels: list[int],
    eos: int | None,
    rng: random.Random,
    mean_span: float = 3.0,
) -> tuple[list[int], list[int]]:
    """(inputs, targets) of T5's span corruption: round(density x n) tokens in spans of mean length `mean_span`.

    Each noise span becomes one sentinel in the inputs; the targets are each sentinel followed by its span.
    A trailing `eos` is kept out of the noise and ends both sequences.
    """
    body = ids[:-1] if eos is not None and ids and ids[-1] == eos else list(ids)
    tail = [eos] if eos is not None else []
    n = len(body)
    if n < 2:
        return body + tail, body + tail
    noise = min(max(1, round(n * density)), n - 1)
    spans = max(1, min(round(noise / mean_span), noise, n - noise, len(sentinels)))
    noise_lengths, keep_lengths = _split(noise, spans, rng), _split(n - noise, spans, rng)
    inputs, targets, position = [], [], 0
    for k, (keep, drop) in enumerate(zip(keep_lengths, noise_lengths, strict=True)):
        inputs += body[position : position + keep] + [sentinels[k]]
        targets += [sentinels[k]] + body[position + keep : position + keep + drop]
        position += keep + drop
    return inputs + tail, targets + tail


def _split(total: int, parts: int, rng: random.Random) -> list[int]:
    """`parts` positive integers summing to `total`, uniformly among such splits."""
    cuts = sorted(rng.sample(range(1, total), parts - 1))
    return [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]


def sentinel_ids(tokenizer, count: int = 100) -> list[int]:
    """T5's `<extra_id_k>` ids; tokenizers without them use the top `count` ids of the vocabulary, as T5 does."""
    ids = [tokenizer.convert_tokens_to_ids(f"<extra_id_{k}>") for k in range(count)]
    if all(i is not None and i != tokenizer.unk_token_id for i in ids):
        return ids
    logger.warning("tokenizer has no <extra_id_k> sentinels: span corruption uses the top vocabulary ids")
    return [len(tokenizer) - 1 - k for k in range(min(count, len(tokenizer) // 2))]


@dataclass
class SpanCorruptionCollator:
    """Batches for T5-class continued pre-training: corrupted inputs, sentinel targets (-100 on padding)."""

    tokenizer: object
    density: float = 0.15
    seed: int = 0

    def __post_init__(self):
        self.rng = random.Random(self.seed)
        self.sentinels = sentinel_ids(self.tokenizer)

    def __call__(self, rows: list[dict]) -> dict:
        eos = self.tokenizer.eos_token_id
        pairs = [span_corruption(r["input_ids"], self.density, self.sentinels, eos, self.rng) for r in rows]
        pad = self.tokenizer.pad_token_id
        return {
            "input_ids": _pad([p[0] for p in pairs], pad),
            "attention_mask": _pad([[1] * len(p[0]) for p in pairs], 0),
            "labels": _pad([p[1] for p in pairs], -100),
        }


def _pad(sequences: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in sequences)
    return torch.tensor([s + [value] * (width - len(s)) for s in sequences])


def pretraining_collator(kind: str, tokenizer, mlm_probability: float, seed: int):
    """The collator of the family kind's objective."""
    if kind == "encoder":
        if tokenizer.mask_token is None:
            raise ConfigError("domain.method: dapt (masked LM) needs a tokenizer with a mask token")
        return DataCollatorForLanguageModeling(
            tokenizer, mlm=True, mlm_probability=mlm_probability, seed=seed
        )
    if kind == "encoder-decoder":
        return SpanCorruptionCollator(tokenizer, mlm_probability, seed)
    if kind == "decoder":
        return DataCollatorForLanguageModeling(tokenizer, mlm=False)
    raise ConfigError(f"domain.method: dapt has no pre-training objective for model kind {kind!r}")


# ---------------------------------------------------------------- continued pre-training


@dataclass
class PretrainResult:
    base_dir: Path | None
    """The merged backbone (a plain transformers folder, with the tokenizer): the next stage's model (None when
    not merged)."""
    adapter_dir: Path
    """The continued pre-training LoRA adapter alone (on the language model)."""
    losses: list[float]
    """Pre-training loss at each logging step."""


def load_language_model(path: str, kind: str):
    return LM_CLASSES[kind].from_pretrained(path)


def lora_on_backbone(lm, config: RunConfig, family) -> torch.nn.Module:
    """A LoRA adapter (the recipe's rank and targets) on the backbone; a BERT-style MLM head transform trains fully."""
    a = config.adapter
    names = resolve_target_modules(lm, family, a.target_modules)
    prefix = lm.base_model_prefix
    if names != "all-linear" and hasattr(
        lm, prefix
    ):  # only the backbone: the LM head (BERT's has a `dense`) stays out
        names = rf"^{prefix}\..*\.({'|'.join(names)})$"
    transform = ["transform"] if any(n.endswith(".transform") for n, _ in lm.named_modules()) else None
    peft_config = LoraConfig(
        r=a.r,
        lora_alpha=a.lora_alpha,
        lora_dropout=a.lora_dropout,
        target_modules=names,
        modules_to_save=transform,
    )
    model = get_peft_model(lm, peft_config)
    for name, param in model.named_parameters():
        if name.endswith("predictions.bias"):  # BERT's output bias: the word frequencies of the new domain
            param.requires_grad_(True)
    return model


def continued_pretraining(
    config: RunConfig, texts: list[str], tokenizer, output_dir: Path, merge: bool = True
) -> PretrainResult:
    """Train a LoRA adapter on `texts` with the family's objective, save it to `output_dir/adapter` and (`merge`)
    the backbone with it merged to `output_dir/base`."""
    from peftkit.model import resolve_model_path
    from peftkit.train import train_loop, use_cpu_backend

    dc, t = config.domain, config.training
    path = resolve_model_path(config.model.name_or_path)
    family = family_for(AutoConfig.from_pretrained(path).model_type)
    if family.kind not in LM_CLASSES:
        raise ConfigError(
            f"domain.method: dapt does not know the language-model class of {family.name!r} models"
        )
    collator = pretraining_collator(family.kind, tokenizer, dc.mlm_probability, t.seed)
    encoded = tokenizer(texts, truncation=True, max_length=config.data.max_length)
    rows = [{k: encoded[k][i] for k in encoded.keys()} for i in range(len(texts))]
    loader = DataLoader(
        rows,
        batch_size=t.batch_size,
        shuffle=True,
        collate_fn=collator,
        generator=torch.Generator().manual_seed(t.seed),
    )
    set_seed(t.seed)  # the LoRA init: else the domain adapter depends on what drew random numbers before
    model = lora_on_backbone(load_language_model(path, family.kind), config, family)
    settings = dataclasses.replace(
        t, max_steps=dc.pretrain_steps, learning_rate=dc.pretrain_learning_rate, eval_every_steps=0,
        save_every_steps=0, layerwise_lr_decay=None, gradient_accumulation_steps=1,
    )  # fmt: skip
    accelerator = Accelerator(cpu=use_cpu_backend())
    model, loader = accelerator.prepare(model, loader)
    result = train_loop(model, loader, settings, accelerator)
    model = accelerator.unwrap_model(model)
    adapter_dir, base_dir = output_dir / "adapter", output_dir / "base" if merge else None
    model.save_pretrained(adapter_dir)
    if base_dir is not None:
        save_merged_backbone(model.merge_and_unload(), path, base_dir)
        tokenizer.save_pretrained(base_dir)
    logger.info("continued pre-training: loss %s -> %s", result.losses[:1], result.losses[-1:])
    return PretrainResult(base_dir=base_dir, adapter_dir=adapter_dir, losses=result.losses)


def save_merged_backbone(merged, original_path: str, base_dir: Path) -> None:
    """Save the original checkpoint's backbone (`AutoModel`, with its pooler) holding the merged weights."""
    backbone = AutoModel.from_pretrained(original_path)
    prefix = merged.base_model_prefix + "."
    weights = {k.removeprefix(prefix): v for k, v in merged.state_dict().items()}
    state = backbone.state_dict()
    shared = [k for k in state if k in weights and weights[k].shape == state[k].shape]
    if len(shared) < len(state) // 2:
        raise RuntimeError(
            f"merged language model matches only {len(shared)} of {len(state)} backbone weights"
        )
    backbone.load_state_dict({k: weights[k] for k in shared}, strict=False)
    backbone.save_pretrained(base_dir)


# ---------------------------------------------------------------- stacking (dapt_mode: stack)


def stack_domain_adapter(model: PeftModel, adapter_dir: Path) -> None:
    """Put the continued pre-training adapter in `adapter_dir` under `model`'s task adapter, frozen, both active."""
    config, weights = classifier_weights(model.get_base_model(), adapter_dir)
    add_frozen_adapter(model, STACKED, config, weights)
    activate_stack(model)
    logger.info("dapt_mode stack: domain adapter on %d modules, frozen", len(config.target_modules))


def classifier_weights(classifier, adapter_dir: Path) -> tuple[LoraConfig, dict[str, torch.Tensor]]:
    """The language model's LoRA adapter as one on `classifier`: its config targeting the classifier's module names,
    and its backbone weights keyed by them (as peft saves them). LM-head modules are left out.

    The language model and the classifier share the family's `base_model_prefix` (BERT's `bert.`, LLaMA's
    `model.`, T5's `transformer.`, which T5's language model lacks). Raises ValueError when a backbone
    module of the adapter has no counterpart in the classifier, or when nothing maps.
    """
    config = LoraConfig.from_pretrained(adapter_dir)
    prefix = classifier.base_model_prefix
    backbone, modules = getattr(classifier, prefix), dict(classifier.named_modules())
    weights, targets = {}, set()
    for key, value in load_file(adapter_dir / "adapter_model.safetensors").items():
        if ".lora_" not in key:
            continue  # the MLM head's transform, trained in full: not part of the backbone
        name, _, rest = key.removeprefix("base_model.model.").partition(".lora_")
        inner = name.removeprefix(f"{prefix}.")
        if f"{prefix}.{inner}" not in modules:
            if hasattr(backbone, inner.split(".")[0]):
                raise ValueError(f"domain adapter module {name!r} has no counterpart in the classifier")
            continue  # an LM-head module
        weights[f"base_model.model.{prefix}.{inner}.lora_{rest}"] = value
        targets.add(f"{prefix}.{inner}")
    if not targets:
        raise ValueError(f"the domain adapter in {adapter_dir} adapts no module of the classifier's backbone")
    config.target_modules, config.task_type = targets, None
    return config, weights
