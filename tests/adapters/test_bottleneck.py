"""Bottleneck adapters (Houlsby / Pfeiffer / parallel) as a peft method, on tiny BERT, T5 and LLaMA models."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for tiny.py
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repo root, for peftkit

import tiny  # noqa: E402
from peft import PeftModel, get_peft_model  # noqa: E402
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING  # noqa: E402
from peft.utils import PeftType  # noqa: E402
from transformers import AutoModelForSequenceClassification  # noqa: E402

import peftkit.adapters.bottleneck as bn  # noqa: E402
from peftkit.adapters.bottleneck import BottleneckConfig, BottleneckLayer  # noqa: E402

PLACEMENTS = ("houlsby", "pfeiffer", "parallel")
COMBOS = [(family, placement) for family in tiny.FAMILIES for placement in PLACEMENTS]
HEAD = {"bert": "classifier", "t5": "classification_head", "llama": "score"}

# Adapted modules, relative to each transformer block, per family, placement and stack.
EXPECTED = {
    "bert": {
        "houlsby": {"encoder": {"attention.output.dense", "output.dense"}},
        "pfeiffer": {"encoder": {"output.dense"}},
        "parallel": {"encoder": {"output"}},
    },
    "t5": {
        "houlsby": {
            "encoder": {"layer.0.SelfAttention.o", "layer.1.DenseReluDense.wo"},
            "decoder": {"layer.0.SelfAttention.o", "layer.1.EncDecAttention.o", "layer.2.DenseReluDense.wo"},
        },
        "pfeiffer": {"encoder": {"layer.1.DenseReluDense.wo"}, "decoder": {"layer.2.DenseReluDense.wo"}},
        "parallel": {"encoder": {"layer.1.DenseReluDense"}, "decoder": {"layer.2.DenseReluDense"}},
    },
    "llama": {
        "houlsby": {"decoder": {"self_attn.o_proj", "mlp.down_proj"}},
        "pfeiffer": {"decoder": {"mlp.down_proj"}},
        "parallel": {"decoder": {"mlp"}},
    },
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {family: tiny.save_tiny_model(family, root / family) for family in tiny.FAMILIES}


def tokenizer_for(family: str):
    tok = tiny.build_tokenizer(family)
    if family == "llama":
        tok.pad_token = tok.eos_token
    return tok


def load_base(family: str, path: Path) -> nn.Module:
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    if family == "llama":
        model.config.pad_token_id = tokenizer_for(family).eos_token_id
    return model


def make_batch(family: str, n: int = 8) -> dict[str, torch.Tensor]:
    rows = tiny.toy_sentiment(n)
    batch = tokenizer_for(family)([r["text"] for r in rows], padding=True, return_tensors="pt")
    batch["labels"] = torch.tensor([int(r["label"] == "positive") for r in rows])
    return dict(batch)


def adapted(family: str, path: Path, placement: str, **kwargs) -> PeftModel:
    config = BottleneckConfig(task_type="SEQ_CLS", placement=placement, reduction_factor=4, **kwargs)
    return get_peft_model(load_base(family, path), config)


@torch.no_grad()
def logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def train_steps(
    model: PeftModel, batch: dict[str, torch.Tensor], steps: int, lr: float = 1e-2
) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def blocks(model: PeftModel, family: str) -> dict[str, list[nn.Module]]:
    inner = model.get_base_model()
    if family == "bert":
        return {"encoder": list(inner.bert.encoder.layer)}
    if family == "t5":
        return {
            "encoder": list(inner.transformer.encoder.block),
            "decoder": list(inner.transformer.decoder.block),
        }
    return {"decoder": list(inner.model.layers)}


def is_adapter_param(name: str) -> bool:
    return ".bottleneck_down." in name or ".bottleneck_up." in name


def is_head_copy(name: str) -> bool:
    return ".modules_to_save." in name


@pytest.mark.parametrize("family,placement", COMBOS)
def test_adapters_inserted_in_every_block_and_logits_finite(model_dirs, family, placement):
    model = adapted(family, model_dirs[family], placement, init_weights=False)
    out = logits(model, make_batch(family))
    assert out.shape == (8, 2)
    assert torch.isfinite(out).all()

    for stack, layers in blocks(model, family).items():
        assert layers, stack
        for i, block in enumerate(layers):
            found = {name for name, module in block.named_modules() if isinstance(module, BottleneckLayer)}
            assert found == EXPECTED[family][placement][stack], f"{stack} block {i}"
    # the classifier head is trained and saved in full, never adapted
    head = getattr(model.get_base_model(), HEAD[family])
    assert type(head).__name__ == "ModulesToSaveWrapper"
    assert not any(isinstance(m, BottleneckLayer) for m in head.modules())


@pytest.mark.parametrize("family,placement", COMBOS)
def test_identity_at_init(model_dirs, family, placement):
    batch = make_batch(family)
    expected = logits(load_base(family, model_dirs[family]), batch)
    model = adapted(family, model_dirs[family], placement)
    torch.testing.assert_close(logits(model, batch), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family,placement", COMBOS)
def test_one_step_changes_only_adapters_and_head(model_dirs, family, placement):
    model = adapted(family, model_dirs[family], placement)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(is_adapter_param(n) or is_head_copy(n) for n in trainable)
    assert any(is_head_copy(n) for n in trainable) and any(is_adapter_param(n) for n in trainable)

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_steps(model, make_batch(family), steps=1)
    after = dict(model.named_parameters())

    for name, old in before.items():
        if name in trainable:
            continue
        assert torch.equal(after[name], old), f"base weight {name} changed"
    # zero-initialised up projections get a gradient at the first step; the head copy learns too
    for name in trainable:
        if ".bottleneck_up." in name or is_head_copy(name):
            assert not torch.equal(after[name], before[name]), f"{name} did not change"


@pytest.mark.parametrize("family,placement", COMBOS)
def test_save_and_load_round_trip(model_dirs, family, placement, tmp_path):
    batch = make_batch(family)
    model = adapted(family, model_dirs[family], placement, init_weights=False)
    train_steps(model, batch, steps=1)  # the head copy now differs from the base head
    expected = logits(model, batch)
    model.save_pretrained(tmp_path / "adapter")

    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= files
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "BOTTLENECK" and saved["placement"] == placement
    assert HEAD[family] in saved["modules_to_save"]

    loaded = PeftModel.from_pretrained(load_base(family, model_dirs[family]), tmp_path / "adapter")
    assert isinstance(loaded.peft_config["default"], BottleneckConfig)
    original = {n: p for n, p in model.named_parameters() if is_adapter_param(n) or is_head_copy(n)}
    restored = {n: p for n, p in loaded.named_parameters() if is_adapter_param(n) or is_head_copy(n)}
    assert original.keys() == restored.keys()
    for name, tensor in original.items():
        assert torch.equal(restored[name], tensor), name
    torch.testing.assert_close(logits(loaded, batch), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family,placement", COMBOS)
def test_disable_adapter_gives_base_logits(model_dirs, family, placement):
    batch = make_batch(family)
    base_logits = logits(load_base(family, model_dirs[family]), batch)
    model = adapted(family, model_dirs[family], placement)
    train_steps(model, batch, steps=3)
    adapted_logits = logits(model, batch)
    assert not torch.allclose(adapted_logits, base_logits, atol=1e-4), "training changed nothing"

    with model.disable_adapter():
        torch.testing.assert_close(logits(model, batch), base_logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(logits(model, batch), adapted_logits, rtol=0, atol=0)


# One placement per family. The tiny random BERT (initializer_range 0.02, hidden 32) has an almost constant
# [CLS] state (std ~3e-3 across inputs) behind a frozen random pooler, so FFN-only adapters (pfeiffer,
# parallel) barely move its loss in 150 steps; Houlsby's attention-side adapter can amplify what attention
# gathers into [CLS] and learns, but needs more steps than the T5 and LLaMA models.
@pytest.mark.parametrize(
    "family,placement,steps,lr",
    [("bert", "houlsby", 150, 2e-2), ("t5", "pfeiffer", 30, 1e-2), ("llama", "parallel", 30, 1e-2)],
)
def test_training_lowers_loss(model_dirs, family, placement, steps, lr):
    torch.manual_seed(0)
    batch = make_batch(family, 64)
    model = adapted(family, model_dirs[family], placement)

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            return model(**batch).loss.item()

    initial = eval_loss()
    train_steps(model, batch, steps=steps, lr=lr)
    final = eval_loss()
    assert final < 0.7 * initial, (initial, final)


@pytest.mark.parametrize("family,placement", COMBOS)
def test_merge_is_refused_but_unload_works(model_dirs, family, placement):
    batch = make_batch(family)
    model = adapted(family, model_dirs[family], placement, init_weights=False)
    with pytest.raises(NotImplementedError) as err:
        model.merge_and_unload()
    assert "non-linear modules" in str(err.value) and "cannot be merged" in str(err.value)
    assert "standalone adapter" in str(err.value)
    with pytest.raises(NotImplementedError, match="cannot be merged"):
        model.merge_adapter()
    # refusing must leave the adapters in place
    assert any(isinstance(m, BottleneckLayer) for m in model.modules())

    base = model.unload()
    assert not any(isinstance(m, BottleneckLayer) for m in base.modules())
    expected = logits(load_base(family, model_dirs[family]), batch)
    # the head was restored to the original module by unload(), the blocks are the base blocks again
    torch.testing.assert_close(logits(base, batch), expected, rtol=0, atol=1e-6)


class _Mystery(nn.Module):
    def __init__(self):
        super().__init__()
        self.config = {"model_type": "mystery"}
        self.fc_in = nn.Linear(8, 16)
        self.fc_out = nn.Linear(16, 8)

    def forward(self, x):
        return self.fc_out(torch.relu(self.fc_in(x)))


def test_unknown_model_type_names_candidates():
    with pytest.raises(ValueError, match="mystery") as err:
        get_peft_model(_Mystery(), BottleneckConfig())
    assert "fc_in" in str(err.value) and "fc_out" in str(err.value)

    # naming the targets explicitly works on any model
    model = get_peft_model(_Mystery(), BottleneckConfig(target_modules=["fc_out"], reduction_factor=2))
    assert isinstance(model.get_base_model().fc_out, BottleneckLayer)
    x = torch.randn(3, 8)
    with model.disable_adapter():
        base_out = model(x)
    torch.testing.assert_close(model(x), base_out)


def test_parallel_rejects_a_linear_that_does_not_see_the_block_input(model_dirs):
    with pytest.raises(ValueError, match="target its parent FFN module"):
        get_peft_model(
            load_base("llama", model_dirs["llama"]),
            BottleneckConfig(task_type="SEQ_CLS", placement="parallel", target_modules=["down_proj"]),
        )


def test_sequential_and_parallel_adapters_do_not_mix(model_dirs):
    model = adapted("llama", model_dirs["llama"], "parallel")
    with pytest.raises(ValueError, match="cannot be mixed"):
        model.add_adapter("seq", BottleneckConfig(task_type="SEQ_CLS", placement="pfeiffer"))
    assert "seq" not in model.peft_config
    model.add_adapter("par2", BottleneckConfig(task_type="SEQ_CLS", placement="parallel"))
    assert set(model.get_base_model().model.layers[0].mlp.bottleneck_down) == {"default", "par2"}


def test_config_validation():
    with pytest.raises(ValueError, match="placement"):
        BottleneckConfig(placement="sideways")
    with pytest.raises(ValueError, match="non_linearity"):
        BottleneckConfig(non_linearity="softmax")
    with pytest.raises(ValueError, match="reduction_factor"):
        BottleneckConfig(reduction_factor=0)
    assert BottleneckConfig().peft_type == PeftType.BOTTLENECK == "BOTTLENECK"


def test_registration_survives_a_second_import():
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.BOTTLENECK] is BottleneckConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.BOTTLENECK] is bn.BottleneckModel
    bn._register()  # registering again is a no-op
    name = "_bottleneck_second_copy"
    spec = importlib.util.spec_from_file_location(name, bn.__file__)
    copy = importlib.util.module_from_spec(spec)
    sys.modules[name] = copy  # as the import system does (dataclasses looks the module up)
    try:
        spec.loader.exec_module(copy)  # the same file imported again under another name must not crash
        assert copy.BOTTLENECK is PeftType.BOTTLENECK
        assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.BOTTLENECK] is copy.BottleneckConfig
    finally:
        del sys.modules[name]
        bn._register()  # put this module's classes back for the other tests
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.BOTTLENECK] is BottleneckConfig
