"""Loading quantized bases: 4-bit (NF4/FP4) and 8-bit linear layers, the head kept in float32 and trainable."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import tiny
import torch
from safetensors.torch import load_file

from peftkit.adapters import apply_adapter
from peftkit.config import AdapterConfig, ModelConfig
from peftkit.model import DTYPES, load_model, load_tokenizer

LABELS = ["negative", "positive"]
HEADS = {"bert": "classifier", "t5": "classification_head", "llama": "score"}
LAYERS = {"4bit": "Linear4bit", "8bit": "Linear8bitLt"}


pytestmark = pytest.mark.usefixtures("one_thread")


def load(tiny_models, family: str, adapter: AdapterConfig | None = None, **model_fields):
    config = ModelConfig(name_or_path=str(tiny_models[family]), **model_fields)
    tokenizer = load_tokenizer(config)
    return load_model(config, LABELS, tokenizer, adapter), tokenizer


def batch(tokenizer, model: torch.nn.Module, n: int = 16) -> dict[str, torch.Tensor]:
    """A toy batch where `model` is (bitsandbytes puts a quantized base on the GPU when there is one)."""
    rows = tiny.toy_sentiment(n)
    encoded = dict(tokenizer([r["text"] for r in rows], padding=True, return_tensors="pt"))
    encoded["labels"] = torch.tensor([LABELS.index(r["label"]) for r in rows])
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in encoded.items()}


def linear_types(model: torch.nn.Module, inside: str | None = None) -> set[str]:
    return {
        type(m).__name__
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and (inside is None or inside in name.split("."))
    }


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_quantized_base_keeps_the_head_in_float32(tiny_models, family, quantization):
    loaded, tokenizer = load(tiny_models, family, quantization=quantization)
    model, head = loaded.model, HEADS[family]
    head_params = {n for n, _ in model.named_parameters() if head in n.split(".")}
    assert linear_types(model, inside=head) == {"Linear"}
    assert LAYERS[quantization] in linear_types(model)
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if n in head_params)
    # prepare_model_for_kbit_training: every base weight frozen, unquantized ones in float32
    assert not any(p.requires_grad for p in model.parameters())
    assert {p.dtype for p in model.parameters()} <= {torch.float32, torch.uint8, torch.int8}
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch(tokenizer, model).items() if k != "labels"}).logits
    assert torch.isfinite(logits).all()

    peft_model = apply_adapter(model, AdapterConfig(method="lora"), loaded.family)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any(f"{head}.modules_to_save." in n for n in trainable), "the head copy trains"


@pytest.mark.parametrize(
    "quant_type,double_quant,compute_dtype", [("nf4", True, "bfloat16"), ("fp4", False, "float32")]
)
def test_4bit_settings_reach_bitsandbytes(tiny_models, quant_type, double_quant, compute_dtype):
    loaded, _ = load(
        tiny_models,
        "llama",
        quantization="4bit",
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
    )
    layer = loaded.model.model.layers[0].self_attn.q_proj
    assert type(layer).__name__ == "Linear4bit"
    assert layer.weight.quant_state.quant_type == quant_type
    assert layer.weight.quant_state.nested == double_quant
    assert layer.compute_dtype == DTYPES[compute_dtype]


def test_qlora_implies_4bit_and_8bit_is_a_choice(tiny_models):
    qlora = AdapterConfig(method="qlora")
    assert LAYERS["4bit"] in linear_types(load(tiny_models, "llama", qlora)[0].model)
    assert LAYERS["8bit"] in linear_types(load(tiny_models, "llama", qlora, quantization="8bit")[0].model)
    assert linear_types(load(tiny_models, "llama", AdapterConfig())[0].model) == {"Linear"}


def _mapped_files() -> set[str]:
    return {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines() if "/" in line}


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux /proc/self/maps")
@pytest.mark.parametrize("quantization", ["none", "4bit", "8bit"])
def test_a_quantized_base_does_not_keep_the_checkpoint_mapped(tiny_models, quantization):
    # Quantizing reads every page of the float32 checkpoint; while an unconverted weight (embedding, norm)
    # stays a view into the memory-mapped file, those pages count in the process's RSS (440 MB on SmolLM2).
    checkpoint = str((tiny_models["llama"] / "model.safetensors").resolve())
    loaded, _ = load(tiny_models, "llama", quantization=quantization)
    gc.collect()
    # the control: an unquantized base keeps its weights as the file's pages (that is the cheap way)
    assert (checkpoint in _mapped_files()) == (quantization == "none")
    saved = load_file(checkpoint)  # the copies out of the map are the checkpoint's values
    embedding = next(v for k, v in saved.items() if k.endswith("embed_tokens.weight"))
    assert torch.equal(loaded.model.get_input_embeddings().weight.cpu(), embedding)


def _grads_after_step(tiny_models, evaluate_first: bool) -> dict[str, torch.Tensor]:
    loaded, tokenizer = load(tiny_models, "bert", AdapterConfig(method="qlora", lora_dropout=0.0))
    torch.manual_seed(0)
    model = apply_adapter(loaded.model, AdapterConfig(method="qlora", lora_dropout=0.0), loaded.family)
    inputs = batch(tokenizer, model)
    if evaluate_first:
        model.eval()
        with torch.no_grad():
            model(**inputs)
    model.train()
    model(**inputs).loss.backward()
    return {n: p.grad.cpu() for n, p in model.named_parameters() if p.requires_grad}


def test_4bit_training_after_an_evaluation_is_unchanged(tiny_models):
    # bitsandbytes 0.50.2 repacks 4-bit weights for inference on AVX512-BF16 CPUs at the first no-grad eval
    # forward, after which training breaks (see model._keep_4bit_training_layout); BERT's biased layers crash.
    loaded, _ = load(tiny_models, "bert", quantization="4bit")
    layers = [m for m in loaded.model.modules() if type(m).__name__ == "Linear4bit"]
    assert layers and not any(m.support_avx512bf16_for_cpu for m in layers)
    fresh, evaluated = _grads_after_step(tiny_models, False), _grads_after_step(tiny_models, True)
    assert fresh.keys() == evaluated.keys()
    for name, grad in fresh.items():
        torch.testing.assert_close(evaluated[name], grad, rtol=0, atol=0, msg=name)


def test_lora_on_an_8bit_base_learns(tiny_models):
    adapter = AdapterConfig(method="lora", lora_dropout=0.0)
    loaded, tokenizer = load(tiny_models, "llama", adapter, quantization="8bit")
    torch.manual_seed(0)
    model = apply_adapter(loaded.model, adapter, loaded.family)
    inputs = batch(tokenizer, model, 64)

    def loss() -> float:
        model.eval()
        with torch.no_grad():
            return model(**inputs).loss.item()

    initial = loss()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for _ in range(20):
        model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss() < 0.9 * initial
