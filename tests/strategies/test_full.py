"""Full fine-tuning (`adapter.method: full`): every weight trains; the run saves a plain transformers model."""

import json

import pytest
import tiny
import torch
from conftest import tiny_run_config
from transformers import AutoModelForSequenceClassification

from peftkit.api import finetune
from peftkit.predict import load_classifier


@pytest.fixture(scope="module", params=["bert", "llama"])
def full_run(request, tiny_models, toy_files, tmp_path_factory):
    recipe = tiny_run_config(
        tiny_models[request.param],
        toy_files,
        tmp_path_factory.mktemp("full"),
        num_epochs=4,
        learning_rate=2e-3,
    )
    recipe["adapter"] = {"method": "full"}
    return request.param, finetune(recipe)


def test_every_weight_trains_and_learns(full_run):
    _, result = full_run
    trainable, total = result.metrics["parameters"]["trainable"], result.metrics["parameters"]["total"]
    assert trainable == total
    losses = result.metrics["train"]["losses"]
    assert losses[-1] < 0.5 * losses[0]
    assert result.metrics["test"]["accuracy"] >= 0.8


def test_saved_model_loads_with_same_logits(full_run):
    family, result = full_run
    folder = result.output_dir / "model"
    assert result.adapter_dir == folder
    files = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "config.json", "peftkit.json", "tokenizer.json"} <= files
    assert json.loads((folder / "peftkit.json").read_text())["format"] == "full"
    texts = [r["text"] for r in tiny.toy_sentiment(10, seed=7)]
    batch = result.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = result.model(**batch).logits
    loaded = load_classifier(result.output_dir, device="cpu")  # the run folder
    assert torch.allclose(loaded.logits(texts), expected, atol=1e-5)
    plain = AutoModelForSequenceClassification.from_pretrained(folder).eval()  # plain transformers
    with torch.no_grad():
        assert torch.allclose(plain(**batch).logits, expected, atol=1e-5)
    assert plain.config.id2label == {0: "negative", 1: "positive"}


def test_export_of_a_full_run_is_a_plain_model_with_a_card(full_run, tmp_path):
    from peftkit.export import ExportError, export_model

    family, result = full_run
    exported = export_model(result.output_dir, tmp_path / "export", base_model_id=f"org/{family}")
    files = set(exported.files)
    assert {"model.safetensors", "config.json", "peftkit.json", "README.md", "tokenizer.json"} <= files
    meta = json.loads((exported.output_dir / "peftkit.json").read_text())
    assert meta["format"] == "full" and meta["base_model_id"] == f"org/{family}"
    card = (exported.output_dir / "README.md").read_text()
    assert "every weight of `org/" in card and "merged" not in card.split("\n# ")[1].split("\n")[0]
    texts = [r["text"] for r in tiny.toy_sentiment(6, seed=8)]
    expected = load_classifier(result.output_dir, device="cpu").logits(texts)
    assert torch.equal(load_classifier(exported.output_dir, device="cpu").logits(texts), expected)
    with pytest.raises(ExportError, match="no adapter to merge"):
        export_model(result.output_dir, tmp_path / "merged", merged=True)
