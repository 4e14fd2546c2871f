import pytest
from transformers import AutoModelForSequenceClassification

from peftkit.adapters import apply_adapter, count_parameters
from peftkit.adapters.targets import resolve_target_modules
from peftkit.config import AdapterConfig, ConfigError
from peftkit.families import FAMILIES, family_for

EXPECTED_TARGETS = {
    "bert": ["query", "key", "value", "dense"],
    "t5": ["q", "k", "v", "o", "wi", "wo"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
HEADS = {"bert": "classifier", "t5": "classification_head", "llama": "score"}


@pytest.mark.parametrize("family", sorted(EXPECTED_TARGETS))
def test_auto_targets_and_head(tiny_models, family):
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_models[family], num_labels=3, ignore_mismatched_sizes=True
    )
    fam = family_for(model.config.model_type)
    assert resolve_target_modules(model, fam, "auto") == EXPECTED_TARGETS[family]
    peft_model = apply_adapter(model, AdapterConfig(), fam)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable)
    assert any(HEADS[family] in n and "modules_to_save" in n for n in trainable)
    # nothing else is trainable: only LoRA matrices and the head copy
    assert all("lora_" in n or "modules_to_save" in n for n in trainable)
    n_trainable, total = count_parameters(peft_model)
    assert 0 < n_trainable < total


def test_wrong_target_names_real_candidates(tiny_models):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_models["llama"], num_labels=2)
    with pytest.raises(ConfigError, match=r"\['query'\] match no linear layer.*'q_proj'"):
        resolve_target_modules(model, FAMILIES["llama"], ["q_proj", "query"])


def test_unknown_architecture_falls_back_to_all_linear(caplog):
    fam = family_for("brand-new-arch")
    assert fam.target_modules == ("all-linear",)
    assert "no peftkit family entry" in caplog.text
