"""The gradient-reversal layer and DANN's reversal-weight schedule."""

import math

import pytest
import torch

from peftkit.domain.grl import GradientReversal, dann_lambda, reverse_gradient


@pytest.mark.parametrize("weight", [1.0, 0.3, 2.5])
def test_identity_forward_negated_scaled_gradient_backward(weight):
    x = torch.randn(4, 6, requires_grad=True)
    upstream = torch.randn(4, 6)
    y = reverse_gradient(x, weight)
    assert torch.equal(y, x)
    y.backward(upstream)
    assert torch.allclose(x.grad, -weight * upstream)


def test_module_weight_can_change_between_steps():
    layer = GradientReversal(0.0)
    x = torch.ones(3, requires_grad=True)
    layer(x).sum().backward()
    assert torch.equal(x.grad, torch.zeros(3))  # lambda 0: no gradient reaches the features
    x.grad = None
    layer.weight = 0.5
    (2 * layer(x)).sum().backward()
    assert torch.allclose(x.grad, torch.full((3,), -1.0))


def test_schedule_is_the_papers():
    assert dann_lambda(0.0) == 0.0
    assert dann_lambda(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert dann_lambda(1.0) == pytest.approx(0.99991, abs=1e-5)
    values = [dann_lambda(p / 10) for p in range(11)]
    assert values == sorted(values)
