"""Feature extraction: pooled features cached once (equal to recomputed ones), a linear head trained on them."""

import json

import pytest
import tiny
import torch
from conftest import tiny_run_config

from peftkit.api import finetune
from peftkit.strategies.features import cached_features, extract_features, pool


def test_pooling_modes():
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])  # right- and left-padded
    assert pool(hidden, mask, "cls").tolist() == [[0, 1], [6, 7]]
    assert pool(hidden, mask, "mean").tolist() == [[1, 2], [9, 10]]
    assert pool(hidden, mask, "last").tolist() == [[2, 3], [10, 11]]


@pytest.mark.parametrize("family, pooling", [("bert", "cls"), ("t5", "mean"), ("llama", "last")])
def test_cached_features_equal_recomputed(family, pooling, tiny_models, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models[family])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(tiny_models[family])
    rows = [dict(tokenizer(r["text"])) for r in tiny.toy_sentiment(20, seed=5)]
    first = cached_features(model, rows, tokenizer, pooling, "train-abc", tmp_path, batch_size=8)
    assert (tmp_path / "train-abc.safetensors").is_file() and first.shape == (20, 32)
    again = cached_features(model, rows, tokenizer, pooling, "train-abc", tmp_path, batch_size=8)  # from disk
    recomputed = extract_features(model, rows, tokenizer, pooling, batch_size=3)  # other padding
    assert torch.equal(first, again)
    assert torch.allclose(first, recomputed, atol=1e-5)


@pytest.fixture(scope="module")
def features_run(tiny_models, toy_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("features")
    recipe = tiny_run_config(tiny_models["bert"], toy_files, out, num_epochs=30, learning_rate=5e-2)
    recipe["adapter"] = {"method": "features"}
    return finetune(recipe)


def test_head_only_training_beats_chance(features_run):
    result = features_run
    assert result.metrics["parameters"]["trainable"] == 32 * 2 + 2  # the linear head only
    assert result.metrics["train"]["losses"][-1] < result.metrics["train"]["losses"][0]
    assert result.metrics["test"]["accuracy"] >= 0.8  # chance 0.5; a linear probe on a random tiny backbone


def test_features_run_caches_and_saves_the_head(features_run):
    cache = sorted(p.name.split("-")[0] for p in (features_run.output_dir / "features").iterdir())
    assert cache == ["test", "train", "validation"]
    head = features_run.output_dir / "head"
    meta = json.loads((head / "peftkit.json").read_text())
    assert meta["format"] == "features" and meta["pooling"] == "mean" and meta["method"] == "features"
    assert (head / "head.safetensors").is_file()


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("training", "layerwise_lr_decay", 0.9, "does nothing with adapter.method: features"),
        ("training", "gradual_unfreezing", True, "does nothing with adapter.method: features"),
        ("model", "pooling", "cls", None),
    ],
)
def test_features_options_are_validated(section, key, value, message):
    from peftkit.config import ConfigError, RunConfig, validate

    config = RunConfig()
    config.data.train_file = "x.csv"
    setattr(getattr(config, section), key, value)
    config.adapter.method = "features"
    if message is None:
        validate(config)  # pooling is a features option
        config.adapter.method = "lora"
        message = "model.pooling: 'cls' applies to adapter.method: features"
    with pytest.raises(ConfigError, match=message):
        validate(config)


def test_predict_with_a_features_head(features_run, toy_files):
    import csv

    from peftkit.predict import load_classifier

    clf = load_classifier(features_run.output_dir, device="cpu")  # the run folder: its head/ is found
    assert clf.metadata["format"] == "features" and clf.labels == features_run.labels
    rows = list(csv.DictReader(toy_files["validation"].open()))
    predictions = clf.predict([r["text"] for r in rows])
    accuracy = sum(p.label == r["label"] for p, r in zip(predictions, rows, strict=True)) / len(rows)
    assert accuracy == pytest.approx(features_run.metrics["validation"]["accuracy"], abs=1.5 / len(rows))
    assert accuracy > 0.7
