"""Group 1, recipe errors: one error naming the key, the value and the choices, before anything loads."""

from __future__ import annotations

import pytest
import yaml

from peftkit.api import finetune
from peftkit.cli import main
from peftkit.config import ConfigError


def write_recipe(tmp_path, **sections) -> tuple[str, object]:
    out = tmp_path / "out"
    values = {"data": {"train_file": str(tmp_path / "train.csv")}, "training": {"output_dir": str(out)}}
    for section, fields in sections.items():
        if isinstance(fields, dict):
            values.setdefault(section, {}).update(fields)
        else:
            values[section] = fields
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(values))
    return str(recipe), out


CASES = {
    "unknown key": (
        {"training": {"learnin_rate": 1e-3}},
        ["unknown key 'training.learnin_rate'", "training accepts:", "learning_rate"],
    ),
    "unknown section": ({"trainer": {"epochs": 1}}, ["unknown key 'trainer'", "recipe accepts:", "training"]),
    "wrong type": ({"training": {"batch_size": "big"}}, ["training.batch_size: 'big' is not a int"]),
    "wrong type in a list": (
        {"adapter": {"target_modules": ["query", 3]}},
        ["adapter.target_modules", "3"],
    ),
    "unknown choice": (
        {"training": {"lr_scheduler": "step"}},
        ["training.lr_scheduler: 'step' is not one of 'linear', 'cosine', 'constant'"],
    ),
    "unknown method": (
        {"adapter": {"method": "lorax"}},
        ["adapter.method: 'lorax' is not one of", "bottleneck", "ia3", "lora", "prefix", "prompt"],
    ),
    "unknown task": ({"task": "generation"}, ["task: 'generation' is not one of 'classification'"]),
    "unknown bundled model": (
        {"model": {"name_or_path": "bundled:bert-huge"}},
        ["model.name_or_path: unknown bundled model 'bert-huge'", "choices: all-MiniLM-L6-v2"],
    ),
    "contradictory: prefix + gradient checkpointing": (
        {"adapter": {"method": "prefix"}, "training": {"gradient_checkpointing": True}},
        [
            "adapter.method: prefix cannot train with training.gradient_checkpointing",
            "gradient_checkpointing=false",
        ],
    ),
    "contradictory: quantized base + ia3": (
        {"adapter": {"method": "ia3"}, "model": {"quantization": "4bit"}},
        ["model.quantization: '4bit' is for LoRA methods", "'ia3'", "model.quantization=none"],
    ),
    "contradictory: LoRA option on another method": (
        {"adapter": {"method": "bottleneck", "use_dora": True}},
        ["adapter.use_dora applies to LoRA methods", "not 'bottleneck'"],
    ),
    "contradictory: two data sources": (
        {"data": {"dataset": "glue"}},
        ["data: set only one of data.train_file and data.dataset"],
    ),
    "out of range": ({"training": {"max_bad_steps": -1}}, ["training.max_bad_steps: -1 must be >= 0"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_recipe_is_one_clear_error_and_nothing_is_written(case, tmp_path, capsys, no_model_loading):
    sections, expected = CASES[case]
    recipe, out = write_recipe(tmp_path, **sections)
    assert main(["train", recipe]) == 2
    err = capsys.readouterr().err
    assert err.startswith("peftkit: error: ") and err.count("\n") == 1  # one line, no traceback
    for text in expected:
        assert text in err, f"{text!r} not in {err!r}"
    assert not out.exists()


def test_bad_override_names_the_key_before_anything_loads(tmp_path, capsys, no_model_loading):
    recipe, out = write_recipe(tmp_path)
    assert main(["train", recipe, "--set", "adapter.r=0"]) == 2
    assert "adapter.r: 0 must be > 0" in capsys.readouterr().err
    assert not out.exists()


def test_python_api_unknown_field_is_refused_before_anything_loads(tmp_path, no_model_loading):
    with pytest.raises(ConfigError, match=r"unknown or ambiguous field 'learnin_rate': no section has it"):
        finetune(train_file="x.csv", output_dir=str(tmp_path / "out"), learnin_rate=1e-3)
    assert not (tmp_path / "out").exists()
