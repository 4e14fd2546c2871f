"""Load a trained adapter folder (or a run folder holding one) and classify texts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import peftkit.adapters  # noqa: F401  (registers peftkit's own peft methods, e.g. bottleneck)
from peftkit.export import METADATA_FILE
from peftkit.model import resolve_model_path


class AdapterFolderError(ValueError):
    """A folder that is not a loadable peftkit adapter; the message says what is missing."""


@dataclass
class Prediction:
    label: str
    score: float
    probabilities: dict[str, float]


def find_adapter_dir(path: str | Path) -> Path:
    """A run folder (with `adapter/`) or an adapter folder -> the adapter folder, checked."""
    path = Path(path)
    folder = path / "adapter" if (path / "adapter" / METADATA_FILE).is_file() else path
    if not (folder / "adapter_config.json").is_file():
        raise AdapterFolderError(
            f"{str(path)!r} holds no adapter_config.json: not a trained adapter or run folder"
        )
    if not (folder / "adapter_model.safetensors").is_file():
        pickled = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
        hint = (
            f" (found {pickled}: peftkit never unpickles weights; convert them to safetensors)"
            if pickled
            else ""
        )
        raise AdapterFolderError(f"{str(folder)!r} holds no adapter_model.safetensors{hint}")
    if not (folder / METADATA_FILE).is_file():
        raise AdapterFolderError(f"{str(folder)!r} has no {METADATA_FILE}: it was not written by peftkit")
    return folder


class Classifier:
    """A base model with a trained adapter and head, ready to predict labels."""

    def __init__(self, model: PeftModel, tokenizer, metadata: dict, device: torch.device):
        self.model = model
        self.tokenizer = tokenizer
        self.metadata = metadata
        self.labels: list[str] = metadata["labels"]
        self.device = device

    @torch.no_grad()
    def logits(
        self, texts: list[str], text_pairs: list[str] | None = None, batch_size: int = 64
    ) -> torch.Tensor:
        """Logits for `texts` in input order; batches are formed by length to save padding."""
        max_length = self.metadata["data"]["max_length"]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), len(self.labels))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            pairs = [text_pairs[i] for i in idx] if text_pairs else None
            batch = self.tokenizer(
                [texts[i] for i in idx],
                pairs,
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            ).to(self.device)
            out[idx] = self.model(**batch).logits.float().cpu()
        return out

    def predict(self, texts: list[str] | str, text_pairs: list[str] | None = None, batch_size: int = 64):
        """Labels and probabilities for each text (a single string gives a single Prediction)."""
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        probs = self.logits(texts, text_pairs, batch_size).softmax(-1)
        predictions = [
            Prediction(
                label=self.labels[int(p.argmax())],
                score=float(p.max()),
                probabilities={label: float(v) for label, v in zip(self.labels, p, strict=True)},
            )
            for p in probs
        ]
        return predictions[0] if single else predictions


def load_classifier(path: str | Path, device: str | None = None) -> Classifier:
    """Load the base model named in the adapter's metadata, attach the adapter and head, and return a Classifier."""
    folder = find_adapter_dir(path)
    metadata = json.loads((folder / METADATA_FILE).read_text())
    labels = metadata["labels"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    base = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path(metadata["base_model"]),
        revision=metadata.get("base_model_revision"),
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        pad_token_id=metadata["pad_token_id"],
    )
    if len(tokenizer) > base.get_input_embeddings().num_embeddings:
        base.resize_token_embeddings(len(tokenizer))
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = PeftModel.from_pretrained(base, folder).to(device).eval()
    return Classifier(model, tokenizer, metadata, device)
