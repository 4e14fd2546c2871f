"""Feature extraction: a frozen backbone run once, a new linear head trained on its cached features.

The classic transfer baseline (a linear probe): each example's pooled last hidden state is
computed once, without gradients, and cached (in memory, or on disk as safetensors under
`output_dir/features/`, keyed by a fingerprint of the model, the tokenized data, the pooling
and the length limit). Training then runs the usual loop over the cache, so each epoch costs
a linear layer instead of a forward pass through the backbone (`benchmarks/feature_cache.py`).

Pooling: `cls` (first token: BERT-class), `mean` (masked mean: T5, sentence encoders),
`last` (last non-pad token: LLaMA-class), `auto` (mean for encoders and T5/BART, last for decoders).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase
from transformers.modeling_outputs import SequenceClassifierOutput

logger = logging.getLogger(__name__)

# Masked mean for encoders: a frozen BERT's first-token state is a poor sentence feature until fine-tuned
# (Reimers & Gurevych 2019); a causal decoder's last token is the only one that has seen the whole text.
_AUTO_POOLING = {"encoder": "mean", "encoder-decoder": "mean", "decoder": "last"}


def resolve_pooling(setting: str, kind: str) -> str:
    """`auto` -> the pooling that fits a family kind (`mean` for unknown kinds)."""
    return _AUTO_POOLING.get(kind, "mean") if setting == "auto" else setting


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """(batch, tokens, hidden) -> (batch, hidden) by `mode`: cls, mean or last (non-pad token; either padding side)."""
    mask = attention_mask.to(hidden.dtype)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "mean":
        return (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
    if mode == "last":
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        last = (attention_mask.long() * positions).argmax(1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {mode!r}; use cls, mean or last")


def backbone_of(model: torch.nn.Module) -> torch.nn.Module:
    """The part of a *ForSequenceClassification model that returns `last_hidden_state` (the encoder for T5/BART)."""
    if getattr(model.config, "is_encoder_decoder", False):
        return model.get_encoder()
    return model.base_model


@torch.no_grad()
def extract_features(
    model: torch.nn.Module,
    rows: list[dict],
    tokenizer: PreTrainedTokenizerBase,
    pooling: str,
    batch_size: int = 64,
) -> torch.Tensor:
    """Pooled last hidden states (float32, on the CPU) of tokenized `rows`, in their order."""
    backbone = backbone_of(model)
    was_training = backbone.training
    backbone.eval()
    device = next(backbone.parameters()).device
    collator = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in rows[0]]
    out = []
    for start in range(0, len(rows), batch_size):
        batch = collator([{k: r[k] for k in keys} for r in rows[start : start + batch_size]]).to(device)
        if not _takes_token_types(backbone):
            batch.pop("token_type_ids", None)
        hidden = backbone(**batch).last_hidden_state
        out.append(pool(hidden, batch["attention_mask"], pooling).float().cpu())
    backbone.train(was_training)
    return torch.cat(out)


def _takes_token_types(module: torch.nn.Module) -> bool:
    import inspect

    return "token_type_ids" in inspect.signature(module.forward).parameters


def fingerprint(model_id: dict, rows: list[dict], pooling: str, max_length: int) -> str:
    """A hash of how the features were made: model (name, revision, dtype), tokenized inputs, pooling, length."""
    digest = hashlib.sha256(json.dumps([model_id, pooling, max_length], sort_keys=True).encode())
    for row in rows:
        digest.update(json.dumps(row.get("input_ids")).encode())
        digest.update(json.dumps(row.get("token_type_ids")).encode())
    return digest.hexdigest()[:20]


def cached_features(
    model: torch.nn.Module,
    rows: list[dict],
    tokenizer: PreTrainedTokenizerBase,
    pooling: str,
    key: str,
    cache_dir: Path | None,
    batch_size: int = 64,
) -> torch.Tensor:
    """`extract_features`, read from `cache_dir/<key>.safetensors` when there, else computed and written there."""
    file = cache_dir / f"{key}.safetensors" if cache_dir is not None else None
    if file is not None and file.is_file():
        features = load_file(file)["features"]
        if features.shape[0] == len(rows):
            logger.info("features: read %s", file)
            return features
    features = extract_features(model, rows, tokenizer, pooling, batch_size)
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(f".tmp{os.getpid()}")  # several processes may write the same cache
        save_file({"features": features.contiguous()}, str(tmp))
        tmp.replace(file)
    return features


class LinearHead(torch.nn.Module):
    """A linear classifier over pooled features, returning outputs shaped like a transformers classifier's."""

    def __init__(self, hidden_size: int, num_labels: int):
        super().__init__()
        self.classifier = torch.nn.Linear(hidden_size, num_labels)

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        logits = self.classifier(features)
        loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def feature_dataloader(
    features: torch.Tensor, labels: list[int], batch_size: int, shuffle: bool, seed: int = 0
) -> DataLoader:
    """Batches of {"features", "labels"} from a feature cache."""
    items = [{"features": f, "labels": label} for f, label in zip(features, labels, strict=True)]
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(items, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=_stack)


