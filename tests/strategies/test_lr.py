"""Discriminative learning rates: lr x decay^depth per layer group, kept by warmup and every schedule."""

import pytest
import torch
from test_layers import EXPECTED, tiny_model

from peftkit.config import ConfigError, RunConfig, validate
from peftkit.strategies.layers import layer_groups
from peftkit.train import build_optimizer, build_scheduler


def lrs_by_group(optimizer):
    seen = {}
    for group in optimizer.param_groups:
        assert seen.setdefault(group["name"], group["lr"]) == group["lr"]  # decay and no-decay halves agree
    return seen


@pytest.mark.parametrize("family", ["bert", "t5", "llama"])
def test_group_rates_follow_the_formula(family):
    config = RunConfig().training
    config.learning_rate, config.layerwise_lr_decay = 1e-3, 0.5
    model = tiny_model(family)
    rates = lrs_by_group(build_optimizer(model, config))
    assert list(rates) == EXPECTED[family]
    for depth, name in enumerate(EXPECTED[family]):
        assert rates[name] == pytest.approx(1e-3 * 0.5**depth)
    optimized = {id(p) for g in build_optimizer(model, config).param_groups for p in g["params"]}
    assert optimized == {id(p) for p in model.parameters()}
    no_decay = [g for g in build_optimizer(model, config).param_groups if g["weight_decay"] == 0.0]
    assert all(p.ndim < 2 for g in no_decay for p in g["params"])


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_schedules_scale_every_group_alike(schedule):
    config = RunConfig().training
    config.learning_rate, config.layerwise_lr_decay = 1e-3, 0.8
    config.lr_scheduler, config.warmup_ratio = schedule, 0.1
    model = tiny_model("bert")
    depths = {g.name: g.depth for g in layer_groups(model)}
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps=100)

    def factor_at(step):
        while scheduler.last_epoch < step:
            optimizer.step()
            scheduler.step()
        factors = {name: lr / (1e-3 * 0.8 ** depths[name]) for name, lr in lrs_by_group(optimizer).items()}
        assert max(factors.values()) == pytest.approx(min(factors.values()))  # one factor for all groups
        return next(iter(factors.values()))

    if schedule == "constant":
        assert factor_at(0) == pytest.approx(1.0) and factor_at(60) == pytest.approx(1.0)
        return
    assert factor_at(0) == pytest.approx(0.0)  # warmup starts at 0
    assert factor_at(5) == pytest.approx(0.5)  # halfway through 10 warmup steps
    assert factor_at(10) == pytest.approx(1.0)  # warmup done: the formula exactly
    expected_mid = 0.5 if schedule == "linear" else 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 0.5)).item())
    assert factor_at(55) == pytest.approx(expected_mid, abs=1e-6)


def test_decay_is_validated():
    config = RunConfig()
    config.data.train_file = "x.csv"
    config.training.layerwise_lr_decay = 1.5
    with pytest.raises(ConfigError, match="layerwise_lr_decay: 1.5 must be in"):
        validate(config)
