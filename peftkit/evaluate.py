"""Classification metrics (accuracy, macro-F1, loss) over a dataloader, gathered across processes."""

from __future__ import annotations

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader


def macro_f1(predictions: torch.Tensor, references: torch.Tensor, num_labels: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in predictions or references."""
    scores = []
    for c in range(num_labels):
        tp = ((predictions == c) & (references == c)).sum().item()
        fp = ((predictions == c) & (references != c)).sum().item()
        fn = ((predictions != c) & (references == c)).sum().item()
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores) if scores else 0.0


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, dataloader: DataLoader, accelerator: Accelerator, num_labels: int
) -> dict:
    """Accuracy, macro-F1 and mean loss; padded duplicates of the last batch are dropped by accelerate.

    Per-batch results stay on the device and are copied to the host once, at the end: no host-device
    sync per batch.
    """
    was_training = model.training
    model.eval()
    predictions, references, losses = [], [], []
    for batch in dataloader:
        outputs = model(**batch)
        batch_losses = torch.nn.functional.cross_entropy(
            outputs.logits.float(), batch["labels"], reduction="none"
        )
        preds, refs, batch_losses = accelerator.gather_for_metrics(
            (outputs.logits.argmax(-1), batch["labels"], batch_losses)
        )
        predictions.append(preds)
        references.append(refs)
        losses.append(batch_losses.float())
    model.train(was_training)
    preds, refs = torch.cat(predictions).cpu(), torch.cat(references).cpu()
    return {
        "accuracy": (preds == refs).float().mean().item(),
        "macro_f1": macro_f1(preds, refs, num_labels),
        "loss": torch.cat(losses).mean().item(),
        "samples": len(refs),
    }
