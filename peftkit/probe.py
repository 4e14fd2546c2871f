"""The probe batch a merge is checked on (`merge.py`): the same inputs through the adapter model and the
merged model, as rows of logits to compare, for each task.

- classification: one row per probe text, over the labels.
- seq2seq / causal-lm: the adapter model writes a greedy continuation of each probe prompt (`NEW_TOKENS`
  tokens at most, up to EOS); each model then scores prompt + continuation in one teacher-forced pass, one
  row per continuation token, over the vocabulary. The merged model generates the same greedy tokens
  exactly when its argmax is the adapter model's token on every row of a prompt.

Probe texts are the first `PROBE_SIZE` validation texts of the run (its input column: the text, or a
causal-lm run's prompts, rendered as `peftkit generate` renders them), else fixed sentences.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from transformers import PreTrainedTokenizerBase

from peftkit.data import DataError, read_file
from peftkit.generation import continuation_logits, generate_ids, prompt_ids
from peftkit.predict import Classifier

logger = logging.getLogger(__name__)

PROBE_SIZE = 32
NEW_TOKENS = 8
GENERATION_BATCH_SIZE = 8
FIXED_PROBES = [
    "I loved every minute of it.",
    "This was a complete waste of money.",
    "The delivery arrived two days late and the box was damaged.",
    "How do I reset my password?",
    "The new update made everything slower.",
    "Great service, friendly staff, would come back.",
    "It is neither good nor bad, just average.",
    "My card was charged twice this month.",
]


class Probe(Protocol):
    source: str
    """Where the probe texts come from, for the check and the card."""

    @property
    def size(self) -> int:
        """How many probe texts."""

    def reference(self, model) -> torch.Tensor:
        """The adapter model's logits (fixing what the comparison depends on: a generative probe's tokens)."""

    def logits(self, model) -> torch.Tensor:
        """`model`'s logits on the probe, row for row like `reference`."""

    def agreement(self, reference: torch.Tensor, merged: torch.Tensor) -> dict:
        """How often the merged model decides as the adapter model did: labels, or greedy tokens."""


@dataclass
class ClassifierProbe:
    tokenizer: PreTrainedTokenizerBase
    metadata: dict
    texts: list[str]
    pairs: list[str] | None
    source: str

    @property
    def size(self) -> int:
        return len(self.texts)

    def reference(self, model) -> torch.Tensor:
        return self.logits(model)

    def logits(self, model) -> torch.Tensor:
        classifier = Classifier(model, self.tokenizer, self.metadata, torch.device("cpu"))
        return classifier.logits(self.texts, self.pairs)

    def agreement(self, reference: torch.Tensor, merged: torch.Tensor) -> dict:
        return {"same_label_fraction": (merged.argmax(-1) == reference.argmax(-1)).float().mean().item()}


@dataclass
class GenerationProbe:
    tokenizer: PreTrainedTokenizerBase
    prompts: list[list[int]]
    source: str
    continuations: list[list[int]] = field(default_factory=list)
    """The adapter model's greedy continuations, set by `reference`."""

    @property
    def size(self) -> int:
        return len(self.prompts)

    def reference(self, model) -> torch.Tensor:
        self.continuations = generate_ids(
            model, self.tokenizer, self.prompts, GENERATION_BATCH_SIZE, NEW_TOKENS
        )
        return self.logits(model)

    def logits(self, model) -> torch.Tensor:
        if not self.continuations:
            raise RuntimeError("GenerationProbe.reference(adapter model) must run before logits(model)")
        pairs = zip(self.prompts, self.continuations, strict=True)
        return torch.cat([continuation_logits(model, prompt, tokens) for prompt, tokens in pairs])

    def agreement(self, reference: torch.Tensor, merged: torch.Tensor) -> dict:
        tokens = torch.tensor([t for tokens in self.continuations for t in tokens])
        same = merged.argmax(-1) == tokens
        per_prompt = same.split([len(tokens) for tokens in self.continuations])
        return {
            "tokens": len(tokens),
            "same_token_fraction": same.float().mean().item(),
            "same_generation_fraction": sum(bool(s.all()) for s in per_prompt) / len(per_prompt),
        }


def make_probe(record: dict | None, metadata: dict, tokenizer: PreTrainedTokenizerBase) -> Probe:
    """The probe for the adapter's task, on the run's validation texts or fixed sentences."""
    texts, pairs, source = probe_texts(record, metadata)
    if metadata.get("task", "classification") == "classification":
        return ClassifierProbe(tokenizer, metadata, texts, pairs, source)
    return GenerationProbe(tokenizer, prompt_ids(tokenizer, metadata, texts), source)


def probe_texts(record: dict | None, metadata: dict) -> tuple[list[str], list[str] | None, str]:
    """(texts, text pairs or None, where they come from): the run's validation texts, else fixed sentences."""
    data = (record or {}).get("config", {}).get("data", {})
    columns = data | metadata["data"]  # peftkit.json first; run.json for fields older adapters lack
    column = _input_column(metadata.get("task", "classification"), columns)
    pair = columns.get("text_pair_column")
    if data.get("validation_file") and column:
        try:
            rows = read_file(data["validation_file"], data.get("csv_quoting", "auto"))
            rows = rows.select(range(min(PROBE_SIZE, len(rows))))
            texts = [str(t) for t in rows[column]]
            pairs = [str(t) for t in rows[pair]] if pair else None
            return texts, pairs, f"first {len(texts)} validation texts ({Path(data['validation_file']).name})"
        except (DataError, KeyError) as err:
            logger.info(
                "merge check: the run's validation data is not readable here (%s); using fixed texts", err
            )
    pairs = list(reversed(FIXED_PROBES)) if pair else None
    return list(FIXED_PROBES), pairs, f"{len(FIXED_PROBES)} fixed sentences"


def _input_column(task: str, columns: dict) -> str | None:
    """The column a probe text comes from; None for chat messages (fixed sentences are used)."""
    if task != "causal-lm":
        return columns.get("text_column")
    return None if columns.get("messages_column") else columns.get("prompt_column")
