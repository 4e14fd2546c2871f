"""Every model family in `FAMILIES` (and an unknown one) through the same checks, on tiny models built from configs.

For each architecture: the family entry matches the model, the default LoRA targets are real linear
layers, the head is trained in full and saved, one training step changes only adapter and head
weights, and the layer groups (layer-wise learning rates, gradual unfreezing) are the blocks the
family table names. `docs/families.md` must be what `family_table_markdown` renders.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import tiny
import torch
import transformers
from peft import PeftModel, get_peft_model_state_dict
from peft.utils import ModulesToSaveWrapper
from transformers import AutoModelForSequenceClassification

from peftkit.adapters import UNSUPPORTED, apply_adapter
from peftkit.adapters.targets import resolve_target_modules
from peftkit.config import AdapterConfig, ConfigError, ModelConfig
from peftkit.families import FAMILIES, family_for, family_table_markdown, guess_head_modules
from peftkit.model import load_model, prepare_quantized_model, quantized_loading
from peftkit.strategies.layers import layer_groups
from peftkit.strategies.lr import layerwise_param_groups
from peftkit.strategies.unfreeze import GradualUnfreezer

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 64
LAYERS = 2  # per stack
NUM_LABELS = 3

_SMALL = dict(vocab_size=VOCAB, hidden_size=32, num_attention_heads=4, intermediate_size=64, pad_token_id=0)
_BERTLIKE = dict(_SMALL, num_hidden_layers=LAYERS, max_position_embeddings=72)
_DECODER = dict(_SMALL, num_hidden_layers=LAYERS, num_key_value_heads=2, max_position_embeddings=64)
_T5 = dict(tiny.T5_SHAPE, vocab_size=VOCAB)

# model_type -> (config class, arguments): tiny (width 32, 2 blocks per stack), shaped like the real checkpoints.
CONFIGS = {
    "bert": ("BertConfig", _BERTLIKE),
    "roberta": ("RobertaConfig", _BERTLIKE),
    "xlm-roberta": ("XLMRobertaConfig", _BERTLIKE),
    "electra": ("ElectraConfig", dict(_BERTLIKE, embedding_size=16)),  # as ELECTRA-small: a projection
    "distilbert": (
        "DistilBertConfig",
        dict(vocab_size=VOCAB, dim=32, n_layers=LAYERS, n_heads=4, hidden_dim=64, max_position_embeddings=64),
    ),
    "deberta-v2": (  # DeBERTa-v3's relative attention, with its shared position table
        "DebertaV2Config",
        dict(
            _BERTLIKE,
            relative_attention=True,
            position_buckets=16,
            pos_att_type=["p2c", "c2p"],
            norm_rel_ebd="layer_norm",
            position_biased_input=False,
        ),
    ),
    "t5": ("T5Config", _T5),
    "mt5": ("MT5Config", _T5),  # gated feed-forward (wi_0, wi_1)
    "bart": (
        "BartConfig",
        dict(
            vocab_size=VOCAB,
            d_model=32,
            encoder_layers=LAYERS,
            decoder_layers=LAYERS,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            max_position_embeddings=64,
            bos_token_id=0,
            pad_token_id=1,
            eos_token_id=2,
        ),
    ),
    "llama": ("LlamaConfig", _DECODER),
    "mistral": ("MistralConfig", _DECODER),
    "qwen2": ("Qwen2Config", _DECODER),
    "gemma": ("GemmaConfig", dict(_DECODER, head_dim=8)),
    "gemma2": ("Gemma2Config", dict(_DECODER, head_dim=8)),
    "phi": ("PhiConfig", dict(_SMALL, num_hidden_layers=LAYERS, max_position_embeddings=64)),
    "phi3": ("Phi3Config", _DECODER),
    "gpt2": (
        "GPT2Config",
        dict(
            vocab_size=VOCAB,
            n_embd=32,
            n_layer=LAYERS,
            n_head=4,
            n_positions=64,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=2,
        ),
    ),
}
# Architectures with a *ForSequenceClassification but no family entry: blocks named like BERT's (MPNet),
# a head named like no other (XLNet), and blocks shared across depth, with no per-layer index (ALBERT).
UNKNOWN = {
    "mpnet": ("MPNetConfig", _BERTLIKE),
    "xlnet": ("XLNetConfig", dict(vocab_size=VOCAB, d_model=32, n_layer=LAYERS, n_head=4, d_inner=64)),
    "albert": ("AlbertConfig", dict(_BERTLIKE, embedding_size=16)),
}
UNKNOWN_HEADS = {
    "mpnet": ("classifier",),
    "xlnet": ("sequence_summary", "logits_proj"),
    "albert": ("classifier",),
}

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_family_has_a_tiny_config():
    assert sorted(CONFIGS) == sorted(FAMILIES)
    assert not set(UNKNOWN) & set(FAMILIES)


def build(model_type: str) -> torch.nn.Module:
    class_name, kwargs = {**CONFIGS, **UNKNOWN}[model_type]
    config = getattr(transformers, class_name)(**kwargs, num_labels=NUM_LABELS)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    assert model.config.model_type == model_type
    return model


def batch(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, VOCAB, (4, 8), generator=generator)
    if model.config.is_encoder_decoder:  # T5 and BART heads pool the last </s>
        input_ids[:, -1] = model.config.eos_token_id
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": torch.tensor([0, 1, 2, 1]),
    }


def train_step(model: torch.nn.Module) -> tuple[torch.Tensor, set[str]]:
    """One AdamW step on a fixed batch: (the loss, names of the parameters that changed)."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model(**batch(model)).loss
    loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    return loss.detach(), changed


