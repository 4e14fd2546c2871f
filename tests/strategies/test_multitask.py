"""Multi-task transfer: task sampling follows its formula, each head learns only from its own task, per-task
metrics, and the saved backbone adapter + heads load back to the same outputs."""

import collections

import pytest
import torch
from conftest import tiny_run_config, write_csv

from peftkit.api import finetune
from peftkit.config import ConfigError, config_from_dict, validate
from peftkit.strategies.multitask import (
    MultiTaskModel,
    TaskBatchSampler,
    load_multitask,
    task_probabilities,
)


def test_task_probabilities_follow_the_formulas():
    sizes = [900, 100]
    assert task_probabilities(sizes, "proportional") == pytest.approx([0.9, 0.1])
    assert task_probabilities(sizes, "uniform") == pytest.approx([0.5, 0.5])
    assert task_probabilities(sizes, "temperature", 2.0) == pytest.approx([30 / 40, 10 / 40])  # sqrt(n_i)
    assert task_probabilities(sizes, "temperature", 1.0) == pytest.approx([0.9, 0.1])


def test_sampler_draws_tasks_in_proportion_and_batches_hold_one_task():
    sizes, probabilities = [300, 100], task_probabilities([300, 100], "temperature", 2.0)
    sampler = TaskBatchSampler(sizes, batch_size=4, probabilities=probabilities, seed=0)
    counts = collections.Counter()
    for epoch in range(20):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 75 + 25
        for batch in batches:
            tasks = {int(i >= 300) for i in batch}
            assert len(tasks) == 1 and len(batch) == 4  # one task per batch
            counts[tasks.pop()] += 1
    share = counts[1] / sum(counts.values())
    assert share == pytest.approx(probabilities[1], abs=0.03)  # sqrt(100) / (sqrt(300) + sqrt(100)) = 0.366
    sampler.set_epoch(3)
    assert list(sampler) == list(sampler)  # seeded


def test_each_head_gets_gradients_only_from_its_own_tasks_batches():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    backbone = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=32))  # fmt: skip
    model = MultiTaskModel(backbone, {"sentiment": 2, "topic": 3}, pooling="mean")
    ids = torch.randint(5, 50, (4, 6))
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "task": torch.ones(4, dtype=torch.long),
    }
    out = model(**batch, labels=torch.tensor([0, 1, 2, 0]))
    assert out.logits.shape == (4, 3)
    out.loss.backward()
    assert model.heads["sentiment"].weight.grad is None
    assert model.heads["topic"].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="one task"):
        model(**(batch | {"task": torch.tensor([0, 1, 1, 1])}))


def toy_topics(n: int, seed: int) -> list[dict]:
    """A learnable three-class task on the same vocabulary: which subject word the sentence holds."""
    import random

    rng = random.Random(seed)
    topics = {"cinema": ["movie", "film", "acting"], "food": ["food", "service"], "music": ["music"]}
    rows = []
    for i in range(n):
        topic = list(topics)[i % 3]
        words = (
            rng.sample("the a was is it this that and really".split(), 3) + [rng.choice(topics[topic])] * 2
        )
        rng.shuffle(words)
        rows.append({"sentence": " ".join(words), "topic": topic})
    return rows


@pytest.fixture(scope="module")
def multitask_run(tiny_models, toy_files, tmp_path_factory):
    root = tmp_path_factory.mktemp("multitask")
    topics = {name: write_csv(root / f"topics_{name}.csv", toy_topics(n, seed)) for name, n, seed in
              (("train", 120, 1), ("validation", 30, 2))}  # fmt: skip
    values = tiny_run_config(tiny_models["bert"], toy_files, root / "run", num_epochs=8)
    values["data"] = {
        "max_length": 32,
        "tasks": [
            {"name": "sentiment", "train_file": str(toy_files["train"]), "validation_file": str(toy_files["validation"])},
            {"name": "topic", "train_file": str(topics["train"]), "validation_file": str(topics["validation"]),
             "text_column": "sentence", "label_column": "topic"},
        ],
    }  # fmt: skip
    values["training"] |= {"task_sampling": "temperature", "task_temperature": 2.0}
    return finetune(values), values


def test_multitask_run_learns_both_tasks_and_reports_each(multitask_run):
    result, _ = multitask_run
    validation = result.metrics["validation"]
    assert validation["sentiment/samples"] == 80 and validation["topic/samples"] == 30
    assert validation["sentiment/accuracy"] > 0.8 and validation["topic/accuracy"] > 0.8  # chance: 0.5, 0.33
    assert validation["accuracy"] == pytest.approx(
        (validation["sentiment/accuracy"] + validation["topic/accuracy"]) / 2
    )
    assert result.metrics["parameters"]["trainable"] < result.metrics["parameters"]["total"]  # LoRA + heads


def test_multitask_save_load_round_trip(multitask_run):
    result, values = multitask_run
    model, tokenizer, meta = load_multitask(result.adapter_dir)
    assert meta["tasks"] == {"sentiment": ["negative", "positive"], "topic": ["cinema", "food", "music"]}
    batch = tokenizer(["the film was great", "food and service"], padding=True, return_tensors="pt")
    trained = result.model.eval()
    for index in (0, 1):
        task = torch.full((2,), index)
        with torch.no_grad():
            assert torch.equal(model(**batch, task=task).logits, trained(**batch, task=task).logits)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"tasks": [{"name": "a", "train_file": "x.csv"}]}, "single-task"),
        ({"tasks": [{"name": "a", "train_file": "x.csv"}, {"name": "a", "train_file": "y.csv"}]}, "unique"),
        ({"tasks": [{"name": "a", "train_file": "x.csv"}, {"name": "b"}]}, r"tasks\[1\]"),
        (
            {"tasks": [{"name": "a", "train_file": "x"}, {"name": "b", "train_file": "y"}], "k_shot": 4},
            "k_shot",
        ),
        ({"tasks": [{"name": "a", "train_file": "x", "colour": 1}]}, "colour"),
    ],
)
def test_multitask_config_is_checked(change, message):
    with pytest.raises(ConfigError, match=message):
        validate(config_from_dict({"data": change}))


def test_multitask_refuses_other_methods():
    tasks = [{"name": "a", "train_file": "x"}, {"name": "b", "train_file": "y"}]
    with pytest.raises(ConfigError, match="not supported with data.tasks"):
        validate(config_from_dict({"adapter": {"method": "prefix"}, "data": {"tasks": tasks}}))


def test_tiny_topics_are_balanced():
    assert collections.Counter(r["topic"] for r in toy_topics(9, 0)) == {"cinema": 3, "food": 3, "music": 3}
