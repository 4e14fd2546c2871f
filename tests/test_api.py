"""End to end on tiny BERT, T5 and LLaMA models: train, evaluate, save, load (with peftkit and plain peft)."""

import json

import pytest
import tiny
import torch
from conftest import tiny_run_config
from peft import AutoPeftModelForSequenceClassification

from peftkit.api import finetune
from peftkit.predict import load_classifier


@pytest.fixture(scope="module", params=tiny.FAMILIES)
def trained(request, tiny_models, toy_files, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"run-{request.param}")
    return request.param, finetune(tiny_run_config(tiny_models[request.param], toy_files, out))


def test_loss_goes_down_and_beats_chance(trained):
    _, result = trained
    losses = result.metrics["train"]["losses"]
    assert losses[-1] < 0.5 * losses[0]
    assert result.metrics["validation"]["accuracy"] >= 0.8  # chance is 0.5
    assert result.metrics["test"]["accuracy"] >= 0.8
    assert result.labels == ["negative", "positive"]


def test_run_folder_contents(trained):
    _, result = trained
    files = {p.name for p in result.adapter_dir.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "peftkit.json", "tokenizer.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    record = json.loads((result.output_dir / "run.json").read_text())
    assert record["labels"] == ["negative", "positive"]
    log = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in log) and any("eval" in r for r in log)


def test_save_load_gives_same_logits_and_head(trained, toy_files):
    family, result = trained
    texts = [r["text"] for r in tiny.toy_sentiment(12, seed=9)]
    loaded = load_classifier(result.adapter_dir, device="cpu")
    batch = result.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = result.model(**batch).logits
    assert torch.allclose(loaded.logits(texts, batch_size=64), expected, atol=1e-5)
    head = tiny_head(family)
    trained_head = dict(result.model.named_parameters())
    loaded_head = dict(loaded.model.named_parameters())
    names = [n for n in trained_head if head in n and "modules_to_save" in n]
    assert names and all(torch.equal(trained_head[n], loaded_head[n]) for n in names)


def test_plain_peft_loads_the_adapter(trained):
    _, result = trained
    meta = json.loads((result.adapter_dir / "peftkit.json").read_text())
    model = AutoPeftModelForSequenceClassification.from_pretrained(
        result.adapter_dir, num_labels=2, pad_token_id=meta["pad_token_id"]
    ).eval()
    texts = [r["text"] for r in tiny.toy_sentiment(8, seed=4)]
    batch = result.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, result.model(**batch).logits, atol=1e-5)


def test_predict_labels_and_probabilities(trained):
    _, result = trained
    clf = load_classifier(result.output_dir, device="cpu")  # a run folder works too
    good, bad = clf.predict(["great wonderful film", "awful boring film"])
    assert (good.label, bad.label) == ("positive", "negative")
    assert abs(sum(good.probabilities.values()) - 1) < 1e-5


def test_llama_pad_token_policy(tiny_models, toy_files, tmp_path):
    from peftkit.config import ModelConfig
    from peftkit.model import load_model, load_tokenizer

    tokenizer = load_tokenizer(ModelConfig(name_or_path=str(tiny_models["llama"])))
    assert tokenizer.pad_token == tokenizer.eos_token
    loaded = load_model(ModelConfig(name_or_path=str(tiny_models["llama"])), ["a", "b"], tokenizer)
    assert loaded.model.config.pad_token_id == tokenizer.eos_token_id
    added = load_tokenizer(ModelConfig(name_or_path=str(tiny_models["llama"]), pad_token="add"))
    assert added.pad_token == "<pad>"
    grown = load_model(ModelConfig(name_or_path=str(tiny_models["llama"])), ["a", "b"], added)
    assert grown.model.get_input_embeddings().num_embeddings == len(added)


def tiny_head(family):
    return {"bert": "classifier", "t5": "classification_head", "llama": "score"}[family]
