"""Group 8, secrets: a Hub token set in the environment never appears in stdout, stderr, logs, saved
configs, checkpoints, exports or the model card. (Hub errors that echo the token are redacted:
tests/test_hub.py::test_hub_errors_are_redacted.)"""

from __future__ import annotations

import logging

import yaml
from conftest import tiny_run_config

from peftkit.cli import main

TOKEN = "hf_GUARDtokenThatMustNeverLeak0123456789"


def test_token_in_the_environment_never_reaches_output_logs_or_files(
    tiny_models, toy_files, tmp_path, monkeypatch, capsys, caplog, one_thread
):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", TOKEN)
    run = tmp_path / "run"
    config = tiny_run_config(tiny_models["bert"], toy_files, run, max_steps=4, save_every_steps=2)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(config))
    export = tmp_path / "export"
    with caplog.at_level(logging.DEBUG):
        assert main(["train", str(recipe)]) == 0
        assert main(["train", str(recipe), "--print-config"]) == 0
        assert main(["export", str(run), "--adapter", "--output", str(export)]) == 0
        assert main(["push", str(export), "--repo-id", "someone/tickets", "--dry-run"]) == 0
        assert main(["predict", str(run), "good film"]) == 0
        assert main(["eval", str(run), "--data", str(toy_files["test"])]) == 0
    captured = capsys.readouterr()
    assert '"output_dir"' in captured.out and "README.md" in caplog.text  # the commands did run and log
    assert TOKEN not in captured.out and TOKEN not in captured.err
    assert TOKEN not in caplog.text
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {"run.json", "metrics.jsonl", "README.md", "adapter_config.json", "trainer_state.json"} <= {
        p.name for p in files
    }
    leaked = [str(p) for p in files if TOKEN.encode() in p.read_bytes()]
    assert leaked == []