def is_linear(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"


# ---------------------------------------------------------------- the family entries


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_family_entry_matches_the_model(model_type, caplog):
    model = build(model_type)
    with caplog.at_level(logging.WARNING, logger="peftkit"):
        family = family_for(model.config.model_type, model)
    assert family is FAMILIES[model_type] and not [r for r in caplog.records if r.name.startswith("peftkit")]
    # the head is what transformers keeps beside the backbone: the rule an unknown architecture gets
    assert family.head_modules == guess_head_modules(model)
    targets = resolve_target_modules(model, family, "auto")
    adapted = [(n, m) for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in targets]
    assert set(targets) == {n.rsplit(".", 1)[-1] for n, _ in adapted}  # every resolved name exists
    assert all(is_linear(m) for _, m in adapted)
    assert {type(m).__name__ for _, m in adapted} == ({"Conv1D"} if model_type == "gpt2" else {"Linear"})
    for path in family.blocks:  # each block has adapter targets in it
        blocks = model.get_submodule(path)
        assert len(blocks) == LAYERS
        assert all(any(n.startswith(f"{path}.{i}.") for n, _ in adapted) for i in range(LAYERS))


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_lora_trains_only_adapter_and_head(model_type, recwarn, tmp_path):
    family = FAMILIES[model_type]
    model = apply_adapter(build(model_type), AdapterConfig(method="lora", r=2, lora_dropout=0.0), family)
    assert model.peft_config["default"].fan_in_fan_out == (model_type == "gpt2")
    assert not [w for w in recwarn if "fan_in_fan_out" in str(w.message)]  # said up front, no peft warning
    base = model.base_model.model
    for head in family.head_modules:
        wrapper = getattr(base, head)
        assert isinstance(wrapper, ModulesToSaveWrapper)
        assert all(p.requires_grad for p in wrapper.modules_to_save["default"].parameters())
    saved = [k.removeprefix("base_model.model.") for k in get_peft_model_state_dict(model)]
    for head in family.head_modules:
        assert any(k.startswith(f"{head}.") for k in saved), f"{head} not saved with the adapter"
    assert any("lora_A" in k for k in saved)

    loss, changed = train_step(model)
    assert torch.isfinite(loss) and abs(loss.item() - torch.log(torch.tensor(3.0)).item()) < 1.0
    head_changed = {n for n in changed if ".modules_to_save.default." in n}
    assert all(any(f".{h}.modules_to_save." in n for n in head_changed) for h in family.head_modules)
    assert any("lora_B" in n for n in changed)  # B starts at zero: the first step moves B, A gets no gradient
    assert changed <= {n for n in changed if "lora_" in n} | head_changed

    # saved -> loaded into a fresh base gives the same logits; merging (Conv1D too) changes nothing
    model.eval()
    inputs = {k: v for k, v in batch(model).items() if k != "labels"}
    with torch.no_grad():
        logits = model(**inputs).logits
        model.save_pretrained(tmp_path)
        loaded = PeftModel.from_pretrained(build(model_type), tmp_path).eval()
        torch.testing.assert_close(loaded(**inputs).logits, logits, rtol=0, atol=0)
        torch.testing.assert_close(model.merge_and_unload()(**inputs).logits, logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_qlora_keeps_the_head_out_of_quantization(model_type, tmp_path):
    family = FAMILIES[model_type]
    build(model_type).save_pretrained(tmp_path)
    loading = quantized_loading(ModelConfig(), "4bit", list(family.head_modules))
    model = prepare_quantized_model(AutoModelForSequenceClassification.from_pretrained(tmp_path, **loading))
    quantized = [n for n, m in model.named_modules() if type(m).__name__ == "Linear4bit"]
    assert quantized and not [n for n in quantized if n.split(".")[0] in family.head_modules]
    model = apply_adapter(model, AdapterConfig(method="qlora", r=2, lora_dropout=0.0), family)
    loss, changed = train_step(model)
    assert torch.isfinite(loss) and all("lora_" in n or ".modules_to_save." in n for n in changed)
    assert any(".modules_to_save." in n for n in changed) and any("lora_B" in n for n in changed)


def expected_group_names(model_type: str) -> list[str]:
    """`head`, the blocks top-down (`decoder.1` ... `encoder.0` or `layers.1` ...), `embeddings`."""
    stacks = [
        p.split(".")[-2] if p.split(".")[-2] in ("encoder", "decoder") else "layers"
        for p in FAMILIES[model_type].blocks
    ]
    blocks = [f"{stack}.{i}" for stack in reversed(stacks) for i in reversed(range(LAYERS))]
    return ["head", *blocks, "embeddings"]


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_layer_groups_are_the_blocks_the_table_names(model_type):
    family = FAMILIES[model_type]
    model = build(model_type)
    groups = layer_groups(model)
    assert [g.name for g in groups] == expected_group_names(model_type)
    assert len(groups) == LAYERS * len(family.blocks) + 2
    names = [n for g in groups for n, _ in g.params]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())  # each parameter exactly once
    by_name = {g.name: [n for n, _ in g.params] for g in groups}
    for path in family.blocks:  # a block's group holds its parameters (T5's encoder final norm joins it)
        stack = path.split(".")[-2] if path.split(".")[-2] in ("encoder", "decoder") else "layers"
        for i in range(LAYERS):
            inside = {n for n, _ in model.named_parameters() if n.startswith(f"{path}.{i}.")}
            assert inside and inside <= set(by_name[f"{stack}.{i}"])
    head = set(by_name["head"])
    assert all(any(n.startswith(f"{h}.") for n in head) for h in family.head_modules)
    embeddings = model.get_input_embeddings().weight
    assert any(p is embeddings for _, p in groups[-1].params)
    # what is left in the head group besides the head: a pooler or the final norm, never an embedding
    others = {n for n in head if not any(n.startswith(f"{h}.") for h in family.head_modules)}
    assert all(("pooler" in n or "norm" in n or "ln_f" in n) and "embed" not in n for n in others), others


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_layerwise_strategies_on_the_adapter(model_type):
    family = FAMILIES[model_type]
    model = apply_adapter(build(model_type), AdapterConfig(method="lora", r=2), family)
    expected = [n for n in expected_group_names(model_type) if n != "embeddings"]  # frozen
    groups = layer_groups(model, trainable_only=True)
    assert [g.name for g in groups] == expected
    assert all("lora_" in n for g in groups[1:] for n, _ in g.params)

    rates = {g["name"]: g["lr"] for g in layerwise_param_groups(model, 1.0, 0.5, 0.0)}
    assert rates == {name: 0.5**depth for depth, name in enumerate(expected)}

    unfreezer = GradualUnfreezer(model, every=1, adapter=True)
    unfreezer(0)  # the head and the top block's adapter
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for g in groups[:2] for n, _ in g.params}
    unfreezer(len(groups))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for g in groups for n, _ in g.params
    }