def _stack(items: list[dict]) -> dict:
    return {
        "features": torch.stack([i["features"] for i in items]),
        "labels": torch.tensor([i["labels"] for i in items]),
    }


# ---------------------------------------------------------------- a features run


def feature_setup(model, rows: dict[str, list[dict]], tokenizer, config, kind: str, seed: int = 0):
    """(LinearHead, loader) for a features run: every split's features cached once; `loader(name, bs, shuffle)`."""
    pooling = resolve_pooling(config.model.pooling, kind)
    model_id = {
        "model": config.model.name_or_path,
        "revision": config.model.revision,
        "dtype": config.model.dtype,
    }
    cache_dir = (
        Path(config.training.output_dir) / "features" if config.training.feature_cache == "disk" else None
    )
    features = {}
    for name, split_rows in rows.items():
        key = f"{name}-{fingerprint(model_id, split_rows, pooling, config.data.max_length)}"
        features[name] = cached_features(
            model, split_rows, tokenizer, pooling, key, cache_dir, config.training.eval_batch_size
        )
    head = LinearHead(features["train"].shape[1], len(model.config.id2label))
    head.pooling = pooling

    def loader(name: str, batch_size: int, shuffle: bool) -> DataLoader:
        labels = [r["labels"] for r in rows[name]]
        return feature_dataloader(features[name], labels, batch_size, shuffle, seed)

    return head, loader


def save_feature_head(head: LinearHead, tokenizer, metadata: dict, folder: str | Path) -> Path:
    """`head.safetensors` (the linear classifier), the tokenizer and `peftkit.json` (with the pooling), atomically."""
    from peftkit.export import METADATA_FILE
    from peftkit.io import atomic_dir, write_json

    with atomic_dir(folder) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
        save_file(state, str(tmp / "head.safetensors"))
        tokenizer.save_pretrained(tmp)
        write_json(tmp / METADATA_FILE, metadata | {"format": "features", "pooling": head.pooling})
    return Path(folder)


# ---------------------------------------------------------------- predicting with a trained head


class FeatureClassifier(torch.nn.Module):
    """The frozen backbone, pooled as in training, and the trained `LinearHead`: text in, logits out."""

    def __init__(self, backbone: torch.nn.Module, head: LinearHead, pooling: str):
        super().__init__()
        self.backbone, self.head, self.pooling = backbone, head, pooling
        self._token_types = _takes_token_types(backbone)

    def forward(
        self, input_ids, attention_mask, token_type_ids=None, labels=None
    ) -> SequenceClassifierOutput:
        extra = {"token_type_ids": token_type_ids} if self._token_types and token_type_ids is not None else {}
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        return self.head(pool(hidden, attention_mask, self.pooling).float(), labels)


def load_feature_classifier(folder: str | Path, metadata: dict) -> FeatureClassifier:
    """The base model named in `metadata` (a `save_feature_head` folder's peftkit.json) with the saved head."""
    from transformers import AutoModelForSequenceClassification

    from peftkit.model import resolve_model_path

    labels = metadata["labels"]
    base = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path(metadata["base_model"]),
        revision=metadata.get("base_model_revision"),
        num_labels=len(labels),
        pad_token_id=metadata["pad_token_id"],
    )  # its own head is not used: only the backbone's pooled states feed the saved one
    state = load_file(str(Path(folder) / "head.safetensors"))
    head = LinearHead(state["classifier.weight"].shape[1], len(labels))
    head.load_state_dict(state)
    return FeatureClassifier(backbone_of(base), head, metadata["pooling"]).eval()
