"""Feature alignment penalties between source and target batches: CORAL and MMD.

- CORAL (Sun and Saenko 2016, "Deep CORAL"): ||C_s - C_t||_F^2 / (4 d^2), C the d x d feature covariances.
- MMD (Gretton et al. 2012; as a DA loss, Long et al. 2015): the biased squared maximum mean discrepancy
  under a sum of Gaussian kernels whose bandwidths are multiples of the batch's mean squared distance.

Both are zero when the two batches are the same and grow as their statistics drift apart. `AlignmentPenalty`
is the `regularizer()` the training loop adds to the loss: each call draws a target batch, runs the model on
it and compares its pooled features with those of the source batch just trained on.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from peftkit.domain.features import PooledFeatures


def coral_loss(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Deep CORAL: squared Frobenius distance of the feature covariances over 4 d^2 (rows: examples)."""
    d = source.shape[1]
    return (_covariance(source) - _covariance(target)).pow(2).sum() / (4 * d * d)


def _covariance(x: torch.Tensor) -> torch.Tensor:
    centred = x - x.mean(dim=0, keepdim=True)
    return centred.T @ centred / max(x.shape[0] - 1, 1)


def mmd_loss(source: torch.Tensor, target: torch.Tensor, scales: tuple[float, ...] = (0.25, 0.5, 1, 2, 4)):
    """Biased MMD^2 under sum_k exp(-||x - y||^2 / (s_k * mean squared distance)), the mean taken over both batches."""
    joint = torch.cat([source, target])
    distances = torch.cdist(joint, joint).pow(2)
    bandwidth = distances.detach().mean().clamp_min(1e-8)
    kernel = sum(torch.exp(-distances / (bandwidth * s)) for s in scales)
    n = source.shape[0]
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()


LOSSES = {"coral": coral_loss, "mmd": mmd_loss}


class AlignmentPenalty:
    """weight x LOSSES[kind](source features, target features), one fresh target batch per call."""

    def __init__(self, model, features: PooledFeatures, batches: Iterator[dict], kind: str, weight: float):
        self.model, self.features, self.batches = model, features, batches
        self.loss, self.weight = LOSSES[kind], weight
        self.history: list[torch.Tensor] = []

    def __call__(self) -> torch.Tensor:
        source = self.features.last  # from the training forward just before this call
        self.model(**next(self.batches))
        value = self.loss(source, self.features.last)
        self.history.append(value.detach())
        return self.weight * value

    def summary(self) -> dict:
        """Mean penalty (unweighted) over the first and the last tenth of training."""
        if not self.history:
            return {}
        tenth = max(len(self.history) // 10, 1)
        return {
            "penalty_first": torch.stack(self.history[:tenth]).mean().item(),
            "penalty_last": torch.stack(self.history[-tenth:]).mean().item(),
        }
