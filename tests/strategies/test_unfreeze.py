"""Gradual unfreezing: a layer group's weights stay byte-identical until its turn, then train."""

import pytest
import tiny
from accelerate import Accelerator
from test_layers import tiny_model

from peftkit.adapters import apply_adapter
from peftkit.config import AdapterConfig, RunConfig
from peftkit.data import make_dataloader
from peftkit.families import FAMILIES
from peftkit.strategies import build_strategies
from peftkit.strategies.layers import layer_groups
from peftkit.train import train_loop


def run_recording(model, config: RunConfig, steps: int):
    """Train `steps` optimizer steps; return the layer groups and each group's weights after every step."""
    tokenizer = tiny.build_tokenizer("bert")
    rows = [
        {**tokenizer(r["text"]), "labels": int(r["label"] == "positive")}
        for r in tiny.toy_sentiment(64, seed=1)
    ]
    t = config.training
    t.max_steps, t.batch_size, t.learning_rate, t.warmup_ratio, t.progress_bar = steps, 8, 1e-2, 0.0, False
    accelerator = Accelerator(cpu=True)
    loader = make_dataloader(rows, tokenizer, 8, shuffle=True, seed=0)
    groups = layer_groups(model, trainable_only=True)
    snapshots = []

    def record(step):
        snapshots.append([[p.detach().clone() for p in g.parameters] for g in groups])

    strategies = build_strategies(config, model, steps_per_epoch=len(loader))
    train_loop(model, loader, t, accelerator, step_hooks=strategies.step_hooks + [record])
    return groups, snapshots


def changed(before, after) -> bool:
    return any(not a.equal(b) for a, b in zip(before, after, strict=True))


def test_full_model_unfreezes_top_down():
    config = RunConfig()
    config.adapter.method = "full"
    config.training.gradual_unfreezing, config.training.unfreeze_every_steps = True, 2
    groups, snaps = run_recording(tiny_model("bert"), config, steps=8)
    assert [g.name for g in groups] == ["head", "encoder.1", "encoder.0", "embeddings"]
    for i in range(len(groups)):
        first_trained = 2 * i + 1  # trainable from step 2i on, so changed by optimizer step 2i + 1
        for step in range(first_trained):
            assert all(a.equal(b) for a, b in zip(snaps[0][i], snaps[step][i], strict=True)), (
                groups[i].name,
                step,
            )
        assert changed(snaps[0][i], snaps[first_trained][i]), groups[i].name
    assert all(p.requires_grad for g in groups for p in g.parameters)  # all unfrozen at the end


def test_adapter_unfreezes_adapter_weights_only():
    config = RunConfig()
    config.training.gradual_unfreezing, config.training.unfreeze_every_steps = True, 3
    model = apply_adapter(tiny_model("bert"), AdapterConfig(method="lora", r=2), FAMILIES["bert"])
    frozen_before = {n for n, p in model.named_parameters() if not p.requires_grad}
    groups, snaps = run_recording(model, config, steps=5)
    assert [g.name for g in groups] == ["head", "encoder.1", "encoder.0"]
    assert changed(snaps[0][0], snaps[1][0]) and changed(
        snaps[0][1], snaps[1][1]
    )  # head + top adapter at once
    for step in range(4):  # encoder.0's adapter is trainable from step 3, changed by step 4
        assert not changed(snaps[0][2], snaps[step][2])
    assert changed(snaps[0][2], snaps[4][2])
    assert {
        n for n, p in model.named_parameters() if not p.requires_grad
    } == frozen_before  # base stays frozen


def test_interval_defaults_to_one_epoch():
    config = RunConfig()
    config.adapter.method = "full"
    config.training.gradual_unfreezing = True
    unfreezer = build_strategies(config, tiny_model("bert"), steps_per_epoch=7).step_hooks[0]
    assert [unfreezer.groups_trainable_at(s) for s in (0, 6, 7, 14, 21, 100)] == [1, 1, 2, 3, 4, 4]


@pytest.mark.parametrize(
    "training, message",
    [({"unfreeze_every_steps": 3}, "gradual_unfreezing is false"), ({"unfreeze_every_steps": -1}, ">= 0")],
)
def test_options_are_validated(training, message):
    from peftkit.config import ConfigError, validate

    config = RunConfig()
    config.data.train_file = "x.csv"
    for k, v in training.items():
        setattr(config.training, k, v)
    with pytest.raises(ConfigError, match=message):
        validate(config)
