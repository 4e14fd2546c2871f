"""Group 4, numerics: a NaN/inf loss or gradient skips the step and, after `training.max_bad_steps` in a
row, stops training with a message while the last good checkpoint stays intact; trainable parameters stay
float32 on a 16-bit base."""

from __future__ import annotations

import json
import logging
import math

import torch
import yaml
from conftest import tiny_run_config
from safetensors.torch import load_file

import peftkit.api
from peftkit.api import finetune
from peftkit.checkpoint import committed
from peftkit.cli import main
from peftkit.numerics import upcast_trainable

from .conftest import snapshot


def poison_training_steps(monkeypatch, bad_calls, on_first_bad=None):
    """Make the loss NaN on the given training forward calls (1-based; one call per optimizer step here)."""
    apply_adapter = peftkit.api.apply_adapter
    calls = {"n": 0}

    def apply_and_poison(*args, **kwargs):
        model = apply_adapter(*args, **kwargs)

        def hook(module, inputs, output):
            if not module.training:
                return output
            calls["n"] += 1
            if calls["n"] in bad_calls:
                if on_first_bad is not None and calls["n"] == min(bad_calls):
                    on_first_bad()
                output.loss = output.loss * float("nan")
            return output

        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(peftkit.api, "apply_adapter", apply_and_poison)
    return calls


def test_nan_loss_stops_after_max_bad_steps_and_keeps_the_last_good_checkpoint(
    tiny_models, toy_files, tmp_path, monkeypatch, capsys, one_thread
):
    out = tmp_path / "run"
    seen = {}
    poison_training_steps(
        monkeypatch, bad_calls=range(5, 100), on_first_bad=lambda: seen.update(snapshot(out / "checkpoints"))
    )
    config = tiny_run_config(
        tiny_models["bert"], toy_files, out, max_steps=10, save_every_steps=2, max_bad_steps=2
    )
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(config))
    assert main(["train", str(recipe)]) == 3
    message = capsys.readouterr().err.splitlines()[-1]  # after the progress output
    assert message.startswith("peftkit: error: training stopped: the loss or gradient norm was NaN/inf")
    assert "NaN/inf for 2 optimizer steps in a row after step 4 (training.max_bad_steps=2)" in message
    assert "no bad update was applied" in message
    assert f"last good checkpoint is '{out / 'checkpoints' / 'step-4'}'" in message
    assert [p.name for p in committed(out / "checkpoints")] == ["step-2", "step-4"]
    assert snapshot(out / "checkpoints") == seen  # written before the bad steps, untouched since
    weights = load_file(out / "checkpoints" / "step-4" / "trainable.safetensors")
    assert weights and all(torch.isfinite(t).all() for t in weights.values())
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in log if "loss" in r)
    assert not (out / "adapter").exists() and not (out / "run.json").exists()


def test_an_isolated_bad_step_is_skipped_and_training_goes_on(
    tiny_models, toy_files, tmp_path, monkeypatch, caplog, one_thread
):
    poison_training_steps(monkeypatch, bad_calls={3})
    config = tiny_run_config(tiny_models["bert"], toy_files, tmp_path / "run", max_steps=6, max_bad_steps=2)
    with caplog.at_level(logging.WARNING, logger="peftkit.numerics"):
        result = finetune(config)
    assert "non-finite loss or gradient norm after optimizer step 2: step skipped (1 of 2" in caplog.text
    assert result.metrics["train"]["steps"] == 6
    assert all(math.isfinite(loss) for loss in result.metrics["train"]["losses"])
    trainable = [p for p in result.model.parameters() if p.requires_grad]
    assert all(torch.isfinite(p).all() for p in trainable)


def test_without_the_guard_one_nan_step_ruins_the_weights(
    tiny_models, toy_files, tmp_path, monkeypatch, one_thread
):
    """What the guard prevents: with max_bad_steps=0 (off) the same single NaN step poisons every weight."""
    poison_training_steps(monkeypatch, bad_calls={3})
    config = tiny_run_config(tiny_models["bert"], toy_files, tmp_path / "run", max_steps=6, max_bad_steps=0)
    result = finetune(config)
    trainable = [p for p in result.model.parameters() if p.requires_grad]
    assert any(not torch.isfinite(p).all() for p in trainable)


def test_fp16_base_trains_float32_adapter_and_head(tiny_models, toy_files, tmp_path, one_thread):
    config = tiny_run_config(tiny_models["bert"], toy_files, tmp_path / "run", max_steps=3)
    config["model"]["dtype"] = "float16"
    result = finetune(config)
    trainable = {n: p.dtype for n, p in result.model.named_parameters() if p.requires_grad}
    assert any("modules_to_save" in n for n in trainable) and any("lora_" in n for n in trainable)
    assert set(trainable.values()) == {torch.float32}
    frozen = {p.dtype for p in result.model.parameters() if not p.requires_grad}
    assert frozen == {torch.float16}  # the base stays in 16 bit
    assert all(math.isfinite(loss) for loss in result.metrics["train"]["losses"])


def test_upcast_trainable_casts_16_bit_trainable_parameters_and_their_inputs():
    layer = torch.nn.Linear(4, 2).half()
    frozen = torch.nn.Linear(4, 4).half().requires_grad_(False)
    model = torch.nn.Sequential(frozen, layer)
    assert upcast_trainable(model) == ["1"]
    assert layer.weight.dtype == torch.float32 and frozen.weight.dtype == torch.float16
    out = model(torch.ones(3, 4, dtype=torch.float16))  # fp16 activations into the fp32 layer
    assert out.dtype == torch.float32
