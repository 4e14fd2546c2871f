"""The gradient-reversal layer of DANN (Ganin and Lempitsky 2015, "Unsupervised Domain Adaptation by
Backpropagation"): the identity going forward, the gradient times -lambda going back.

The features below it are thereby trained to *increase* the domain classifier's loss (to become
domain-invariant) while the classifier above it is trained to decrease it.
"""

from __future__ import annotations

import math

import torch


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.weight * grad, None


def reverse_gradient(x: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """`x` unchanged; in the backward pass its gradient is multiplied by `-weight`."""
    return _ReverseGradient.apply(x, weight)


class GradientReversal(torch.nn.Module):
    """`reverse_gradient` as a module; set `weight` as training goes on (`dann_lambda`)."""

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return reverse_gradient(x, self.weight)

    def extra_repr(self) -> str:
        return f"weight={self.weight}"


def dann_lambda(progress: float, gamma: float = 10.0) -> float:
    """The paper's schedule lambda_p = 2 / (1 + exp(-gamma p)) - 1: 0 at the start, near 1 at the end (p in [0, 1])."""
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0
