"""CORAL and MMD: zero for identical feature batches, growing with the shift between the batches."""

import pytest
import torch

from peftkit.domain.alignment import coral_loss, mmd_loss


@pytest.mark.parametrize("loss", [coral_loss, mmd_loss])
def test_zero_for_identical_batches(loss):
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    assert loss(x, x.clone()).item() == pytest.approx(0.0, abs=1e-6)


def test_coral_value_by_hand():
    source = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # covariance diag(2, 0)
    target = torch.tensor([[0.0, 1.0], [0.0, -1.0]])  # covariance diag(0, 2)
    # ||C_s - C_t||_F^2 = 4 + 4, over 4 d^2 = 16
    assert coral_loss(source, target).item() == pytest.approx(0.5)
    assert coral_loss(source, source + 3.0).item() == pytest.approx(
        0.0
    )  # a mean shift: CORAL sees only covariances


def test_penalties_grow_with_the_shift():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(32, 8, generator=generator)
    y = torch.randn(32, 8, generator=generator)
    coral = [coral_loss(x, y * scale).item() for scale in (1.0, 2.0, 4.0)]
    mmd = [mmd_loss(x, y + shift).item() for shift in (0.0, 1.0, 3.0)]
    assert coral == sorted(coral) and coral[2] > 10 * coral[0]
    assert mmd == sorted(mmd) and mmd[2] > 10 * mmd[0]


@pytest.mark.parametrize("loss", [coral_loss, mmd_loss])
def test_gradient_pulls_target_towards_source(loss):
    generator = torch.Generator().manual_seed(2)
    source = torch.randn(32, 4, generator=generator)
    target = (2.0 * torch.randn(32, 4, generator=generator) + 1.0).requires_grad_()
    before = loss(source, target).item()
    optimizer = torch.optim.SGD([target], lr=20.0)
    for _ in range(20):
        optimizer.zero_grad()
        loss(source, target).backward()
        optimizer.step()
    assert loss(source, target).item() < 0.5 * before
