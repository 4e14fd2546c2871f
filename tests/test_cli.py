import json
import subprocess
import sys

import pytest
import yaml
from conftest import tiny_run_config

from peftkit.cli import main


@pytest.fixture(scope="module")
def run_dir(tiny_models, toy_files, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_run_config(tiny_models["bert"], toy_files, root / "run")))
    assert main(["train", str(recipe), "--set", "training.log_every_steps=3"]) == 0
    return root / "run"


def test_train_writes_run(run_dir, capsys):
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((run_dir / "run.json").read_text())["config"]["training"]["log_every_steps"] == 3


def test_predict_prints_jsonl(run_dir, capsys):
    assert (
        main(["predict", str(run_dir), "the film was great and wonderful", "the film was awful and boring"])
        == 0
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["label"] for r in lines] == ["positive", "negative"]
    assert set(lines[0]["probabilities"]) == {"negative", "positive"}


def test_predict_from_file_to_output(run_dir, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("great film\n\nbad film\n")
    out = tmp_path / "out.jsonl"
    assert main(["predict", str(run_dir), "--file", str(texts), "--output", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 2


def test_eval_reports_accuracy(run_dir, toy_files, capsys):
    assert main(["eval", str(run_dir), "--data", str(toy_files["test"])]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["samples"] == 80 and result["accuracy"] >= 0.8


def test_bad_recipe_is_a_clear_error(tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("adapter:\n  method: lorra\ndata:\n  train_file: x.csv\n")
    assert main(["train", str(recipe)]) == 2
    assert "adapter.method: 'lorra' is not one of" in capsys.readouterr().err


def test_predict_on_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["predict", str(tmp_path), "hello"]) == 2
    assert "not a trained adapter or run folder" in capsys.readouterr().err


def test_print_config(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  train_file: x.csv\n")
    assert main(["train", str(recipe), "--print-config", "--set", "adapter.r=4"]) == 0
    assert json.loads(capsys.readouterr().out)["adapter"]["r"] == 4


@pytest.mark.parametrize("command", [[], ["train"], ["eval"], ["predict"]])
def test_help(command):
    out = subprocess.run(
        [sys.executable, "-m", "peftkit", *command, "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "usage: peftkit" in out.stdout
