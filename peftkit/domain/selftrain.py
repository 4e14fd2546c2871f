"""Self-training for domain adaptation: pseudo-label unlabelled target text with the source-trained model.

Each round keeps the target texts whose top class probability reaches the threshold (optionally the same
number per class, the most confident of each, so that one dominant class does not take over), then retrains
from the pretrained base on the source rows plus these pseudo-labelled rows; the next round relabels with the
new model (as in Yarowsky-style self-training; for NLP domain adaptation, e.g. Ruder and Plank 2018).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PseudoLabels:
    indices: list[int]
    """Positions in the target texts, ascending."""
    labels: list[int]
    """Predicted class id of each kept text."""
    confidences: list[float]


def pseudo_labels(
    probabilities: torch.Tensor, threshold: float, class_balanced: bool = False
) -> PseudoLabels:
    """The rows of `probabilities` (texts x classes) whose top probability is >= `threshold`.

    `class_balanced`: keep only as many per class as the class with the fewest confident rows has
    (the most confident ones), so the pseudo-labels are balanced.
    """
    confidence, predicted = probabilities.max(dim=-1)
    kept = (confidence >= threshold).nonzero().flatten()
    if class_balanced:
        per_class = [kept[predicted[kept] == c] for c in range(probabilities.shape[1])]
        quota = min(len(rows) for rows in per_class)
        kept = torch.cat([rows[confidence[rows].argsort(descending=True)[:quota]] for rows in per_class])
        kept = kept.sort().values
    return PseudoLabels(
        indices=kept.tolist(), labels=predicted[kept].tolist(), confidences=confidence[kept].tolist()
    )


@torch.no_grad()
def predict_probabilities(
    model, tokenizer, texts: list[str], batch_size: int, max_length: int
) -> torch.Tensor:
    """Class probabilities of `texts` (in order) under `model`, in eval mode."""
    from transformers import DataCollatorWithPadding

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    collator = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    rows = [{k: encoded[k][i] for k in encoded.keys()} for i in range(len(texts))]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))  # less padding
    probabilities = torch.empty(len(rows), model.config.num_labels)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collator([rows[i] for i in chunk]).items()}
        probabilities[chunk] = model(**batch).logits.float().softmax(-1).cpu()
    model.train(was_training)
    return probabilities
