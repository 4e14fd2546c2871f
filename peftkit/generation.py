"""Evaluation by generation for the generative tasks: greedy decoding, exact match and ROUGE-L.

`evaluate_generative` reports the teacher-forced loss on the references and, from greedy generations,
`accuracy` (exact match after lower-casing and collapsing whitespace: the metric of classification as
generation) and `rouge_l` (ROUGE-L F1 on lower-cased whitespace tokens, Lin 2004: the longest common
subsequence of prediction and reference, as precision/recall F1; for free text).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from peftkit.templates import IGNORE_INDEX, render_text


@dataclass
class GenerationSet:
    """What evaluation by generation needs for one split: prompt token ids and the reference texts."""

    prompts: list[list[int]]
    references: list[str]


def normalize(text: str) -> str:
    return " ".join(text.lower().split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def _lcs_length(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 on lower-cased whitespace tokens (1.0 when both are empty)."""
    p, r = normalize(prediction).split(), normalize(reference).split()
    if not p or not r:
        return float(p == r)
    lcs = _lcs_length(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


@torch.no_grad()
def generate_ids(
    model,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    batch_size: int,
    max_new_tokens: int,
) -> list[list[int]]:
    """Greedy continuations of the tokenized `prompts`: the new token ids, up to and including the first EOS."""
    decoder_only = not model.config.is_encoder_decoder
    device = next(model.parameters()).device
    stop = _eos_ids(model, tokenizer)
    continuations = []
    for start in range(0, len(prompts), batch_size):
        chunk = [{"input_ids": ids} for ids in prompts[start : start + batch_size]]
        # decoder-only models continue from the last position: pad on the left
        batch = tokenizer.pad(chunk, padding_side="left" if decoder_only else "right", return_tensors="pt")
        batch = {k: v.to(device) for k, v in batch.items()}
        output = model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
        # an encoder-decoder output starts with the decoder start token
        new = output[:, batch["input_ids"].shape[1] :] if decoder_only else output[:, 1:]
        continuations += [_until_eos(row.tolist(), stop) for row in new]
    return continuations


def _eos_ids(model, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos) if isinstance(eos, list) else {eos}
    return {i for i in ids | {tokenizer.eos_token_id} if i is not None}


def _until_eos(ids: list[int], stop: set[int]) -> list[int]:
    """`ids` up to and including the first EOS: what follows is padding of a finished sequence."""
    for i, token in enumerate(ids):
        if token in stop:
            return ids[: i + 1]
    return ids


def generate(
    model,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    batch_size: int,
    max_new_tokens: int,
) -> list[str]:
    """Greedy continuations of the tokenized `prompts`, decoded without special tokens."""
    ids = generate_ids(model, tokenizer, prompts, batch_size, max_new_tokens)
    return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]


@torch.no_grad()
def token_losses(model, dataloader: DataLoader, accelerator: Accelerator) -> float:
    """Mean cross-entropy per target token (the training loss, over the whole split)."""
    decoder_only = not accelerator.unwrap_model(model).config.is_encoder_decoder
    total = count = 0.0
    for batch in dataloader:
        logits = model(**batch).logits.float()
        labels = batch["labels"]
        if decoder_only:  # token t predicts token t + 1
            logits, labels = logits[:, :-1], labels[:, 1:]
        losses = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none"
        )
        sums, counts = accelerator.gather_for_metrics((losses.sum(-1), (labels != IGNORE_INDEX).sum(-1)))
        total += sums.sum().item()
        count += counts.sum().item()
    return total / max(count, 1)


def evaluate_generative(
    model,
    dataloader: DataLoader,
    generation: GenerationSet,
    tokenizer: PreTrainedTokenizerBase,
    accelerator: Accelerator,
    batch_size: int,
    max_new_tokens: int,
) -> dict:
    """Loss on `dataloader` and generation metrics on `generation`, each process generating for its share."""
    was_training = model.training
    model.eval()
    loss = token_losses(model, dataloader, accelerator)
    with accelerator.split_between_processes(list(range(len(generation.prompts)))) as share:
        prompts = [generation.prompts[i] for i in share]
        mine = generate(accelerator.unwrap_model(model), tokenizer, prompts, batch_size, max_new_tokens)
    predictions = gather_object(mine) if accelerator.num_processes > 1 else mine
    model.train(was_training)
    pairs = list(zip(predictions, generation.references, strict=True))
    return {
        "accuracy": sum(exact_match(p, r) for p, r in pairs) / len(pairs),
        "rouge_l": sum(rouge_l(p, r) for p, r in pairs) / len(pairs),
        "loss": loss,
        "samples": len(pairs),
    }


