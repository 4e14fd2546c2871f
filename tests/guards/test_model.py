"""Group 3, model errors: unmatched target modules, a head that disagrees with the labels, a different base,
QLoRA without bitsandbytes, merging what cannot merge. Each names the problem and writes nothing.

Also covered elsewhere (not repeated here): a different base model
(tests/test_export.py::test_base_model_check), merge of a non-mergeable method, refused before any work
with nothing written (tests/test_export.py::test_non_mergeable_method_is_refused_before_any_work).
"""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from conftest import tiny_run_config

from peftkit.api import finetune
from peftkit.cli import main
from peftkit.config import ConfigError
from peftkit.predict import AdapterFolderError, load_classifier

from .conftest import snapshot


def test_target_modules_matching_nothing_name_them_and_suggest_real_ones(tiny_models, toy_files, tmp_path):
    config = tiny_run_config(tiny_models["bert"], toy_files, tmp_path / "out")
    config["adapter"]["target_modules"] = ["qeury", "values"]
    with pytest.raises(ConfigError) as err:
        finetune(config)
    message = str(err.value)
    assert "['qeury', 'values'] match no linear layer of this bert model" in message
    assert "'qeury': did you mean 'query'" in message and "'values': did you mean 'value'?" in message
    assert "Linear layers it has: ['dense', 'key', 'query', 'value']" in message
    assert not (tmp_path / "out").exists()


def test_target_modules_matching_part_of_the_list_name_the_unmatched(tiny_models, toy_files, tmp_path):
    config = tiny_run_config(tiny_models["llama"], toy_files, tmp_path / "out")
    config["adapter"]["target_modules"] = ["q_proj", "v_proj", "value"]
    with pytest.raises(ConfigError) as err:
        finetune(config)
    message = str(err.value)
    assert "['value'] match no linear layer of this llama model (matched: ['q_proj', 'v_proj'])" in message
    assert "Linear layers it has: ['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj'" in message
    assert not (tmp_path / "out").exists()


def test_saved_head_that_disagrees_with_num_labels_is_refused(guard_run, tmp_path, monkeypatch):
    adapter = shutil.copytree(guard_run / "adapter", tmp_path / "adapter")
    meta = json.loads((adapter / "peftkit.json").read_text())
    meta["labels"] = ["negative", "neutral", "positive"]  # the head was trained for 2
    (adapter / "peftkit.json").write_text(json.dumps(meta))
    before = snapshot(adapter)
    import transformers

    monkeypatch.setattr(
        transformers.AutoModelForSequenceClassification,
        "from_pretrained",
        lambda *a, **k: pytest.fail("loaded the base before checking the head"),
    )
    with pytest.raises(AdapterFolderError) as err:
        load_classifier(adapter)
    assert "the saved classifier head has 2 outputs but peftkit.json lists 3 labels" in str(err.value)
    assert snapshot(adapter) == before


def test_qlora_without_usable_bitsandbytes_fails_before_loading(
    tiny_models, toy_files, tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` now raises ImportError
    config = tiny_run_config(tiny_models["llama"], toy_files, tmp_path / "out")
    config["adapter"]["method"] = "qlora"
    recipe = tmp_path / "qlora.yaml"
    recipe.write_text(json.dumps(config))  # JSON is YAML
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "4bit quantization (model.quantization / adapter.method: qlora) needs bitsandbytes" in err
    assert "pip install 'peftkit[qlora]'" in err
    assert not (tmp_path / "out").exists()