# The other adapter methods on every family: each trains, or is refused by `adapters.UNSUPPORTED` before the
# weights load, or (the gaps below) stops with a message that says to name the targets.
OTHER_METHODS = {
    "ia3": {"method": "ia3"},
    "bottleneck": {"method": "bottleneck", "reduction_factor": 4},
    "prefix": {"method": "prefix", "num_virtual_tokens": 4},
    "prompt": {"method": "prompt", "num_virtual_tokens": 4},
}
NO_DEFAULT_TARGETS = {
    ("ia3", "distilbert"): "ia3 has no default targets",  # peft has no IA3 defaults for these
    ("ia3", "phi3"): "ia3 has no default targets",
    ("bottleneck", "bart"): "no default target_modules",  # no feed-forward sub-block module to wrap
    ("bottleneck", "gpt2"): "no default target_modules",  # Conv1D layers
}


def _refused(method: str, model_type: str) -> bool:
    family = FAMILIES[model_type]
    return (method, family.kind) in UNSUPPORTED or (method, model_type) in UNSUPPORTED


@pytest.mark.parametrize("method", sorted(OTHER_METHODS))
@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_other_methods_train_or_are_refused(model_type, method):
    model, family, config = build(model_type), FAMILIES[model_type], AdapterConfig(**OTHER_METHODS[method])
    if _refused(method, model_type):
        with pytest.raises(ConfigError, match="does not work with"):
            apply_adapter(model, config, family)
        return
    if (method, model_type) in NO_DEFAULT_TARGETS:
        with pytest.raises((ConfigError, ValueError), match=NO_DEFAULT_TARGETS[method, model_type]):
            apply_adapter(model, config, family)
        return
    base = {id(p) for p in model.parameters()}
    model = apply_adapter(model, config, family)
    params = dict(model.named_parameters())
    loss, changed = train_step(model)
    assert torch.isfinite(loss)
    assert not [n for n in changed if id(params[n]) in base]  # no base weight moved
    assert any(".modules_to_save." in n for n in changed)  # the head trains
    assert any(".modules_to_save." not in n for n in changed)  # and so does the adapter


