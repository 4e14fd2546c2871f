"""Pseudo-labels: the confidence threshold and class balance."""

import torch

from peftkit.domain.selftrain import pseudo_labels

PROBS = torch.tensor(
    [[0.95, 0.05], [0.60, 0.40], [0.10, 0.90], [0.97, 0.03], [0.85, 0.15], [0.20, 0.80], [0.99, 0.01]]
)


def test_only_rows_at_or_above_the_threshold():
    chosen = pseudo_labels(PROBS, threshold=0.9)
    assert chosen.indices == [0, 2, 3, 6]
    assert chosen.labels == [0, 1, 0, 0]
    assert all(c >= torch.tensor(0.9).item() for c in chosen.confidences)  # float32, as compared
    assert pseudo_labels(PROBS, threshold=0.8).indices == [0, 2, 3, 4, 5, 6]
    assert pseudo_labels(PROBS, threshold=0.995).indices == []


def test_class_balanced_keeps_the_most_confident_of_each_class():
    chosen = pseudo_labels(PROBS, threshold=0.8, class_balanced=True)
    # confident: class 0 -> rows 0 (.95), 3 (.97), 4 (.85), 6 (.99); class 1 -> rows 2 (.90), 5 (.80)
    assert chosen.indices == [2, 3, 5, 6]
    assert sorted(chosen.labels) == [0, 0, 1, 1]
    assert pseudo_labels(PROBS, threshold=0.9, class_balanced=True).indices == [2, 6]
