"""Pooled features of source and target batches in the same training step, for the feature-level methods.

The features are what the classification head reads: captured by a forward pre-hook on the head module
(BERT's pooled output, T5's sentence representation; decoder heads that score every position are pooled
at the last non-pad token). Target batches come from the unlabelled target text, tokenized once and drawn
in a seeded, endless order.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from peftkit.config import RunConfig


def head_module(model: torch.nn.Module, head_names: tuple[str, ...]) -> torch.nn.Module:
    """The classification head of `model` (a PeftModel or a plain transformers classifier)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name in head_names:
        if hasattr(base, name):
            return getattr(base, name)
    raise ValueError(f"no classification head named any of {head_names} on {type(base).__name__}")


class PooledFeatures:
    """Keeps the input of the head's latest forward call as one vector per example (`last`)."""

    def __init__(self, model: torch.nn.Module, head_names: tuple[str, ...]):
        self.last: torch.Tensor | None = None
        self._mask: torch.Tensor | None = None
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._handles = [
            base.register_forward_pre_hook(self._keep_mask, with_kwargs=True),
            head_module(model, head_names).register_forward_pre_hook(self._keep_features),
        ]

    def _keep_mask(self, module, args, kwargs) -> None:
        self._mask = kwargs.get("attention_mask")

    def _keep_features(self, module, args) -> None:
        features = args[0]
        if features.dim() == 3:  # a decoder head scoring every position: pool the last non-pad token
            if self._mask is None:
                features = features[:, -1]
            else:
                last = self._mask.sum(dim=1) - 1
                features = features[torch.arange(features.shape[0], device=features.device), last]
        self.last = features.float()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def read_target_texts(config: RunConfig) -> list[str]:
    """The unlabelled target texts of `domain.target_file` (its other columns are ignored)."""
    from peftkit.data import DataError, read_file

    column = config.domain.target_text_column or config.data.text_column
    split = read_file(config.domain.target_file, config.data.csv_quoting)
    if column not in split.column_names:
        raise DataError(
            f"domain.target_file has no column {column!r}; its columns are {split.column_names}. "
            "Set domain.target_text_column"
        )
    texts = [t for t in split[column] if t is not None and str(t).strip()]
    if not texts:
        raise DataError(f"domain.target_file: no non-empty {column!r} texts")
    return texts


def target_batches(
    texts: list[str], tokenizer, batch_size: int, max_length: int, seed: int, device
) -> Iterator[dict]:
    """Endless tokenized batches of `texts` (reshuffled each pass, seeded), on `device`."""
    from transformers import DataCollatorWithPadding

    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    rows = [{k: encoded[k][i] for k in encoded.keys()} for i in range(len(texts))]
    collator = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(rows), generator=generator).tolist()
        whole = len(order) - len(order) % batch_size if len(order) >= batch_size else len(order)
        for start in range(0, whole, batch_size):  # full batches only: a covariance needs several rows
            batch = collator([rows[i] for i in order[start : start + batch_size]])
            yield {k: v.to(device) for k, v in batch.items()}
