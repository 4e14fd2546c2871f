"""Penalties against forgetting, added to the task loss: EWC and L2-SP.

- EWC (Kirkpatrick et al. 2017): lambda/2 * sum_i F_i (theta_i - theta*_i)^2, with F the diagonal
  (empirical) Fisher information of the source task at the anchor weights theta*, estimated from
  squared gradients of the source-task loss.
- L2-SP (Li et al. 2018): alpha/2 * sum_i (theta_i - theta0_i)^2, pulling the weights towards their
  pretrained (or any anchor) values instead of towards zero.

Both anchor the parameters trainable when they are built, except the new head (it has no
pretrained value; weight decay already regularises it). Each is a callable returning a scalar
tensor that the training loop adds to the loss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from peftkit.strategies.layers import layer_groups


def anchored_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) of the trainable parameters outside the head."""
    return [np for g in layer_groups(model, trainable_only=True) if g.name != "head" for np in g.params]


class QuadraticPenalty:
    """strength/2 * sum_i w_i (theta_i - anchor_i)^2 over `params`; weights w default to 1 (L2-SP)."""

    def __init__(
        self,
        params: list[tuple[str, torch.nn.Parameter]],
        strength: float,
        weights: dict[str, torch.Tensor] | None = None,
    ):
        self.strength = strength
        self.params = params
        self.anchors = {n: p.detach().clone() for n, p in params}
        self.weights = weights

    def __call__(self) -> torch.Tensor:
        total = torch.zeros((), device=self.params[0][1].device if self.params else "cpu")
        for name, param in self.params:
            diff = (param - self.anchors[name].to(param.device)).float().pow(2)
            if self.weights is not None:
                diff = diff * self.weights[name].to(param.device)
            total = total + diff.sum()
        return 0.5 * self.strength * total


def l2sp_penalty(model: torch.nn.Module, strength: float) -> QuadraticPenalty:
    """L2-SP anchored at the model's current (pretrained) weights."""
    return QuadraticPenalty(anchored_parameters(model), strength)


def diagonal_fisher(
    model: torch.nn.Module, batches: Iterable[dict], params: list[tuple[str, torch.nn.Parameter]]
) -> dict[str, torch.Tensor]:
    """Mean squared gradient of the loss over `batches` for each of `params` (the empirical diagonal Fisher).

    Dropout is off while it runs; the model's gradients are cleared afterwards.
    """
    was_training = model.training
    model.eval()
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params}
    count = 0
    for batch in batches:
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        for name, param in params:
            if param.grad is not None:
                fisher[name] += param.grad.detach().float().pow(2)
        count += 1
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    if count == 0:
        raise ValueError("EWC needs at least one source-task batch to estimate the Fisher information")
    return {n: f / count for n, f in fisher.items()}


def ewc_penalty(model: torch.nn.Module, source_batches: Iterable[dict], strength: float) -> QuadraticPenalty:
    """EWC anchored at the model's current weights, weighted by the Fisher of the source task."""
    params = anchored_parameters(model)
    return QuadraticPenalty(params, strength, diagonal_fisher(model, source_batches, params))


def combine(penalties: list) -> Callable[[], torch.Tensor] | None:
    """One callable summing `penalties`, or None when there are none."""
    if not penalties:
        return None
    if len(penalties) == 1:
        return penalties[0]
    return lambda: sum(p() for p in penalties)
