"""Forgetting mitigation: EWC and L2-SP penalties (zero at the anchor, quadratic away from it) and replay batches."""

import pytest
import tiny
import torch
from conftest import tiny_run_config, write_csv
from test_layers import tiny_model

from peftkit.api import finetune
from peftkit.strategies.regularizers import anchored_parameters, diagonal_fisher, ewc_penalty, l2sp_penalty
from peftkit.strategies.sampling import ReplayBatchSampler


def source_batches(n=3):
    tokenizer = tiny.build_tokenizer("bert")
    rows = tiny.toy_sentiment(8 * n, seed=11)
    batches = []
    for i in range(n):
        chunk = rows[8 * i : 8 * (i + 1)]
        batch = tokenizer([r["text"] for r in chunk], padding=True, return_tensors="pt")
        batch["labels"] = torch.tensor([int(r["label"] == "positive") for r in chunk])
        batches.append(dict(batch))
    return batches


def shift(model, delta):
    """Move every anchored (non-head) weight by `delta` along a fixed random direction."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in anchored_parameters(model):
            p.add_(delta * torch.randn(p.shape, generator=generator))


@pytest.mark.parametrize("kind", ["ewc", "l2sp"])
def test_penalty_zero_at_anchor_and_quadratic(kind):
    model = tiny_model("bert")
    penalty = ewc_penalty(model, source_batches(), 2.0) if kind == "ewc" else l2sp_penalty(model, 2.0)
    assert penalty().item() == 0.0
    values = []
    for delta in (0.01, 0.02, 0.04):
        shift(model, delta - (values and [0.01, 0.02][len(values) - 1] or 0))
        values.append(penalty().item())
    assert values[0] > 0
    assert values[1] == pytest.approx(4 * values[0], rel=1e-3)  # twice as far: four times the penalty
    assert values[2] == pytest.approx(16 * values[0], rel=1e-3)
    head = {n for n, _ in model.named_parameters()} - {n for n, _ in anchored_parameters(model)}
    assert head == {
        "bert.pooler.dense.weight",
        "bert.pooler.dense.bias",
        "classifier.weight",
        "classifier.bias",
    }


def test_l2sp_value_and_ewc_weights_by_fisher():
    model = tiny_model("bert")
    l2sp = l2sp_penalty(model, 3.0)
    params = anchored_parameters(model)
    fisher = diagonal_fisher(model, source_batches(), params)
    ewc = ewc_penalty(model, source_batches(), 3.0)
    shift(model, 0.05)
    squared = {n: (p.detach() - l2sp.anchors[n]).pow(2) for n, p in params}
    assert l2sp().item() == pytest.approx(1.5 * sum(s.sum().item() for s in squared.values()), rel=1e-5)
    assert ewc().item() == pytest.approx(
        1.5 * sum((fisher[n] * s).sum().item() for n, s in squared.items()), rel=1e-5
    )
    assert all((f >= 0).all() for f in fisher.values()) and any(f.sum() > 0 for f in fisher.values())
    assert all(p.grad is None for p in model.parameters())  # the Fisher pass leaves no gradients behind


def test_penalty_has_gradient_towards_anchor():
    model = tiny_model("bert")
    penalty = l2sp_penalty(model, 1.0)
    shift(model, 0.1)
    penalty().backward()
    name, param = anchored_parameters(model)[0]
    assert torch.allclose(param.grad, param.detach() - penalty.anchors[name])


@pytest.mark.parametrize("batch_size, ratio, replayed", [(16, 0.25, 4), (10, 0.3, 3), (8, 0.5, 4)])
def test_replay_batches_hold_the_fraction(batch_size, ratio, replayed):
    sampler = ReplayBatchSampler(n_target=100, n_source=40, batch_size=batch_size, ratio=ratio, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    target_seen = []
    for batch in batches:
        source = [i for i in batch if i >= 100]
        assert len(source) == replayed and len(set(source)) == replayed
        target_seen += [i for i in batch if i < 100]
        assert len(batch) == batch_size or batch is batches[-1]
    assert sorted(target_seen) == list(range(100))  # every target row once per epoch
    assert batches == list(ReplayBatchSampler(100, 40, batch_size, ratio, seed=3))  # seeded
    sampler.set_epoch(1)
    assert list(sampler) != batches


def test_finetune_with_ewc_l2sp_and_replay(tiny_models, toy_files, tmp_path):
    source = write_csv(tmp_path / "source.csv", tiny.toy_sentiment(64, seed=21))
    recipe = tiny_run_config(
        tiny_models["bert"], toy_files, tmp_path / "run", num_epochs=3, learning_rate=2e-3
    )
    recipe["adapter"] = {"method": "full"}
    recipe["data"] |= {"source_file": str(source), "replay_ratio": 0.25}
    recipe["training"] |= {"ewc_lambda": 10.0, "ewc_fisher_batches": 2, "l2sp_lambda": 1e-3}
    result = finetune(recipe)
    assert result.metrics["train"]["steps"] == 3 * 20  # 240 rows, 12 new + 4 replayed per batch
    assert result.metrics["test"]["accuracy"] >= 0.8


def test_source_data_is_required():
    from peftkit.config import ConfigError, RunConfig, validate

    config = RunConfig()
    config.data.train_file = "x.csv"
    config.data.replay_ratio = 0.2
    with pytest.raises(ConfigError, match="data.source_file"):
        validate(config)