# ---------------------------------------------------------------- an architecture with no entry


@pytest.mark.parametrize("model_type", sorted(UNKNOWN))
def test_unknown_architecture_falls_back(model_type, caplog):
    model = build(model_type)
    with caplog.at_level(logging.WARNING, logger="peftkit"):
        family = family_for(model.config.model_type, model)
    assert "no peftkit family entry" in caplog.text and "all-linear" in caplog.text
    assert family.target_modules == ("all-linear",) and family.kind == "unknown"
    assert family.head_modules == UNKNOWN_HEADS[model_type]

    plain = layer_groups(model)
    if model_type != "albert":  # blocks found by name; the embedding table at the bottom, whatever its name
        assert [g.name for g in plain] == [
            "head",
            *(f"{plain[1].name[:-2]}.{i}" for i in (1, 0)),
            "embeddings",
        ]
        assert any(p is model.get_input_embeddings().weight for _, p in plain[-1].params)

    model = apply_adapter(model, AdapterConfig(method="lora", r=2, lora_dropout=0.0), family)
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if ".lora_A." in n}
    assert adapted and not any(f".{h}." in n for h in family.head_modules for n in adapted)
    assert all(
        isinstance(getattr(model.base_model.model, h), ModulesToSaveWrapper) for h in family.head_modules
    )
    loss, changed = train_step(model)
    assert torch.isfinite(loss)
    assert any(".modules_to_save." in n for n in changed) and any("lora_B" in n for n in changed)
    assert all("lora_" in n or ".modules_to_save." in n for n in changed)

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="peftkit"):
        groups = layer_groups(model, trainable_only=True)
    if model_type == "albert":  # one set of block weights reused at every depth: nothing to order
        assert [g.name for g in groups] == ["all"] and "one group" in caplog.text
    else:
        assert [g.name for g in groups][0] == "head" and len(groups) == LAYERS + 1
    rates = layerwise_param_groups(model, 1.0, 0.5, 0.0)
    assert sum(len(g["params"]) for g in rates) == sum(p.requires_grad for p in model.parameters())


def test_unknown_architecture_head_stays_out_of_quantization(tmp_path):
    """QLoRA quantizes the base as it loads: the guessed head (XLNet's, named like no other) must stay float."""
    build("xlnet").save_pretrained(tmp_path)
    loaded = load_model(
        ModelConfig(name_or_path=str(tmp_path)),
        ["a", "b", "c"],
        tiny.build_tokenizer("bert"),
        AdapterConfig(method="qlora"),
    )
    model = loaded.model
    assert loaded.family.head_modules == ("sequence_summary", "logits_proj")
    assert type(model.transformer.layer[0].ff.layer_1).__name__ == "Linear4bit"
    assert (
        type(model.logits_proj) is torch.nn.Linear and type(model.sequence_summary.summary) is torch.nn.Linear
    )
    model = apply_adapter(model, AdapterConfig(method="qlora", r=2, lora_dropout=0.0), loaded.family)
    loss, changed = train_step(model)
    assert torch.isfinite(loss) and any(".logits_proj.modules_to_save." in n for n in changed)


# ---------------------------------------------------------------- the family table in the docs


def test_family_table_doc_is_up_to_date():
    page = (ROOT / "docs" / "families.md").read_text()
    assert page == family_table_markdown(), "docs/families.md is stale: run python docs/make_family_table.py"
    for name in FAMILIES:
        assert f"| `{name}` |" in page
