"""Domain-adversarial training (DANN; Ganin and Lempitsky 2015, Ganin et al. 2016).

A small domain classifier reads the pooled features of a source and a target batch through a gradient-
reversal layer (`grl.py`) and learns to tell them apart (binary cross-entropy); the reversed gradient trains
the features to make the two domains indistinguishable. The reversal weight follows the paper's schedule,
lambda_p = weight x (2 / (1 + exp(-10 p)) - 1), p the share of training done.

The domain classifier is not part of the saved model: it has its own AdamW, stepped by a step hook right
after the model's optimizer step (the loop's backward pass filled both sets of gradients).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from peftkit.domain.features import PooledFeatures
from peftkit.domain.grl import GradientReversal, dann_lambda


class DomainClassifier(torch.nn.Module):
    """Features -> gradient reversal -> Linear-ReLU-Linear -> one logit (source 0, target 1)."""

    def __init__(self, hidden_size: int, width: int = 256):
        super().__init__()
        self.reversal = GradientReversal(0.0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(hidden_size, width), torch.nn.ReLU(), torch.nn.Linear(width, 1)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(self.reversal(features)).squeeze(-1)


class DANN:
    """The loop's `regularizer()` (domain loss on a source and a target batch) and step hook (schedule, step)."""

    def __init__(
        self,
        model,
        features: PooledFeatures,
        batches: Iterator[dict],
        total_steps: int,
        weight: float = 1.0,
        learning_rate: float = 1e-3,
    ):
        self.model, self.features, self.batches = model, features, batches
        self.total_steps, self.weight = max(total_steps, 1), weight
        self.classifier: DomainClassifier | None = None  # built at the first call, when the width is known
        self.learning_rate = learning_rate
        self.optimizer: torch.optim.Optimizer | None = None
        self.history: list[dict] = []

    def _build(self, features: torch.Tensor) -> None:
        self.classifier = DomainClassifier(features.shape[1]).to(features.device)
        self.optimizer = torch.optim.AdamW(self.classifier.parameters(), lr=self.learning_rate)

    def __call__(self) -> torch.Tensor:
        source = self.features.last
        self.model(**next(self.batches))
        target = self.features.last
        if self.classifier is None:
            self._build(source)
            self.classifier.reversal.weight = self.weight * dann_lambda(0.0)
        logits = self.classifier(torch.cat([source, target]))
        domains = torch.cat([torch.zeros(len(source)), torch.ones(len(target))]).to(logits.device)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, domains)
        accuracy = ((logits > 0).float() == domains).float().mean()
        self.history.append({"domain_loss": loss.detach(), "domain_accuracy": accuracy.detach()})
        return loss

    def step_hook(self, step: int) -> None:
        """After each optimizer step: step the domain classifier, then set lambda_p for the next step."""
        if self.optimizer is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        if self.classifier is not None:
            self.classifier.reversal.weight = self.weight * dann_lambda(min(step / self.total_steps, 1.0))

    def summary(self) -> dict:
        """Mean domain loss and accuracy over the first and the last tenth of training."""
        if not self.history:
            return {}
        tenth = max(len(self.history) // 10, 1)
        parts = {"first": self.history[:tenth], "last": self.history[-tenth:]}
        return {
            f"{key}_{part}": torch.stack([h[key] for h in rows]).mean().item()
            for part, rows in parts.items()
            for key in ("domain_loss", "domain_accuracy")
        }
