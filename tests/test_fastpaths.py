import json

import pytest
import torch
from conftest import tiny_run_config

from peftkit.api import finetune
from peftkit.config import ConfigError, ModelConfig, TrainingConfig, config_from_dict, validate
from peftkit.fastpaths import compile_model
from peftkit.model import load_model, load_tokenizer
from peftkit.train import build_optimizer

BASE = {"data": {"train_file": "x.csv"}}
on_cpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")


@on_cpu
def test_paged_optimizer_is_refused_on_cpu_with_the_alternative():
    with pytest.raises(ConfigError, match=r"paged_adamw_8bit .*needs a CUDA GPU.*adamw_8bit on a CPU"):
        validate(config_from_dict({**BASE, "training": {"optimizer": "paged_adamw_8bit"}}))


@on_cpu
def test_flash_attention_is_refused_on_cpu():
    with pytest.raises(ConfigError, match=r"flash_attention_2 needs a CUDA GPU"):
        validate(config_from_dict({**BASE, "model": {"attn_implementation": "flash_attention_2"}}))


def test_unknown_optimizer_lists_choices():
    with pytest.raises(ConfigError, match=r"training.optimizer: 'sgd' is not one of 'adamw', 'adamw_8bit'"):
        config_from_dict({**BASE, "training": {"optimizer": "sgd"}})


def _one_step_update(optimizer_name: str) -> tuple[torch.Tensor, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Linear(128, 64)  # 8,192 weights: bitsandbytes keeps 8-bit states from 4,096 up
    before = model.weight.detach().clone()
    optimizer = build_optimizer(model, TrainingConfig(optimizer=optimizer_name, learning_rate=1e-3))
    model(torch.randn(16, 128)).pow(2).mean().backward()
    optimizer.step()
    return model.weight.detach() - before, optimizer


def test_adamw_8bit_keeps_8bit_states_and_matches_adamw():
    pytest.importorskip("bitsandbytes")
    update_8bit, optimizer = _one_step_update("adamw_8bit")
    update_32bit, reference = _one_step_update("adamw")
    assert type(optimizer).__name__ == "AdamW8bit" and type(reference) is torch.optim.AdamW
    state = optimizer.state[optimizer.param_groups[0]["params"][0]]
    assert state["state1"].dtype == torch.uint8 and state["state2"].dtype == torch.uint8
    # Adam's first step moves each weight by ~lr; 8-bit states change it by a few percent at most
    assert update_32bit.abs().max() == pytest.approx(1e-3, rel=0.05)
    assert (update_8bit - update_32bit).abs().max() < 1e-4


def test_finetune_with_adamw_8bit_learns_and_checkpoints(tiny_models, toy_files, tmp_path, one_thread):
    pytest.importorskip("bitsandbytes")
    config = tiny_run_config(tiny_models["bert"], toy_files, tmp_path, optimizer="adamw_8bit", num_epochs=3)
    config["training"]["save_every_steps"] = 20
    result = finetune(config)
    losses = result.metrics["train"]["losses"]
    assert losses[-1] < losses[0]
    assert result.metrics["validation"]["accuracy"] > 0.6
    saved = json.loads((tmp_path / "run.json").read_text())["config"]["training"]
    assert saved["optimizer"] == "adamw_8bit"
    assert any((tmp_path / "checkpoints").glob("step-*/optimizer.safetensors"))


@pytest.mark.parametrize("setting, expected", [("auto", "sdpa"), ("eager", "eager"), ("sdpa", "sdpa")])
def test_attn_implementation_reaches_the_model(tiny_models, setting, expected):
    config = ModelConfig(name_or_path=str(tiny_models["llama"]), attn_implementation=setting)
    loaded = load_model(config, ["a", "b"], load_tokenizer(config))
    assert loaded.model.config._attn_implementation == expected


def test_compile_is_in_place_and_keeps_parameter_names(tiny_models):
    config = ModelConfig(name_or_path=str(tiny_models["bert"]))
    model = load_model(config, ["a", "b"], load_tokenizer(config)).model
    names = list(model.state_dict())
    assert compile_model(model) is model
    assert model._compiled_call_impl is not None  # compiled lazily, at the first forward
    assert list(model.state_dict()) == names


@pytest.mark.slow
def test_compiled_training_matches_eager(tiny_models, toy_files, tmp_path, one_thread):
    runs = {}
    for compile_ in (False, True):
        config = tiny_run_config(tiny_models["bert"], toy_files, tmp_path / str(compile_), compile=compile_)
        config["training"].update(num_epochs=1, group_by_length=False)
        runs[compile_] = finetune(config).metrics
    assert runs[True]["train"]["losses"] == pytest.approx(runs[False]["train"]["losses"], rel=1e-3)
    assert runs[True]["validation"]["accuracy"] == pytest.approx(runs[False]["validation"]["accuracy"])