@torch.no_grad()
def continuation_logits(model, prompt: list[int], continuation: list[int]) -> torch.Tensor:
    """The logits with which `model` scores each token of `continuation` after `prompt` (teacher forced):
    one row per continuation token, over the vocabulary."""
    device = next(model.parameters()).device
    if model.config.is_encoder_decoder:
        start = model.generation_config.decoder_start_token_id
        start = model.config.decoder_start_token_id if start is None else start
        inputs = {
            "input_ids": torch.tensor([prompt], device=device),
            "decoder_input_ids": torch.tensor([[start, *continuation[:-1]]], device=device),
        }
        return model(**inputs).logits[0].float().cpu()
    logits = model(input_ids=torch.tensor([prompt + continuation[:-1]], device=device)).logits[0]
    return logits[len(prompt) - 1 :].float().cpu()  # position t predicts token t + 1


# ---------------------------------------------------------------- a trained run, for the CLI


def prompt_ids(tokenizer: PreTrainedTokenizerBase, metadata: dict, texts: list[str]) -> list[list[int]]:
    """Token ids a model trained for `metadata["task"]` continues: a causal-lm text is one user turn in the
    tokenizer's chat template (as evaluation renders prompts); a seq2seq text is the input as is, truncated."""
    if metadata["task"] == "causal-lm":
        turns = [[{"role": "user", "content": text}] for text in texts]
        return [
            tokenizer(render_text(tokenizer, t, True), add_special_tokens=False)["input_ids"] for t in turns
        ]
    max_length = metadata["data"]["max_length"]
    return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]


class Generator:
    """A seq2seq or causal-lm model (a base with its trained adapter, or a merged export), ready to answer texts
    (`peftkit generate`)."""

    def __init__(self, model, tokenizer: PreTrainedTokenizerBase, metadata: dict):
        self.model, self.tokenizer, self.metadata = model, tokenizer, metadata

    def prompts(self, texts: list[str]) -> list[list[int]]:
        return prompt_ids(self.tokenizer, self.metadata, texts)

    def generate(self, texts: list[str], max_new_tokens: int = 32, batch_size: int = 16) -> list[str]:
        return generate(self.model, self.tokenizer, self.prompts(texts), batch_size, max_new_tokens)


def load_generator(path: str | Path, device: str | None = None) -> Generator:
    """Load a generative run, adapter folder or export (a folder or a Hub id): the base model named in its
    metadata with its adapter, or the merged model itself."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from peftkit.adapters import prepare_base
    from peftkit.config import ModelConfig
    from peftkit.model import quantized_loading, resolve_model_path
    from peftkit.predict import find_adapter_dir, is_merged_model, local_folder

    folder = local_folder(path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if is_merged_model(folder):
        return _load_merged_generator(folder, device)
    folder = find_adapter_dir(folder)
    metadata = _generative_metadata(folder, path)
    quantization = metadata.get("quantization") or {}
    model_config = ModelConfig(**{k: v for k, v in quantization.items() if k.startswith("bnb_4bit")})
    base = _auto_class(metadata).from_pretrained(
        resolve_model_path(metadata["base_model"]),
        revision=metadata.get("base_model_revision"),
        **quantized_loading(model_config, quantization.get("mode", "none"), ["lm_head"]),
    )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if len(tokenizer) > base.get_input_embeddings().num_embeddings:
        base.resize_token_embeddings(len(tokenizer))
    prepare_base(base, metadata.get("method", ""))
    model = PeftModel.from_pretrained(base, folder).eval()
    if not quantization:  # bitsandbytes places quantized weights itself
        model = model.to(device)
    return Generator(model, tokenizer, metadata)


def _load_merged_generator(folder: Path, device: str) -> Generator:
    from transformers import AutoTokenizer

    from peftkit.predict import load_merged_model

    metadata = _generative_metadata(folder, folder)
    model = load_merged_model(_auto_class(metadata), folder, device)
    return Generator(model, AutoTokenizer.from_pretrained(folder), metadata)


def _generative_metadata(folder: Path, path: str | Path) -> dict:
    from peftkit.export import METADATA_FILE
    from peftkit.model import GENERATIVE_CLASSES
    from peftkit.predict import AdapterFolderError

    metadata = json.loads((folder / METADATA_FILE).read_text())
    if metadata.get("task") not in GENERATIVE_CLASSES:
        raise AdapterFolderError(
            f"{str(path)!r} was trained for {metadata.get('task')!r}, not generation: use peftkit predict"
        )
    return metadata


def _auto_class(metadata: dict):
    from peftkit.model import GENERATIVE_CLASSES

    return GENERATIVE_CLASSES[metadata["task"]][0]
